"""Terminal summary (rich on a terminal, plain text otherwise) and report.md."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.baselines import compare
from harness.records import records_frame
from harness.report import print_summary, write_report_md
from harness.suite import Tolerances

QEMU, NUCLEO = "qemu_mps2_an500", "nucleo_f767zi"


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "suite": "quick", "entry": "dense", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "sparsity": 0.0, "target": QEMU, "cycle_source": "qemu-icount",
        "cycles": 812_345, "accuracy_host": 0.9722, "accuracy_device": 0.9722, "samples": 360,
        "model_bytes": 10_240, "weight_bytes": 9_000, "index_bytes": 0, "meta_bytes": 1_240,
        "flash_bytes": 40_000, "ram_bytes": 20_000, "status": "ok",
    }  # fmt: skip
    base.update(over)
    return base


def frames() -> tuple[Any, Any]:
    error = "timeout | no reply\nmore"
    current = records_frame([
        row(cycles=900_000),
        row(entry="sparse", level=1, sparsity=0.8, cycles=300_000),
        row(entry="big", status="failed", cycles=None, accuracy_device=None, error=error),
        row(target=NUCLEO, cycle_source="dwt", cycles=700_000),
    ])  # fmt: skip
    baseline = records_frame([row(), row(entry="sparse", level=1, sparsity=0.8, cycles=300_000)])
    return current, baseline


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=100), out


def test_plain_summary() -> None:
    current, baseline = frames()
    comparison = compare(current, baseline, Tolerances())
    console, out = plain_console()
    print_summary(console, current, comparison)
    text = out.getvalue()
    assert "\x1b[" not in text and "━" not in text and "│" not in text  # plain: no colours, no boxes
    assert f"{QEMU} (cycles: qemu-icount)" in text and f"{NUCLEO} (cycles: dwt)" in text
    dense = next(line for line in text.splitlines() if line.startswith("dense ") and "900,000" in line)
    for cell in ("97.22 %", "10,240", "40,000", "20,000", "ok", "regression"):
        assert cell in dense
    assert "regressions" in text
    regression = next(line for line in text.splitlines() if line.startswith(f"{QEMU}  dense"))
    assert "812,345" in regression and "+87,655 (+10.79 %)" in regression
    assert "timeout | no reply" in text and "more" not in text  # first line of the error only
    assert text.rstrip().splitlines()[-1].startswith("baseline: regression (1 regression")


def test_terminal_summary_uses_rich_tables() -> None:
    current, baseline = frames()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=160)
    print_summary(console, current, compare(current, baseline, Tolerances()))
    text = out.getvalue()
    assert "\x1b[" in text and "900,000" in text and "regression" in text


def test_summary_with_per_target_comparisons() -> None:
    current, baseline = frames()
    per_target = {
        QEMU: compare(current[current["target"] == QEMU], baseline, Tolerances()),
        NUCLEO: compare(current[current["target"] == NUCLEO], None, Tolerances()),
    }
    console, out = plain_console()
    print_summary(console, current, per_target)
    text = out.getvalue()
    nucleo_row = next(line for line in text.splitlines() if "700,000" in line)
    assert nucleo_row.rstrip().endswith("new")
    assert "no baseline yet for nucleo_f767zi" in text


def test_summary_without_records_or_baseline() -> None:
    console, out = plain_console()
    print_summary(console, records_frame([]), None)
    assert "no records" in out.getvalue()
    current, _ = frames()
    console, out = plain_console()
    print_summary(console, current, compare(current, None, Tolerances()))
    assert "none stored yet" in out.getvalue()


def test_report_md(tmp_path: Path) -> None:
    current, baseline = frames()
    provenance = {
        "run_id": "20250101-120000",
        "git": {"sha": "abc123", "dirty": True},
        "tools": {"gcc": "arm-none-eabi-gcc 12.2"},
        "flags": ["-O2", "-mcpu=cortex-m7"],
    }
    path = write_report_md(tmp_path, current, compare(current, baseline, Tolerances()), provenance)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# nestbench report: quick\n")
    assert f"## {QEMU}" in text and f"## {NUCLEO}" in text
    assert "| entry | format | level |" in text
    assert "### Regressions" in text and "### New rows (no baseline)" in text
    assert "timeout \\| no reply" in text  # pipes escaped inside table cells
    assert "- git.sha: `abc123`" in text and "- git.dirty: `True`" in text
    assert "- flags: `-O2, -mcpu=cortex-m7`" in text
    for line in text.splitlines():
        if line.startswith("| dense "):
            assert line.count("|") == 13  # 12 columns
