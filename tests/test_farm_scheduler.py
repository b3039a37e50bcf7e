"""The farm scheduler (harness/farm/scheduler.py) with a real hardware map and real board locks; the
jobs are plain functions that note where they ran (the end-to-end runs on QEMU stand-ins are in
test_farm.py).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from test_farm_locks import holding

from harness import targets
from harness.errors import InfraError
from harness.farm.boards import Board, Claim
from harness.farm.hwmap import HardwareMapSource
from harness.farm.locks import BoardLock
from harness.farm.scheduler import (
    BOARD,
    OK,
    REPEAT,
    SHARD,
    Job,
    Scheduler,
    Verdict,
    WorkerContext,
    max_concurrency,
)
from harness.paths import ROOT

KIND = "qemu_mps2_an500"
TARGETS = targets.load_targets(ROOT)


@pytest.fixture
def farm(tmp_path: Path) -> HardwareMapSource:
    path = tmp_path / "farm.yaml"
    path.write_text(f"lock_dir: locks\nboards:\n  - {{id: a, kind: {KIND}}}\n  - {{id: b, kind: {KIND}}}\n")
    return HardwareMapSource(path, TARGETS, command="test")


@pytest.fixture
def hold_a(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds board a."""
    with holding(tmp_path / "locks", "a") as proc:
        yield proc


