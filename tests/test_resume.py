"""An interrupted run is finished by `--resume`, with the records of an uninterrupted run.

The runs are real `harness run` processes on a three-entry suite: one is killed with SIGKILL (no
handler runs), one gets Ctrl-C (SIGINT to its process group, as a terminal sends it) as soon as its
first records are written; `--resume` then completes each. QEMU instruction counts are deterministic,
so the resumed records must equal an uninterrupted run's, cell for cell.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import HARNESS
from filelock import FileLock

from harness import cli
from harness.catalog import build_catalog
from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_OK
from harness.paths import ROOT
from harness.pipeline import suite_hash
from harness.suite import load_suite

SUITE = Path(__file__).parent / "data" / "suites" / "e2e_three.yaml"


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HARNESS), *args], capture_output=True, text=True, timeout=600)


def start(out: Path) -> subprocess.Popen[str]:
    """`harness run` in its own process group (like a job started from a shell)."""
    return subprocess.Popen(
        [str(HARNESS), "run", str(SUITE), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_first_records(out: Path, proc: subprocess.Popen[str], timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((out / "e2e_three").glob("*/records.parquet"))  # written after records.csv
        if found:
            return found[0].parent
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"the run ended before writing records:\n{stdout}\n{stderr}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no records within the time limit")


def group_gone(pgid: int, timeout: float = 10) -> bool:
    """True once no process of the group is left (QEMU included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def reference(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The records of an uninterrupted run (it also trains and builds for the other runs)."""
    out = tmp_path_factory.mktemp("reference")
    proc = harness("run", str(SUITE), "--out", str(out))
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    (run_dir,) = (out / "e2e_three").iterdir()
    frame = pd.read_parquet(run_dir / "records.parquet")
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    return frame


@pytest.mark.e2e
def test_sigkill_then_resume_equals_an_uninterrupted_run(reference: pd.DataFrame, tmp_path: Path) -> None:
    proc = start(tmp_path)
    run_dir = wait_for_first_records(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and its QEMU, without any chance to clean up
    proc.wait(timeout=30)

    assert run_json(run_dir)["status"] == "running"  # never marked complete
    partial = pd.read_parquet(run_dir / "records.parquet")  # readable: written atomically
    assert 1 <= len(partial) < 3, "the kill came too late to leave work for --resume"
    assert pd.read_csv(run_dir / "records.csv")["entry"].tolist() == partial["entry"].tolist()

    resumed = harness("run", str(SUITE), "--out", str(tmp_path), "--resume")
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    assert f"resuming {run_dir} with {len(partial)} measured rows" in resumed.stdout
    assert "already measured (resume)" in resumed.stdout
    assert [p.name for p in (tmp_path / "e2e_three").iterdir()] == [run_dir.name]  # no second run

    info = run_json(run_dir)
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    final = pd.read_parquet(run_dir / "records.parquet")
    pd.testing.assert_frame_equal(final, reference)  # same keys, cycles, outputs, status; no duplicates
    assert pd.read_csv(run_dir / "records.csv")["cycles"].tolist() == reference["cycles"].tolist()
    for name in ("report.md", "report.html", "summary.json", "junit.xml"):
        assert (run_dir / name).is_file(), name


@pytest.mark.e2e
def test_ctrl_c_leaves_a_resumable_run(reference: pd.DataFrame, tmp_path: Path) -> None:
    proc = start(tmp_path)
    run_dir = wait_for_first_records(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == EXIT_INFRA, stdout + stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert group_gone(proc.pid), "a process of the run (QEMU?) outlived Ctrl-C"
    info = run_json(run_dir)
    assert info["status"] == "interrupted" and info["stopped"]
    partial = pd.read_parquet(run_dir / "records.parquet")
    measured = partial[partial["status"] == "ok"]
    assert 1 <= len(measured) < 3

    # The suite changed meanwhile: refused, nothing touched.
    changed = tmp_path / "e2e_three.yaml"
    changed.write_text(SUITE.read_text().replace("samples: 20", "samples: 19"))
    refused = harness("run", str(changed), "--out", str(tmp_path), "--resume")
    assert refused.returncode == EXIT_INPUT, refused.stdout + refused.stderr
    assert f"{changed}: --resume: the suite changed since run {run_dir.name}" in refused.stderr
    assert run_json(run_dir)["status"] == "interrupted"

    resumed = harness("run", str(SUITE), "--out", str(tmp_path), "--resume")
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "records.parquet"), reference)
    assert run_json(run_dir)["status"] == "complete"


def fake_interrupted_run(out: Path, **info: object) -> Path:
    run_dir = out / "e2e_three" / "20260101-000000-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "running", **info}))
    return run_dir


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", *args])
    return code, err.getvalue()


def test_resume_refuses_other_targets_and_a_run_in_use(tmp_path: Path) -> None:
    suite = tmp_path / "e2e_three.yaml"
    shutil.copy(SUITE, suite)
    current = suite_hash(load_suite(suite, build_catalog(ROOT)))
    run_dir = fake_interrupted_run(tmp_path / "runs", suite_hash=current, target_names=["nucleo_f767zi"])
    code, err = run_cli(str(suite), "--out", str(tmp_path / "runs"), "--resume")
    assert code == EXIT_INPUT
    assert "was started for targets ['nucleo_f767zi']" in err and "--resume" in err

    (run_dir / "run.json").write_text(
        json.dumps({"status": "running", "suite_hash": current, "target_names": ["qemu_mps2_an500"]})
    )
    with FileLock(run_dir / ".run.lock", timeout=0):  # another harness process is running it
        code, err = run_cli(str(suite), "--out", str(tmp_path / "runs"), "--resume")
    assert code == EXIT_INFRA
    assert "in use by another harness process" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"


def test_resume_checks_the_suite_first_and_skips_complete_runs(tmp_path: Path) -> None:
    # A bad suite is reported before any run folder is looked at; a complete run is never resumed,
    # and a run without a suite hash (unknown suite) is refused like a changed suite.
    out = tmp_path / "runs"
    complete = fake_interrupted_run(out)
    (complete / "run.json").write_text(json.dumps({"status": "complete"}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.read_text().replace("suite: e2e_three", "suite: e2e_three\nsampels: 3"))
    code, err = run_cli(str(bad), "--out", str(out), "--resume")
    assert code == EXIT_INPUT and "sampels" in err  # the suite is validated before anything else
    older = out / "e2e_three" / "20270101-000000-beef"
    older.mkdir()
    (older / "run.json").write_text(json.dumps({"status": "running"}))
    code, err = run_cli(str(SUITE), "--out", str(out), "--resume")
    assert code == EXIT_INPUT and "suite hash unknown then" in err
