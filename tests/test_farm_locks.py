"""Per-board locks (harness/farm/locks.py): real file locks, held by real processes.

A holder is a separate Python process that takes a board's lock and sleeps; the test then waits for
the board (bounded, abandonable), kills the holder with SIGKILL and takes the board it left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import InfraError
from harness.farm.locks import LOCK_DIR_ENV, BoardBusy, BoardLock, Stopped, default_lock_dir, holder_text

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from harness.farm.locks import BoardLock
    lock = BoardLock(Path(sys.argv[1]), sys.argv[2], command="nightly holder", run="run-42")
    lock.acquire(wait_s=30)
    print("held", flush=True)
    time.sleep(600)
    """
)


@contextlib.contextmanager
def holding(lock_dir: Path, board: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `board`'s lock in `lock_dir` until the block ends (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_dir), board], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding board `b-1`'s lock in tmp_path/locks."""
    with holding(tmp_path / "locks", "b-1") as proc:
        yield proc


def test_holder_information_and_release(tmp_path: Path) -> None:
    lock = BoardLock(tmp_path, "0670FF38:x", command="harness run nightly.yaml", run="20261121-0200-ab12")
    assert lock.path == tmp_path / "0670FF38_x.lock"  # the ID made a safe file name
    assert lock.read_holder() is None
    waited = lock.acquire(wait_s=1)
    assert 0 <= waited < 1
    info = lock.read_holder()
    assert info is not None
    assert {k: info[k] for k in ("board", "pid", "command", "run")} == {
        "board": "0670FF38:x",
        "pid": os.getpid(),
        "command": "harness run nightly.yaml",
        "run": "20261121-0200-ab12",
    }
    text = holder_text(info)
    assert text.startswith(
        f"pid {os.getpid()} on host {info['host']} (harness run nightly.yaml, run 20261121-0200"
    )
    assert f"since {info['since']}" in text
    assert json.loads(lock.holder_path.read_text()) == info

    lock.release()
    assert not lock.holder_path.exists()
    lock.release()  # releasing a free lock does nothing
    assert lock.acquire(wait_s=1) < 1  # free again
    lock.release()
    assert holder_text(None) == "another process (no holder information)"


def test_a_busy_board_is_waited_for_then_busy_names_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    notes: list[str] = []
    lock = BoardLock(tmp_path / "locks", "b-1")
    with pytest.raises(BoardBusy) as caught:
        lock.acquire(wait_s=0.5, on_wait=notes.append)
    message = str(caught.value)
    assert "board b-1 stayed busy" in message
    assert f"held by pid {holder.pid} on host" in message and "(nightly holder, run run-42)" in message
    assert "--board-wait" in message  # the hint says how to wait longer
    assert isinstance(caught.value, InfraError)  # exit 3, not a traceback
    assert len(notes) == 1 and f"board b-1 is busy: held by pid {holder.pid}" in notes[0]
    # the waiter does not touch the holder's information
    assert (lock.read_holder() or {}).get("pid") == holder.pid


def test_stop_abandons_a_wait(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    lock = BoardLock(tmp_path / "locks", "b-1")
    with pytest.raises(Stopped, match="b-1"):
        lock.acquire(wait_s=600, stop=stop)  # not BoardBusy, and long before the bound
    timer.join()
    assert holder.poll() is None  # the holder still holds it


def test_a_sigkilled_holder_frees_the_board(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = BoardLock(tmp_path / "locks", "b-1")
    got = threading.Event()

    def take() -> None:
        lock.acquire(wait_s=60)
        got.set()

    waiter = threading.Thread(target=take)
    waiter.start()
    assert not got.wait(0.5)  # still held
    os.kill(holder.pid, signal.SIGKILL)  # no handler runs: the kernel drops its flock
    holder.wait(timeout=10)
    assert got.wait(30), "the lock of a killed holder was not freed"
    waiter.join()
    info = lock.read_holder()
    assert info is not None and info["pid"] == os.getpid()  # the stale holder file was replaced
    lock.release()


def test_a_dead_holder_is_told_from_a_live_one_and_one_that_finished(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = BoardLock(tmp_path / "locks", "b-1")
    assert lock.take_over_dead_holder() is None  # it lives
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    left = lock.take_over_dead_holder()
    assert left is not None and left["pid"] == holder.pid and left["run"] == "run-42"
    assert BoardLock(tmp_path / "locks", "b-1").take_over_dead_holder() is None  # now ours: alive
    lock.release(keep_holder=True)  # as when the thing it guards could not be freed
    lock = BoardLock(tmp_path / "locks", "b-1")
    again = lock.take_over_dead_holder()
    assert again is not None and again["pid"] == holder.pid  # still names the run that left it
    lock.release()  # ... and a clean release leaves nothing behind
    assert not lock.holder_path.exists()
    assert BoardLock(tmp_path / "locks", "b-1").take_over_dead_holder() is None


def test_two_locks_of_one_process_on_one_board_exclude_each_other(tmp_path: Path) -> None:
    first = BoardLock(tmp_path, "qemu-a", command="first")
    second = BoardLock(tmp_path, "qemu-a", command="second")
    other = BoardLock(tmp_path, "qemu-b")
    first.acquire(wait_s=1)
    other.acquire(wait_s=1)  # another board is not affected
    with pytest.raises(BoardBusy, match=rf"held by pid {os.getpid()} .*\(first\)"):
        second.acquire(wait_s=0.3)
    # the loser's failed wait left the holder's information alone
    assert (first.read_holder() or {}).get("command") == "first"

    got = threading.Event()

    def wait_then_note() -> None:
        second.acquire(wait_s=30)
        got.set()

    waiter = threading.Thread(target=wait_then_note)
    waiter.start()
    assert not got.wait(0.4)
    first.release()
    assert got.wait(10)
    waiter.join()
    assert (second.read_holder() or {}).get("command") == "second"
    second.release()
    other.release()


def test_lock_folder_choice_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)
    assert default_lock_dir().name == "nestbench-locks"
    assert default_lock_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "env"))
    assert default_lock_dir(tmp_path / "mine") == tmp_path / "env"  # the environment wins

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InfraError, match="cannot create the board lock folder") as caught:
        BoardLock(blocker / "locks", "qemu-a").acquire(wait_s=1)
    assert LOCK_DIR_ENV in str(caught.value)  # the hint says how to choose another folder