class Log:
    """What the jobs did: (job, board) per run, (job, board, why) per failure."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str | None, str]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def job(self, label: str, verdict: Callable[[str], str] = lambda board: OK) -> Job:
        def run(board: Board, claim: Claim, ctx: WorkerContext) -> Verdict:
            with self._lock:
                self.ran.append((label, board.id))
            status = verdict(board.id)
            return Verdict(status, "" if status == OK else f"no reply from {board.id}")

        def fail(board: Board | None, why: str) -> None:
            with self._lock:
                self.failed.append((label, board.id if board else None, why))

        return Job(kind=KIND, label=label, run=run, fail=fail)

    def say(self, text: str) -> None:
        with self._lock:
            self.lines.append(text)


def finish(scheduler: Scheduler) -> None:
    """`finish`, guarded: a scheduler that never finishes fails the test instead of hanging it."""
    thread = threading.Thread(target=scheduler.finish, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        scheduler.stop(grace_s=5)
        pytest.fail("the scheduler did not finish")


def scheduler(source: HardwareMapSource, log: Log, **kw: object) -> Scheduler:
    return Scheduler(source, [KIND], is_emulator=lambda kind: True, say=log.say, **kw)  # type: ignore[arg-type]


def test_shard_leaves_a_busy_board_alone(farm: HardwareMapSource, hold_a: subprocess.Popen[str]) -> None:
    # Board a is held by another process for longer than the run: board b runs every job, none waits
    # for a, and the run ends without waiting out a's bound.
    log = Log()
    s = scheduler(farm, log, mode=SHARD, wait_s=600)
    for i in range(3):
        s.submit(log.job(f"j{i}"))
    finish(s)
    assert sorted(log.ran) == [("j0", "b"), ("j1", "b"), ("j2", "b")] and not log.failed
    assert any(f"board a is busy: held by pid {hold_a.pid}" in line for line in log.lines)
    assert not any(w.benched for w in s.workers[KIND])  # waiting is no failure
    assert {e["board"] for e in s.sessions} == {"b"}
    # every board is free afterwards (b's lock taken at once; a's still held by its holder)
    BoardLock(farm.lock_dir, "b").acquire(wait_s=0.1)


def test_shard_hands_a_job_failed_on_a_board_to_another(farm: HardwareMapSource) -> None:
    log = Log()
    s = scheduler(farm, log, mode=SHARD, max_failures=1)
    s.submit(log.job("j0", verdict=lambda board: BOARD if board == "a" else OK))
    finish(s)
    assert log.ran in ([("j0", "b")], [("j0", "a"), ("j0", "b")])  # b first, or a then b
    if ("j0", "a") in log.ran:
        (bad,) = [w for w in s.workers[KIND] if w.board.id == "a"]
        assert "after 1 board failure in a row (last: j0: no reply from a)" in bad.benched

    # A job that fails on every board is not passed around for ever.
    log = Log()
    s = scheduler(farm, log, mode=SHARD, max_failures=5)
    s.submit(log.job("j1", verdict=lambda board: BOARD))
    s.submit(log.job("j2"))
    finish(s)
    assert sorted(b for j, b in log.ran if j == "j1") == ["a", "b"]
    assert [j for j, _ in log.ran].count("j2") == 1


def test_repeat_fails_a_benched_boards_jobs_naming_it(farm: HardwareMapSource) -> None:
    log = Log()
    s = scheduler(farm, log, mode=REPEAT, max_failures=1)
    for i in range(3):
        s.submit(log.job(f"j{i}", verdict=lambda board: BOARD if board == "a" else OK))
    finish(s)
    assert sorted(j for j, b in log.ran if b == "b") == ["j0", "j1", "j2"]
    ran_on_a = [j for j, b in log.ran if b == "a"]
    assert ran_on_a == ["j0"]  # then a sits out the run
    assert sorted(j for j, _, _ in log.failed) == ["j1", "j2"]
    assert all(b == "a" and why.startswith("board a: taken out of this run") for _, b, why in log.failed)


def test_a_single_board_busy_beyond_the_bound_fails_the_job_naming_it(
    farm: HardwareMapSource, hold_a: subprocess.Popen[str]
) -> None:
    log = Log()
    only_a = [b for b in farm.boards() if b.id == "a"]
    farm._boards = only_a  # this test's farm has board a only
    s = scheduler(farm, log, mode=SHARD, wait_s=0.3, max_failures=3)
    s.submit(log.job("j0"))
    finish(s)
    assert not log.ran
    ((job, board, why),) = log.failed
    assert (job, board) == ("j0", "a")
    assert why.startswith("board a stayed busy") and f"held by pid {hold_a.pid}" in why
    assert s.waits and s.waits[0]["board"] == "a" and "stayed busy" in s.waits[0]["failed"]


def test_stop_ends_waits_and_running_jobs_and_frees_the_boards(
    farm: HardwareMapSource, hold_a: subprocess.Popen[str]
) -> None:
    log = Log()
    started = threading.Event()

    def long_job(board: Board, claim: Claim, ctx: WorkerContext) -> Verdict:
        started.set()
        ctx.stop.wait(60)  # a session blocked on its board until the run stops
        raise InfraError("link closed")

    s = Scheduler(farm, [KIND], is_emulator=lambda kind: True, say=log.say, mode=REPEAT, wait_s=600)
    s.submit(
        Job(
            kind=KIND,
            label="long",
            run=long_job,
            fail=lambda board, why: log.failed.append(("long", None, why)),
        )
    )
    assert started.wait(30)  # b runs it; a waits for its busy board
    s.stop(grace_s=30)
    assert all(w.thread is not None and not w.thread.is_alive() for w in s.workers[KIND])
    assert not log.failed  # an interrupted job records nothing: --resume measures it
    BoardLock(farm.lock_dir, "b").acquire(wait_s=0.1)  # b was freed


def test_max_concurrency() -> None:
    def s(board: str, start: str, end: str) -> dict[str, str]:
        stamp = "2026-01-01T00:00:{}+00:00"
        return {"board": board, "start": stamp.format(start), "end": stamp.format(end)}

    assert max_concurrency([]) == 0
    assert max_concurrency([s("a", "00", "05"), s("b", "05", "09")]) == 1  # one ends as the next starts
    assert max_concurrency([s("a", "00", "05"), s("b", "01", "09"), s("c", "02", "03"), {"board": "x"}]) == 3
    # sessions of one board are one after the other, even when their stamps tie
    assert max_concurrency([s("a", "01", "01"), s("a", "01", "02"), s("b", "01.5", "03")]) == 2
    assert max_concurrency([s("a", "01", "01"), s("a", "01", "02"), s("a", "02", "03")]) == 1


def test_a_link_opened_as_the_run_stops_is_closed_at_once() -> None:
    # A session that opened its link just after `stop` closed the others must not run its sweep.
    stop = threading.Event()
    ctx = WorkerContext(Board(id="a", kind=KIND, source="hwmap"), stop, say=lambda text: None)
    early, late = serial.serial_for_url("loop://"), serial.serial_for_url("loop://")
    with ctx.watch(early):
        stop.set()
        ctx.abort()
        assert not early.is_open
        with ctx.watch(late):
            assert not late.is_open
