"""A hanging or crashing firmware: bounded timeout, fault registers shown (terminal, report.md and
report.html), the entry marked failed with the last UART lines, the other entries still measured,
partial results kept, exit code 3 (1 when a regression occurred as well).

The faults are real: the session sends the firmware's diagnostic `_hang` / `_fault` commands to the
QEMU image before measuring (the pipeline's session function is wrapped in-process to do that)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from harness import pipeline
from harness.atomic import atomic_write_frame
from harness.errors import EXIT_INFRA, EXIT_REGRESSION
from harness.protocol import DeviceClient
from harness.records import records_frame

pytestmark = pytest.mark.e2e

SUITE = """\
suite: faults
dataset: digits
samples: 20
targets: [qemu_mps2_an500]
measure: {repetitions: 2, warmup: 0, timeout_s: 3}
models:
  - {name: healthy, arch: digits_cnn, trainer: dense, options: {epochs: 1}}
  - {name: hangs, arch: digits_cnn, trainer: dense, options: {epochs: 1, lr: 0.002}}
  - {name: crashes, arch: digits_cnn, trainer: dense, options: {epochs: 1, lr: 0.001}}
"""


def test_hang_and_fault_fail_their_entry_only(shared_cache: Path, tmp_path: Path, monkeypatch: Any) -> None:
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE)
    real_session = pipeline.run_session
    sessions: list[str] = []

    def sabotaged(client: DeviceClient, expected: Any, *args: Any, **kwargs: Any) -> Any:
        sessions.append(expected.model_hash)
        if len(sessions) > 1:
            client.hello()  # past the boot banner, so the sabotage lands on a running image
        if len(sessions) == 2:
            client.raw("_hang", timeout=0.5)  # no reply: the firmware now spins forever
        if len(sessions) == 3:
            client.raw("_fault")
        return real_session(client, expected, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_session", sabotaged)
    console = Console(record=True, width=200)
    start = time.monotonic()
    code = pipeline.run(pipeline.RunOptions(suite=suite, out=tmp_path / "runs"), console)
    elapsed = time.monotonic() - start
    text = console.export_text()

    assert code == EXIT_INFRA
    run_dir = next((tmp_path / "runs" / "faults").iterdir())
    frame = pd.read_csv(run_dir / "records.csv").set_index("entry")
    assert frame.loc["healthy", "status"] == "ok"
    assert frame.loc["healthy", "cycles"] > 0
    assert frame.loc["hangs", "status"] == "failed"
    assert "no reply" in frame.loc["hangs", "error"]
    assert frame.loc["crashes", "status"] == "failed"
    assert "fault" in frame.loc["crashes", "error"] and "pc=0x" in frame.loc["crashes", "error"]
    assert "cfsr=0x" in text  # the fault registers reach the user
    assert elapsed < 300  # a sanity bound on the hang timeout (3 s per command), not a benchmark

    # The hang's row keeps the last UART lines: the command that got no answer is among them.
    hang_error = frame.loc["hangs", "error"]
    assert "last UART lines:" in hang_error and "_hang" in hang_error
    # The report shows the HardFault registers of the crashed entry, in Markdown and HTML.
    registers = dict(w.split("=") for w in frame.loc["crashes", "error"].split("\n")[0].split()[2:])
    assert {"pc", "lr", "cfsr", "hfsr"} <= set(registers)
    md = (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    assert "### qemu_mps2_an500: crashes (dense), level 0: failed" in md
    assert "HardFault registers:" in md and "HardFault registers:" in page
    for name, value in registers.items():
        assert f"| {name} | {value} |" in md
        assert f"<td>{name}</td><td>{value}</td>" in page
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"] == "infrastructure-failure" and summary["exit_code"] == EXIT_INFRA
    assert {f["entry"] for f in summary["failures"]} == {"hangs", "crashes"}


def test_a_hang_with_a_regression_exits_1(shared_cache: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """Exit 3 is for infrastructure failures alone: a regression elsewhere in the run makes it 1."""
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE.replace("  - {name: crashes", "#"))
    # A stored baseline in which `healthy` took far fewer instructions: the run regresses.
    baseline = {
        "suite": "faults", "entry": "healthy", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "sparsity": 0.0, "target": "qemu_mps2_an500",
        "cycle_source": "qemu-icount", "cycles": 1000, "status": "ok",
    }  # fmt: skip
    atomic_write_frame(tmp_path / "baselines" / "faults" / "qemu_mps2_an500.csv", records_frame([baseline]))
    real_session = pipeline.run_session
    sessions: list[str] = []

    def sabotaged(client: DeviceClient, expected: Any, *args: Any, **kwargs: Any) -> Any:
        sessions.append(expected.model_hash)
        if len(sessions) == 2:
            client.hello()
            client.raw("_hang", timeout=0.5)
        return real_session(client, expected, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_session", sabotaged)
    console = Console(record=True, width=200)
    options = pipeline.RunOptions(suite=suite, out=tmp_path / "runs", baselines=tmp_path / "baselines")
    code = pipeline.run(options, console)
    text = console.export_text()
    assert code == EXIT_REGRESSION, text
    run_dir = next((tmp_path / "runs" / "faults").iterdir())
    frame = pd.read_csv(run_dir / "records.csv").set_index("entry")
    assert frame.loc["hangs", "status"] == "failed" and frame.loc["healthy", "status"] == "ok"
    assert "regressions" in text and "healthy" in text
    regression = next(line for line in text.splitlines() if line.startswith("qemu_mps2_an500  healthy"))
    assert "cycles" in regression and "1,000" in regression
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"] == "regression" and summary["counts"]["failed"] == 1


def test_a_broken_build_fails_its_entry_only(tmp_path: Path, monkeypatch: Any) -> None:
    # A cache of its own: the broken C it generates must not reach the shared cache, where other
    # tests' runs of the same model would build it.
    monkeypatch.setenv("NESTBENCH_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE.replace("  - {name: crashes", "#").replace("  - {name: hangs", "#"))
    real_generate = pipeline.prepare_entry.__globals__["codegen"].generate

    def broken(packed: Any, qm: Any, out_dir: Path) -> Any:
        result = real_generate(packed, qm, out_dir)
        (out_dir / "model.c").write_text((out_dir / "model.c").read_text() + "\nthis is not C;\n")
        return result

    monkeypatch.setattr(pipeline.prepare_entry.__globals__["codegen"], "generate", broken)
    console = Console(record=True, width=200)
    code = pipeline.run(pipeline.RunOptions(suite=suite, out=tmp_path / "runs", no_cache=True), console)
    assert code == EXIT_INFRA
    frame = pd.read_csv(next((tmp_path / "runs" / "faults").iterdir()) / "records.csv")
    assert frame["status"].tolist() == ["failed"]
    assert "error" in frame["error"][0].lower()
    assert "model.c" in console.export_text()
