"""Farm mode end to end: `harness run SUITE --hardware-map MAP` as real processes, with QEMU instances
standing in for boards (a stand-in with ``qemu_args: "-S"`` is a board that never starts).

Where a test needs a board busy or free at a given moment it holds the board's real lock (a
`BoardLock` in this process, or another process holding it), so what it checks follows from the
order of events, never from how long something took. Every map has its own lock folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from conftest import HARNESS
from fw.liveoutput import LiveOutput
from test_farm_locks import holding

from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_OK
from harness.farm.locks import LOCK_DIR_ENV, BoardLock
from harness.farm.scheduler import max_concurrency

pytestmark = pytest.mark.e2e

KIND = "qemu_mps2_an500"
MODELS = {
    "dense": "{name: dense, arch: digits_cnn, trainer: dense, options: {epochs: 1}}",
    "nested": "{name: nested, arch: digits_cnn, trainer: untrained, format: nested, levels: [0.7, 0.9]}",
    "nested4": "{name: nested4, arch: digits_cnn, trainer: untrained, format: nested, levels: [0.7, 0.9], "
    "options: {block: 4}}",
}
ROWS_OF = {"dense": 1, "nested": 2, "nested4": 2}  # levels per entry
COMPARED = ["entry", "format", "level", "target", "cycles", "accuracy_device", "status"]


def write_suite(
    folder: Path,
    name: str,
    models: list[str],
    *,
    farm: str = "",
    targets: str = f"[{KIND}]",
    timeout_s: int = 5,
) -> Path:
    text = (
        f"suite: {name}\ndataset: digits\nsamples: 40\ntargets: {targets}\n"
        f"measure: {{repetitions: 1, warmup: 0, timeout_s: {timeout_s}}}\n"
        + (f"farm: {farm}\n" if farm else "")
        + "models:\n"
        + "".join(f"  - {MODELS[m]}\n" for m in models)
    )
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def write_map(folder: Path, *boards: str) -> Path:
    """A map of stand-ins, ``"qemu-a"`` or ``"qemu-hung -S"`` (extra QEMU arguments after the ID)."""
    lines = ["lock_dir: locks", "boards:"]
    for spec in boards:
        board, *args = spec.split()
        options = f", options: {{qemu_args: '{' '.join(args)}'}}" if args else ""
        lines.append(f"  - {{id: {board}, kind: {KIND}{options}}}")
    path = folder / "farm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def env() -> dict[str, str]:
    # wide lines (log lines are matched whole), and the map's own lock folder
    out = {k: v for k, v in os.environ.items() if k != LOCK_DIR_ENV}
    return out | {"COLUMNS": "400", "PYTHONUNBUFFERED": "1"}


def harness(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HARNESS), *map(str, args)], capture_output=True, text=True, timeout=600, env=env()
    )


class Running(LiveOutput):
    """A `harness run` process in its own process group whose output is read as it comes."""

    started: ClassVar[list[Running]] = []  # killed after each test, whatever happened

    def __init__(self, *args: str | Path) -> None:
        Running.started.append(self)
        proc = subprocess.Popen(
            [str(HARNESS), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env(),
            start_new_session=True,
        )
        super().__init__(proc)


@pytest.fixture(autouse=True)
def no_run_left_behind() -> Iterator[None]:
    yield
    while Running.started:
        Running.started.pop().kill()


def group_left(pgid: int) -> str:
    """The processes left in a process group ("" when none): a run that stopped every worker has
    waited for its emulators, so none is left, not even a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return ""
    ps = subprocess.run(
        ["ps", "-o", "pid,ppid,stat,etime,args", "-g", str(pgid)], capture_output=True, text=True
    )
    return ps.stdout or "some process"


def run_folder(out: Path, suite: str) -> Path:
    (run_dir,) = (out / suite).iterdir()
    return run_dir


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def records(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "records.parquet")


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """What must not depend on which board ran a row, nor on interruptions."""
    return frame[COMPARED].sort_values(["entry", "level"]).reset_index(drop=True)


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[dict[str, BoardLock]]:
    """Board locks this test holds, freed at the end whatever happened."""
    held: dict[str, BoardLock] = {}
    yield held
    for lock in held.values():
        lock.release()


