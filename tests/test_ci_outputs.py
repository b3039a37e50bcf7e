"""What CI reads: junit.xml (one test case per record and check group) and summary.json."""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from harness import cli, pipeline
from harness.atomic import atomic_write_frame
from harness.baselines import compare
from harness.ci_outputs import GROUPS, build_summary, junit_xml
from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_REGRESSION
from harness.records import records_frame
from harness.suite import Tolerances

QEMU, NUCLEO = "qemu_mps2_an500", "nucleo_f767zi"
SUITE = Path(__file__).parent / "data" / "suites" / "e2e_three.yaml"


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "suite": "s", "entry": "dense", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "sparsity": 0.0, "target": QEMU, "cycle_source": "qemu-icount",
        "cycles": 1000, "accuracy_host": 0.90, "accuracy_device": 0.90, "samples": 360,
        "model_bytes": 1000, "weight_bytes": 800, "index_bytes": 100, "meta_bytes": 100,
        "flash_bytes": 5000, "ram_bytes": 3000, "status": "ok",
    }  # fmt: skip
    base.update(over)
    return base


def scenario() -> tuple[pd.DataFrame, dict[str, Any]]:
    current = records_frame([
        row(cycles=1100),  # cycles regressed
        row(entry="sparse", level=1, accuracy_device=0.80),  # accuracy regressed
        row(entry="crash", status="failed", cycles=None, accuracy_device=None,
            error="firmware fault: pc=0x00000100 cfsr=0x00008200\nlast UART lines:\n  > 5 _fault*1234abcd"),
        row(entry="wrong", status="mismatch", error="3 of 20 samples differ from the host reference"),
        row(entry="moved", cycle_source="renode-dwt", target=QEMU),
        row(target=NUCLEO, cycle_source="dwt", cycles=700),
    ])  # fmt: skip
    baseline = records_frame(
        [
            row(),
            row(entry="sparse", level=1),
            row(entry="crash"),
            row(entry="wrong"),
            row(entry="moved"),
            row(entry="gone"),
        ]
    )
    comparisons = {
        QEMU: compare(current[current["target"] == QEMU], baseline, Tolerances()),
        NUCLEO: compare(current[current["target"] == NUCLEO], None, Tolerances()),
    }
    return current, comparisons


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in root.iter("testcase") if c.get("classname", "").endswith(QEMU)}


def test_junit_has_a_case_per_record_and_group() -> None:
    frame, comparisons = scenario()
    root = ET.fromstring(junit_xml(frame, comparisons, suite="s"))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {f"s.{QEMU}", f"s.{NUCLEO}"}
    for suite in suites.values():  # the counts CI shows match the cases
        found = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(found)
        assert int(suite.get("failures", -1)) == sum(1 for c in found if c.find("failure") is not None)
        assert int(suite.get("skipped", -1)) == sum(1 for c in found if c.find("skipped") is not None)
    assert int(root.get("tests", -1)) == sum(int(s.get("tests", 0)) for s in suites.values())
    qemu_records = 5
    assert len(suites[f"s.{QEMU}"].findall("testcase")) == qemu_records * (1 + len(GROUPS)) + 1  # + "gone"

    by_name = cases(root)
    cycles = by_name["dense/dense/level 0: cycles"].find("failure")
    assert cycles is not None and cycles.get("type") == "regression"
    assert "cycles 1,000 → 1,100" in cycles.get("message", "") and "+10.00 %" in cycles.get("message", "")
    accuracy = by_name["sparse/dense/level 1: accuracy"].find("failure")
    assert accuracy is not None and "accuracy_device 0.9 → 0.8" in (accuracy.text or "")
    assert by_name["sparse/dense/level 1: cycles"].find("failure") is None

    crash = by_name["crash/dense/level 0: run"].find("failure")
    assert crash is not None and crash.get("type") == "failed"
    assert crash.get("message") == "firmware fault: pc=0x00000100 cfsr=0x00008200"
    assert "last UART lines" in (crash.text or "")  # the whole error text
    assert by_name["crash/dense/level 0: cycles"].find("skipped") is not None

    wrong = by_name["wrong/dense/level 0: run"].find("failure")
    assert wrong is not None and wrong.get("type") == "mismatch" and "3 of 20" in (wrong.text or "")
    moved = by_name["moved/dense/level 0: cycles"].find("skipped")
    assert moved is not None and "cycle source" in moved.get("message", "")
    assert by_name["gone/dense/level 0: run"].find("skipped") is not None
    nucleo = [c for c in root.iter("testcase") if c.get("classname") == f"s.{NUCLEO}"]
    assert nucleo and all(c.find("failure") is None for c in nucleo)  # no baseline yet: passes


