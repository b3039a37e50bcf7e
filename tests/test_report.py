"""What a run shows: the terminal summary (rich on a terminal, plain text otherwise), progress and
log lines, report.md and report.html, and `harness report` on saved runs (again, and side by side)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import HARNESS
from rich.console import Console

from harness import cli, pipeline
from harness.baselines import compare, comparisons_to_json
from harness.progress import PLAIN, QUIET, RICH, Progress
from harness.records import records_frame, write_records
from harness.report import fault_registers, print_summary, write_report, write_report_md
from harness.suite import Tolerances

QEMU, NUCLEO = "qemu_mps2_an500", "nucleo_f767zi"
E2E_SUITE = Path(__file__).parent / "data" / "suites" / "e2e_three.yaml"


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
    # Two targets: a side-by-side table (cycles headed by their cycle source), then one table each.
    _, after = text.split("## Side by side", 1)
    side, per_target = after.split("\n## ", 1)
    assert f"| {QEMU} cycles [qemu-icount] |" in side and f"| {NUCLEO} cycles [dwt] |" in side
    rows = [line for line in per_target.splitlines() if line.startswith("| dense | dense | 0 ")]
    assert rows and all(line.count("|") == 13 for line in rows)  # 12 columns
    side_rows = [line for line in side.splitlines() if line.startswith("| dense | dense | 0 ")]
    assert len(side_rows) == 1 and side_rows[0].count("|") == 9  # entry..sparsity + 2 per target


# --- report.md and report.html with plots --------------------------------------------------------------


FAULT = (
    "firmware fault: pc=0x00000100 lr=0x00000201 psr=0x21000000 cfsr=0x00008200 hfsr=0x40000000 "
    "mmfar=0x00000000 bfar=0x20001000\nlast UART lines:\n  > 5 _fault*1234abcd\n  < ! fault pc=0x100"
)


def suite_frames() -> tuple[Any, Any]:
    rows = [row(entry="<b>dense</b>", cycles_per_layer="conv1=500000;fc=312345")]
    for lv, (sp, cycles) in enumerate([(0.7, 400_000), (0.8, 300_000), (0.9, 200_000)]):
        common = {
            "level": lv,
            "sparsity": sp,
            "trainer": "nested",
            "accuracy_device": 0.97 - lv / 100,
            "cycles_per_layer": f"conv1={cycles // 2};fc={cycles // 4}",
        }
        rows.append(
            row(
                entry="nested",
                format="nested",
                cycles=cycles,
                model_hash="n",
                model_bytes=5000,
                weight_bytes=4000,
                index_bytes=600,
                meta_bytes=400,
                **common,
            )
        )
        rows.append(
            row(
                entry="standalone",
                format="csr",
                cycles=cycles - 1000,
                model_hash=f"s{lv}",
                model_bytes=4000,
                weight_bytes=3000,
                index_bytes=600,
                meta_bytes=400,
                **(common | {"trainer": "standalone"}),
            )
        )
    rows.append(row(entry="crash", status="failed", cycles=None, accuracy_device=None, error=FAULT))
    current = records_frame(rows)
    baseline = records_frame([r for r in rows if r["entry"] == "nested"])
    baseline.loc[baseline["level"] == 2, "cycles"] = 150_000  # the run is slower at level 2
    return current, baseline  # fmt: skip


def test_report_files(tmp_path: Path) -> None:
    current, baseline = suite_frames()
    comparison = {QEMU: compare(current, baseline, Tolerances())}
    files = write_report(tmp_path, current, comparison, {"run_id": "r1", "status": "complete"})
    md, page = files.md.read_text(), files.html.read_text()
    plots_written = {p.name for p in files.plot_paths()}
    assert plots_written == {f"pareto_{QEMU}.png", f"storage_{QEMU}.png", f"layers_{QEMU}.png"}
    for name in plots_written:
        assert (tmp_path / name).is_file()
        assert f"]({name})" in md and f'src="{name}"' in page  # both reports show every plot

    # storage: one nested model vs the standalone ensemble (sum of 3) vs dense
    storage = {line.split("|")[1].strip(): line for line in md.splitlines() if line.count("|") == 10}
    assert "| nested | nested | nested | 1 | 4,000 | 600 | 400 | 5,000 | 0.49× |" in md
    assert "| standalone | standalone | csr | 3 | 9,000 | 1,800 | 1,200 | 12,000 | 1.17× |" in md
    assert "<b>dense</b>" in storage
    # the regression from the saved comparison, and the failure with its registers and UART lines
    assert "### Regressions" in md and "| qemu_mps2_an500 | nested | nested | 2 | cycles | 150,000 |" in md
    assert "HardFault registers:" in md and "| bfar | 0x20001000 |" in md and "> 5 _fault*1234abcd" in md
    # HTML: the same content, escaped
    assert "&lt;b&gt;dense&lt;/b&gt;" in page and "<b>dense</b>" not in page
    assert '<td class="regression">regression</td>' in page and '<td class="failed">failed</td>' in page
    assert "<td>bfar</td><td>0x20001000</td>" in page and "&gt; 5 _fault*1234abcd" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<table>") == page.count("</table>") and md.count("## ") == page.count(
        "<h2>"
    ) + md.count("### ")


def test_fault_registers() -> None:
    assert fault_registers(FAULT)["cfsr"] == "0x00008200"
    assert fault_registers("no reply to 'hello' within 5 s") == {}


# --- harness report: saved runs ------------------------------------------------------------------------


def saved_run(folder: Path, frame: Any, comparison: Any, **info: Any) -> Path:
    folder.mkdir(parents=True)
    write_records(folder, frame)
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "status": "complete", **info}))
    if comparison is not None:
        (folder / "comparison.json").write_text(json.dumps(comparisons_to_json(comparison)))
    return folder


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_report_renders_a_saved_run_again(tmp_path: Path) -> None:
    current, baseline = suite_frames()
    run = saved_run(tmp_path / "r1", current, {QEMU: compare(current, baseline, Tolerances())})
    code, out, err = run_cli("report", str(run))
    assert code == 0, err
    for name in ("report.md", "report.html", f"pareto_{QEMU}.png", f"storage_{QEMU}.png"):
        assert (run / name).is_file(), name
    md = (run / "report.md").read_text()
    assert md.startswith("# nestbench report: quick") and "Run `r1`." in md
    assert "baseline: regression (1 regression" in md  # the comparison saved with the run, not redone
    assert "baseline: regression" in out and f"report: {run / 'report.html'}" in out
    # without a saved comparison the report says so
    run2 = saved_run(tmp_path / "r2", current, None)
    assert run_cli("report", str(run2), "--quiet")[0] == 0
    assert "baseline: not compared" in (run2 / "report.md").read_text()


def test_report_compares_runs_side_by_side(tmp_path: Path) -> None:
    current, _ = suite_frames()
    faster = current.copy()
    faster["cycles"] = (faster["cycles"] * 0.9).round().astype("Int64")
    faster.loc[faster["entry"] == "standalone", "cycle_source"] = "dwt"
    a = saved_run(tmp_path / "runA", current, None)
    b = saved_run(tmp_path / "runB", faster, None)
    code, out, err = run_cli("report", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    compare_md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| entry | format | level | metric | runA | runB | Δ runB |" in compare_md
    assert "| nested | nested | 2 | cycles | 200,000 | 180,000 | -20,000 (-10.00 %) |" in compare_md
    assert "| standalone | csr | 0 | cycles | 399,000 | 359,100 | other cycle source |" in compare_md
    assert "| nested | nested | 0 | model B | 5,000 | 5,000 | +0 (+0.00 %) |" in compare_md
    # runB measured one entry with another cycle source: one combined plot per source, never mixed
    page = (tmp_path / "cmp" / "compare.html").read_text()
    for source in ("qemu-icount", "dwt"):
        assert (tmp_path / "cmp" / f"compare_pareto_{QEMU}_{source}.png").is_file()
        assert f"compare_pareto_{QEMU}_{source}.png" in page
    assert re.search(r"\nnested +nested +2  cycles +200,000 +180,000 +-20,000 \(-10\.00 %\)\n", out)


def test_report_bad_run_folders_exit_2(tmp_path: Path) -> None:
    code, _, err = run_cli("report", str(tmp_path / "missing"))
    assert code == 2 and f"{tmp_path / 'missing'}: RUN: no such run folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli("report", str(empty))
    assert code == 2 and "no records.csv or records.parquet" in err
    current, _ = suite_frames()
    broken = saved_run(tmp_path / "broken", current, None)
    (broken / "run.json").write_text('{"run_id": "x",\n "status": }\n')
    code, _, err = run_cli("report", str(broken))
    assert code == 2 and f"{broken / 'run.json'}:2: column 12: invalid JSON" in err
    (broken / "run.json").write_text("{}")
    (broken / "records.parquet").unlink()
    text = (broken / "records.csv").read_text().replace(",400000,", ",4OOOOO,", 1)
    (broken / "records.csv").write_text(text)
    code, _, err = run_cli("report", str(broken))
    assert code == 2 and "records.csv:3: cycles: expected an integer" in err
    assert "Traceback" not in err
    # one bad folder among good ones: nothing is written
    good = saved_run(tmp_path / "good", current, None)
    assert run_cli("report", str(good), str(empty))[0] == 2
    assert not (good / "report.md").exists()


def test_report_command_in_a_real_process(tmp_path: Path) -> None:
    current, _ = suite_frames()
    run = saved_run(tmp_path / "r1", current, None)
    proc = subprocess.run([str(HARNESS), "report", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run / "report.html").is_file()
    proc = subprocess.run([str(HARNESS), "report", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --- progress and log lines ------------------------------------------------------------------------------


def test_progress_plain_mode_logs_quarters() -> None:
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=False), plain_interval=0)
    assert progress.mode == PLAIN
    with progress.task("train dense", total=1.0) as task:
        report_fraction = task.fraction_callback()
        for i in range(1, 11):
            report_fraction(i / 10, f"epoch {i}/10")
    with progress.task("qemu: dense", total=40) as task:
        count = task.count_callback()
        for i in range(1, 41):
            count(i, 40)
    progress.say("a log line")
    progress.error("an error")
    lines = out.getvalue().splitlines()
    assert lines == [
        "  train dense: 25% epoch 3/10",
        "  train dense: 50% epoch 5/10",
        "  train dense: 75% epoch 8/10",
        "  qemu: dense: 25% 10/40",
        "  qemu: dense: 50% 20/40",
        "  qemu: dense: 75% 30/40",
        "a log line",
        "an error",
    ]


def test_progress_plain_mode_is_silent_for_short_stages() -> None:
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=False))  # default: a line at most every 2 s
    with progress.task("build", total=4) as task:
        for i in range(1, 5):
            task.update(i)
    assert out.getvalue() == ""


def test_progress_quiet_shows_errors_only() -> None:
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=True), quiet=True, plain_interval=0)
    assert progress.mode == QUIET
    with progress.task("train", total=1.0) as task:
        task.fraction_callback()(0.5, "half")
    progress.say("log")
    progress.error("broken")
    assert out.getvalue() == "broken\n"


def test_progress_rich_bar_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    progress = Progress(console)
    assert progress.mode == RICH
    with progress.task("train dense", total=1.0) as task:
        task.fraction_callback()(0.5, "epoch 5/10")
        console.print("a line printed meanwhile")
    text = out.getvalue()
    assert "train dense" in text and "epoch 5/10" in text and "50%" in text  # the bar was drawn
    assert "a line printed meanwhile" in text
    assert "\x1b[" in text  # cursor control: the bar is redrawn in place and removed at the end


@pytest.mark.e2e
def test_a_run_on_a_terminal_shows_bars_then_a_tidy_summary(shared_cache: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    options = pipeline.RunOptions(suite=E2E_SUITE, out=tmp_path)
    assert pipeline.run(options, console) == 0
    text = out.getvalue()
    for bar in ("train a", "build a for qemu_mps2_an500", "qemu_mps2_an500: a, 1 level(s) × 20 samples"):
        assert bar in text, bar  # each long stage had its bar
    # what stays on the screen ends with the summary table, the verdict and the run folder
    last = [line for line in text.splitlines() if line.strip()][-3:]
    assert last[0].strip().startswith("c ") and last[1].startswith("baseline:")
    assert last[2].startswith("run folder: ")


@pytest.mark.e2e
def test_a_run_in_a_log_prints_plain_lines(shared_cache: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    options = pipeline.RunOptions(suite=E2E_SUITE, out=tmp_path)
    assert pipeline.run(options, Console(file=out, force_terminal=False, width=160)) == 0
    text = out.getvalue()
    assert "\x1b[" not in text and "━" not in text  # no bars, no colours in a log
    assert "  qemu_mps2_an500 level 0 (0.00):" in text and "bit-exact" in text
    assert text.rstrip().splitlines()[-1].startswith("run folder: ")