def hold(locks: dict[str, BoardLock], folder: Path, board: str) -> BoardLock:
    lock = BoardLock(folder / "locks", board, command="pytest", run="test_farm")
    lock.acquire(wait_s=5)
    locks[board] = lock
    return lock


def assert_free(folder: Path, *boards: str) -> None:
    """Nobody holds these boards: each lock is taken at once (then freed again)."""
    for board in boards:
        lock = BoardLock(folder / "locks", board)
        lock.acquire(wait_s=0.5)
        lock.release()


# -- shard: the records every other test compares with ----------------------------------------------


@pytest.fixture(scope="module")
def shard_run(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted shard run of three entries on two stand-ins. Both boards are held until every
    job is queued, then freed together, so the two workers certainly have work at the same time."""
    folder = tmp_path_factory.mktemp("shard")
    suite = write_suite(folder, "farm_shard", ["dense", "nested", "nested4"])
    hwmap = write_map(folder, "qemu-a", "qemu-b")
    held: dict[str, BoardLock] = {}
    try:
        for board in ("qemu-a", "qemu-b"):
            hold(held, folder, board)
        run = Running("run", suite, "--hardware-map", hwmap, "--out", folder / "runs")
        run.wait_for(r"^waiting for the board workers to finish")
        for lock in held.values():
            lock.release()
        code, output = run.finish(), run.text
    finally:
        for lock in held.values():
            lock.release()
    assert code == EXIT_OK, output
    return run_folder(folder / "runs", "farm_shard"), output


def test_shard_runs_entries_on_both_boards_in_parallel(shard_run: tuple[Path, str]) -> None:
    run_dir, output = shard_run
    frame = records(run_dir)
    assert sorted(frame["entry"]) == ["dense", "nested", "nested", "nested4", "nested4"]  # each once
    assert (frame["status"] == "ok").all()  # bit-exact with the host reference
    assert set(frame["board"]) == {"qemu-a", "qemu-b"}
    for _, group in frame.groupby("entry"):
        assert group["board"].nunique() == 1  # an entry's levels run in one session
    farm = run_json(run_dir)["farm"]
    assert farm["mode"] == "shard" and set(farm["boards"]) == {"qemu-a", "qemu-b"}
    sessions = farm["sessions"]
    assert sorted(s["job"] for s in sessions) == ["dense", "nested", "nested4"]
    assert {s["board"] for s in sessions} == {"qemu-a", "qemu-b"}
    assert max_concurrency(sessions) == 2  # from the recorded timeline: both boards at once
    assert "board qemu-a is busy: held by pid" in output and "(pytest, run test_farm)" in output
    assert_free(run_dir.parents[2], "qemu-a", "qemu-b")


# -- repeat --------------------------------------------------------------------------------------------


def test_repeat_runs_every_entry_on_every_board(shared_cache: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "farm_repeat", ["dense", "nested"], farm="{mode: repeat}")
    hwmap = write_map(tmp_path, "qemu-a", "qemu-b")
    baselines = tmp_path / "baselines"
    proc = harness(
        "run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs", "--baselines", baselines,
        "--update-baselines",
    )  # fmt: skip
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    run_dir = run_folder(tmp_path / "runs", "farm_repeat")
    frame = records(run_dir)
    keys = list(zip(frame["entry"], frame["level"], frame["board"], strict=True))
    assert sorted(keys) == sorted(
        (e, lv, b) for e in ("dense", "nested") for lv in range(ROWS_OF[e]) for b in ("qemu-a", "qemu-b")
    )
    assert (frame["status"] == "ok").all()
    # the same image on two identical stand-ins: the same instruction counts and outputs
    for _, pair in frame.groupby(["entry", "level"]):
        assert pair["cycles"].nunique() == 1 and pair["accuracy_device"].nunique() == 1

    stored = pd.read_csv(baselines / "farm_repeat" / f"{KIND}.csv")
    assert sorted(zip(stored["entry"], stored["level"], strict=True)) == [
        ("dense", 0),
        ("nested", 0),
        ("nested", 1),
    ]
    assert "measured on 2 boards; stored from board" in proc.stdout

    names = [case.get("name") for case in ET.parse(run_dir / "junit.xml").iter("testcase")]
    for board in ("qemu-a", "qemu-b"):
        assert any(f"nested/nested/level 1 on {board}" in str(n) for n in names), names

    # a second run compares each board's rows with the one stored row per key: no regression
    again = harness(
        "run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs", "--baselines", baselines
    )
    assert again.returncode == EXIT_OK, again.stdout + again.stderr


# -- locks between processes ----------------------------------------------------------------------


def test_a_second_run_waits_for_a_board_another_process_holds(shared_cache: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "farm_lock", ["nested"])
    hwmap = write_map(tmp_path, "qemu-a")
    with holding(tmp_path / "locks", "qemu-a") as holder:
        # A short wait bound: the board's rows fail naming the board and its holder, exit 3.
        out = tmp_path / "short"
        short = harness("run", suite, "--hardware-map", hwmap, "--out", out, "--board-wait", "1")
        assert short.returncode == EXIT_INFRA, short.stdout + short.stderr
        frame = records(run_folder(out, "farm_lock"))
        assert (frame["status"] == "failed").all() and (frame["board"] == "qemu-a").all()
        for error in frame["error"]:
            assert "board qemu-a stayed busy" in error and f"held by pid {holder.pid}" in error

        # A long one: the run says whom it waits for, waits, and runs once the holder is gone.
        run = Running("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "long")
        line = run.wait_for(r"board qemu-a is busy")
        assert f"held by pid {holder.pid} on host" in line and "(nightly holder, run run-42)" in line
        assert run.proc.poll() is None  # waiting, not failed
        holder.kill()  # SIGKILL: the kernel frees its lock
        code, output = run.finish(), run.text
    assert code == EXIT_OK, output
    frame = records(run_folder(tmp_path / "long", "farm_lock"))
    assert (frame["status"] == "ok").all() and (frame["board"] == "qemu-a").all()
    assert_free(tmp_path, "qemu-a")


# -- a failing board ---------------------------------------------------------------------------------


def test_a_hung_board_fails_only_its_own_rows(shared_cache: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "farm_hung", ["dense", "nested"], farm="{mode: repeat}", timeout_s=3)
    hwmap = write_map(tmp_path, "qemu-a", "qemu-hung -S")
    proc = harness("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs")
    assert proc.returncode == EXIT_INFRA, proc.stdout + proc.stderr
    frame = records(run_folder(tmp_path / "runs", "farm_hung"))
    good, hung = frame[frame["board"] == "qemu-a"], frame[frame["board"] == "qemu-hung"]
    assert len(good) == len(hung) == 3 and len(frame) == 6
    assert (good["status"] == "ok").all()
    assert (hung["status"] == "failed").all()
    for error in hung["error"]:
        assert error.startswith("board qemu-hung: "), error
    assert "no reply to 'hello'" in hung["error"].iloc[0]  # the first job's own failure
    assert "Traceback" not in proc.stdout + proc.stderr


def test_shard_benches_a_hung_board_and_its_work_goes_to_the_good_one(
    shared_cache: Path, tmp_path: Path, locks: dict[str, BoardLock]
) -> None:
    # The good board is held until the hung one has failed a job and sat out: so the hung board
    # certainly gets a job, and that job then goes to the good board.
    suite = write_suite(
        tmp_path, "farm_bench", ["dense", "nested", "nested4"], farm="{mode: shard, max_board_failures: 1}",
        timeout_s=3,
    )  # fmt: skip
    hwmap = write_map(tmp_path, "qemu-a", "qemu-hung -S")
    good = hold(locks, tmp_path, "qemu-a")
    run = Running("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs")
    run.wait_for(r"\[qemu-hung\] taken out of this run after 1 board failure")
    good.release()
    code, output = run.finish(), run.text
    assert code == EXIT_OK, output
    run_dir = run_folder(tmp_path / "runs", "farm_bench")
    frame = records(run_dir)
    assert len(frame) == 5 and (frame["status"] == "ok").all() and (frame["board"] == "qemu-a").all()
    farm = run_json(run_dir)["farm"]
    assert list(farm["benched"]) == ["qemu-hung"]
    assert "no reply to 'hello'" in farm["benched"]["qemu-hung"]  # the error that benched it
    assert "no reply to 'hello'" in output  # it did fail a job ...
    failed = [s for s in farm["sessions"] if s["board"] == "qemu-hung"]
    assert len(failed) == 1 and failed[0]["status"] == "board"
    assert any(
        s["job"] == failed[0]["job"] and s["board"] == "qemu-a" for s in farm["sessions"]
    )  # ... redone


# -- stopping and resuming -----------------------------------------------------------------------


def test_sigterm_stops_every_worker_frees_the_boards_and_resume_finishes(
    shard_run: tuple[Path, str], tmp_path: Path, locks: dict[str, BoardLock]
) -> None:
    # qemu-b is held, so its worker is waiting for it when the run is stopped, and qemu-a alone still
    # has work to do after the first records.
    suite = write_suite(tmp_path, "farm_shard", ["dense", "nested", "nested4"])
    hwmap = write_map(tmp_path, "qemu-a", "qemu-b")
    busy = hold(locks, tmp_path, "qemu-b")
    run = Running("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs")
    run.wait_for(r"board qemu-b is busy")
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs" / "farm_shard").glob("*/records.parquet")):
        assert run.proc.poll() is None and time.monotonic() < deadline, "\n".join(run.lines)
        time.sleep(0.02)
    run.proc.send_signal(signal.SIGTERM)  # to the harness only, like `kill PID`
    code, output = run.finish(timeout=60), run.text
    assert code == EXIT_INFRA, output
    assert "stopping: every board worker stops and frees its board" in output and "Traceback" not in output
    assert not group_left(run.proc.pid), "a process of the run outlived SIGTERM"
    busy.release()
    assert_free(tmp_path, "qemu-a", "qemu-b")
    assert not list((tmp_path / "locks").glob("*.holder.json"))

    run_dir = run_folder(tmp_path / "runs", "farm_shard")
    info = run_json(run_dir)
    assert info["status"] == "interrupted"
    partial = records(run_dir)
    assert 1 <= (partial["status"] == "ok").sum() < 5

    refused = harness("run", suite, "--out", tmp_path / "runs", "--resume")  # without the map
    assert refused.returncode == EXIT_INPUT, refused.stdout + refused.stderr
    assert "--resume" in refused.stderr and "same --hardware-map" in refused.stderr
    assert run_json(run_dir)["status"] == "interrupted"

    resumed = harness("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs", "--resume")
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    assert "already measured (resume)" in resumed.stdout
    assert [p.name for p in (tmp_path / "runs" / "farm_shard").iterdir()] == [run_dir.name]
    assert run_json(run_dir)["status"] == "complete"
    final = records(run_dir)
    pd.testing.assert_frame_equal(comparable(final), comparable(records(shard_run[0])))


# -- a kind without boards -------------------------------------------------------------------------


def test_a_board_kind_missing_from_the_map_fails_its_rows_only(shared_cache: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "farm_kinds", ["nested"], targets=f"[{KIND}, nucleo_f767zi]")
    hwmap = write_map(tmp_path, "qemu-a")
    proc = harness("run", suite, "--hardware-map", hwmap, "--out", tmp_path / "runs")
    assert proc.returncode == EXIT_INFRA, proc.stdout + proc.stderr
    frame = records(run_folder(tmp_path / "runs", "farm_kinds"))
    qemu, board = frame[frame["target"] == KIND], frame[frame["target"] == "nucleo_f767zi"]
    assert len(qemu) == len(board) == 2
    assert (qemu["status"] == "ok").all() and (qemu["board"] == "qemu-a").all()
    assert (board["status"] == "failed").all()
    for error in board["error"]:
        assert f"no board of kind nucleo_f767zi in hardware map {hwmap}" in error
    assert "farm: nucleo_f767zi: no board of kind nucleo_f767zi" in proc.stdout