def test_junit_survives_control_characters_in_errors() -> None:
    frame = records_frame([row(status="failed", cycles=None, error="garbled \x01\x02 line\nlast")])
    text = junit_xml(frame, {QEMU: compare(frame, None, Tolerances())}, suite="s")
    root = ET.fromstring(text)  # well-formed XML despite the control characters
    failure = next(root.iter("failure"))
    assert "\\x01\\x02" in (failure.text or "")


def test_summary() -> None:
    frame, comparisons = scenario()
    summary = build_summary(
        frame, comparisons, exit_code=EXIT_REGRESSION, suite="s", run_id="r1", paths={"run_dir": Path("/x")}
    )
    json.dumps(summary)  # plain JSON
    assert summary["verdict"] == "regression" and summary["exit_code"] == EXIT_REGRESSION
    assert summary["counts"] == {
        "records": 6, "ok": 4, "mismatch": 1, "failed": 1, "regressions": 3, "improved": 0, "new": 1,
        "missing": 1, "source_changed": 1,
    }  # fmt: skip
    metrics = sorted((r["entry"], r["metric"]) for r in summary["regressions"])
    assert metrics == [("dense", "cycles"), ("sparse", "accuracy_device"), ("wrong", "status")]
    cycles = next(r for r in summary["regressions"] if r["metric"] == "cycles")
    assert (cycles["baseline"], cycles["current"], cycles["delta"]) == (1000, 1100, 100)
    assert {(f["entry"], f["status"]) for f in summary["failures"]} == {
        ("crash", "failed"),
        ("wrong", "mismatch"),
    }
    assert summary["targets"][QEMU]["baseline"] == "regression"
    assert summary["targets"][NUCLEO]["baseline"] == "no-baseline"
    assert summary["paths"]["run_dir"] == "/x"


def test_input_error_still_gives_ci_its_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: bad\ntargets: [qemu_mps2_an500]\nmodels: []\n")
    junit, summary = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "summary.json"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", str(bad), "--junit", str(junit), "--summary-json", str(summary)])
    assert code == EXIT_INPUT
    failure = next(ET.parse(junit).getroot().iter("failure"))
    assert f"{bad}:3: models" in (failure.text or "")
    doc = json.loads(summary.read_text())
    assert doc["verdict"] == "input-error" and doc["exit_code"] == EXIT_INPUT and "models" in doc["error"]


@pytest.mark.e2e
def test_a_real_run_writes_junit_and_summary(shared_cache: Path, tmp_path: Path) -> None:
    """A stored baseline in which entry b's image was smaller: the footprint regresses (exit 1), and
    CI finds the files in the run folder and where it asked for copies."""
    # first a run that stores the baseline, then the baseline is made stricter for entry b
    first = pipeline.RunOptions(
        suite=SUITE, out=tmp_path / "runs", baselines=tmp_path / "bl", update_baselines=True, quiet=True
    )
    assert pipeline.run(first, Console(file=io.StringIO())) == 0
    path = tmp_path / "bl" / "e2e_three" / f"{QEMU}.csv"
    stored = pd.read_csv(path)
    stored.loc[stored["entry"] == "b", "flash_bytes"] -= 100
    atomic_write_frame(path, records_frame(stored.to_dict("records")))

    junit, summary = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "summary.json"
    out = io.StringIO()
    options = pipeline.RunOptions(
        suite=SUITE,
        out=tmp_path / "runs",
        baselines=tmp_path / "bl",
        junit=junit,
        summary_json=summary,
        quiet=True,
    )
    assert pipeline.run(options, Console(file=out, width=200)) == EXIT_REGRESSION
    text = out.getvalue()
    assert "regressions" in text and "flash_bytes" in text
    assert "trained" not in text  # --quiet: the summary and errors only
    run_dir = Path(text.strip().splitlines()[-1].split("run folder: ")[1])
    assert (run_dir / "junit.xml").read_text() == junit.read_text()
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(summary.read_text())

    doc = json.loads(summary.read_text())
    assert doc["verdict"] == "regression" and doc["counts"]["records"] == 3
    assert [(r["entry"], r["metric"]) for r in doc["regressions"]] == [("b", "flash_bytes")]
    for key in ("records_csv", "records_parquet", "report_md", "report_html", "junit", "summary"):
        assert Path(doc["paths"][key]).is_file(), key
    assert doc["paths"]["plots"] and all(Path(p).is_file() for p in doc["paths"]["plots"])

    root = ET.parse(junit).getroot()
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == ["b/dense/level 0: footprint"]
    assert int(root.get("tests", 0)) == 3 * (1 + len(GROUPS))


def test_infrastructure_verdict() -> None:
    frame = records_frame([row(status="failed", cycles=None, error="no reply to 'hello' within 5 s")])
    summary = build_summary(
        frame,
        {QEMU: compare(frame, None, Tolerances())},
        exit_code=EXIT_INFRA,
        suite="s",
        run_id="r",
        paths={},
    )
    assert summary["verdict"] == "infrastructure-failure"
    assert summary["failures"][0]["error"].startswith("no reply")
