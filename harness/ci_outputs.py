"""What CI systems read after a run: a JUnit XML file and a JSON summary.

JUnit (``junit.xml``): one ``<testsuite>`` per target, and per record row one ``<testcase>`` per
check group (a row measured on a farm board names the board: ``nested/nested/level 0 on qemu-a: run``):

=========  ==================================================================  =====================
group      passes when                                                         fails when
=========  ==================================================================  =====================
run        the row ran and every device output equals the host reference       status failed/mismatch
cycles     cycles within tolerance of the baseline (or no baseline yet)        cycles regressed
accuracy   accuracy on the device within tolerance                             accuracy regressed
storage    model / weight / index / meta bytes within tolerance                storage grew
footprint  flash / RAM of the image within tolerance                           footprint grew
=========  ==================================================================  =====================

A failure carries the error text (a failed row's error with its last UART lines or fault registers,
or the regressed metrics with baseline, current value, delta and tolerance). Metric groups of a row
that did not run, and cycles measured by another cycle source than the baseline's, are skipped with
the reason; a baseline row the run did not produce is a skipped test case of its own.

Summary (``summary.json``): the verdict and exit code, counts, the regressions, the failures and the
paths of everything the run wrote. `SUMMARY_SCHEMA` versions its shape.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from harness.atomic import atomic_write_text
from harness.baselines import (
    FAILED,
    IMPROVED,
    MISSING,
    NEW,
    REGRESSION,
    SOURCE_CHANGED,
    Comparison,
    ComparisonRow,
    RowKey,
    row_key,
)
from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_OK, EXIT_REGRESSION

SUMMARY_SCHEMA = 1
VERDICTS = {
    EXIT_OK: "ok",
    EXIT_REGRESSION: "regression",
    EXIT_INPUT: "input-error",
    EXIT_INFRA: "infrastructure-failure",
}
GROUPS: dict[str, tuple[str, ...]] = {
    "cycles": ("cycles",),
    "accuracy": ("accuracy_device",),
    "storage": ("model_bytes", "weight_bytes", "index_bytes", "meta_bytes"),
    "footprint": ("flash_bytes", "ram_bytes"),
}
_GROUP_OF = {metric: group for group, metrics in GROUPS.items() for metric in metrics}


def _na(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _json_value(value: Any) -> Any:
    if _na(value):
        return None
    if isinstance(value, str | bool | int | float):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def key_name(key: RowKey) -> str:
    level = "-" if key.level is None else str(key.level)
    board = f" on {key.board}" if key.board else ""
    return f"{key.entry}/{key.format}/level {level}{board}"


def describe(row: ComparisonRow) -> str:
    """``cycles 1,000 → 1,100 (+100, +10.00 %; allowed ±0)``."""
    if row.metric == "status":
        return f"status {row.baseline or '(none)'} → {row.current}"
    text = f"{row.metric} {_fmt(row.baseline)} → {_fmt(row.current)}"
    if row.delta is not None:
        extra = f"{row.delta:+,.6g}"
        if isinstance(row.baseline, int | float) and row.baseline:
            extra += f", {row.delta / row.baseline * 100:+.2f} %"
        if row.allowed is not None:
            extra += f"; allowed ±{_fmt(row.allowed)}"
        text += f" ({extra})"
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.6g}"
    if isinstance(value, int | float):
        return f"{int(value):,}"
    return str(value)


# --- summary.json ------------------------------------------------------------------------------------


def build_summary(
    frame: pd.DataFrame,
    comparisons: Mapping[str, Comparison],
    *,
    exit_code: int,
    suite: str,
    run_id: str,
    paths: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON summary of a finished run (see the module docstring)."""
    rows = [r for c in comparisons.values() for r in c.rows]
    statuses = frame["status"].value_counts().to_dict() if not frame.empty else {}
    counts = {
        "records": len(frame),
        "ok": int(statuses.get("ok", 0)),
        "mismatch": int(statuses.get("mismatch", 0)),
        "failed": int(statuses.get("failed", 0)),
        "regressions": sum(1 for r in rows if r.status == REGRESSION),
        "improved": sum(1 for r in rows if r.status == IMPROVED),
        "new": sum(1 for r in rows if r.status == NEW),
        "missing": sum(1 for r in rows if r.status == MISSING),
        "source_changed": sum(1 for r in rows if r.status == SOURCE_CHANGED),
    }
    targets = {}
    for target in sorted(str(t) for t in frame["target"].dropna().unique()):
        part = frame[frame["target"] == target]
        comparison = comparisons.get(target)
        targets[target] = {
            "cycle_source": ", ".join(sorted(str(s) for s in part["cycle_source"].dropna().unique())),
            "records": len(part),
            "boards": sorted(str(b) for b in part["board"].dropna().unique()),
            "baseline": comparison.verdict if comparison is not None else "not-compared",
        }
    regressions = [
        {
            **r.key._asdict(),
            "metric": r.metric,
            "baseline": _json_value(r.baseline),
            "current": _json_value(r.current),
            "delta": _json_value(r.delta),
            "allowed": _json_value(r.allowed),
            "text": describe(r),
        }
        for r in rows
        if r.status == REGRESSION
    ]
    failures = [
        {
            "target": str(row["target"]),
            "board": _json_value(row["board"]),
            "entry": str(row["entry"]),
            "format": str(row["format"]),
            "level": _json_value(row["level"]),
            "status": str(row["status"]),
            "error": "" if _na(row["error"]) else str(row["error"]),
        }
        for _, row in frame[frame["status"].isin(["failed", "mismatch"])].iterrows()
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "suite": suite,
        "run_id": run_id,
        "verdict": VERDICTS.get(exit_code, "unknown"),
        "exit_code": exit_code,
        "counts": counts,
        "targets": targets,
        "regressions": regressions,
        "failures": failures,
        "paths": {k: (str(v) if isinstance(v, Path) else v) for k, v in paths.items()},
    }


def error_summary(exit_code: int, message: str, *, suite: str | None) -> dict[str, Any]:
    """The summary of a run that stopped before producing records (bad input, no usable target)."""
    return {
        "schema": SUMMARY_SCHEMA,
        "suite": suite,
        "run_id": None,
        "verdict": VERDICTS.get(exit_code, "unknown"),
        "exit_code": exit_code,
        "error": message,
        "counts": {"records": 0},
        "targets": {},
        "regressions": [],
        "failures": [],
        "paths": {},
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    atomic_write_text(Path(path), json.dumps(summary, indent=1, sort_keys=False) + "\n")
    return Path(path)


# --- junit.xml ---------------------------------------------------------------------------------------


class _Case:
    def __init__(self, classname: str, name: str) -> None:
        self.classname = classname
        self.name = name
        self.failure: tuple[str, str, str] | None = None  # (type, message, text)
        self.skipped: str | None = None
        self.output = ""


def _cases_for_target(
    suite: str, target: str, rows: pd.DataFrame, comparison: Comparison | None
) -> list[_Case]:
    classname = f"{suite}.{target}"
    by_key: dict[RowKey, list[ComparisonRow]] = {}
    if comparison is not None:
        for r in comparison.rows:
            by_key.setdefault(r.key, []).append(r)
    cases = []
    for _, row in rows.iterrows():
        key = row_key(row)
        base = key_name(key)
        status = str(row["status"])
        run = _Case(classname, f"{base}: run")
        if status == "failed":
            error = "" if _na(row["error"]) else str(row["error"])
            run.failure = ("failed", error.splitlines()[0] if error else "failed", error)
        elif status == "mismatch":
            error = "" if _na(row["error"]) else str(row["error"])
            run.failure = ("mismatch", "device outputs differ from the host reference", error)
        else:
            run.output = (
                f"cycles={_fmt(_json_value(row['cycles']))} ({row['cycle_source']}), "
                f"accuracy_device={_json_value(row['accuracy_device'])}"
            )
        cases.append(run)
        compared = by_key.get(key, [])
        for group in GROUPS:
            case = _Case(classname, f"{base}: {group}")
            mine = [r for r in compared if _GROUP_OF.get(r.metric) == group]
            regressed = [r for r in mine if r.status == REGRESSION]
            if status == "failed":
                case.skipped = "not measured: the row failed"
            elif regressed:
                lines = [describe(r) for r in regressed]
                case.failure = ("regression", "; ".join(lines), "\n".join(lines))
            elif any(r.status == SOURCE_CHANGED for r in mine):
                case.skipped = "cycle source differs from the baseline's: not compared"
            elif comparison is None or not comparison.has_baseline or any(r.status == NEW for r in mine):
                case.output = "no baseline yet"
            else:
                case.output = "; ".join(describe(r) for r in mine if r.status != FAILED)
            cases.append(case)
    if comparison is not None:
        for r in comparison.rows:
            if r.status == MISSING and r.metric == "row":
                case = _Case(classname, f"{key_name(r.key)}: run")
                case.skipped = "in the baseline but not produced by this run"
                cases.append(case)
    return cases


def junit_xml(
    frame: pd.DataFrame,
    comparisons: Mapping[str, Comparison],
    *,
    suite: str,
    timestamp: str | None = None,
    run_dir: Path | None = None,
) -> str:
    """The JUnit XML document of a run (see the module docstring)."""
    stamp = timestamp or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    root = ET.Element("testsuites", name=f"nestbench {suite}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for target in sorted(str(t) for t in frame["target"].dropna().unique()):
        rows = frame[frame["target"] == target]
        cases = _cases_for_target(suite, target, rows, comparisons.get(target))
        counts = {
            "tests": len(cases),
            "failures": sum(1 for c in cases if c.failure),
            "errors": 0,
            "skipped": sum(1 for c in cases if c.skipped),
        }
        for k, v in counts.items():
            totals[k] += v
        attrs = {
            "name": f"{suite}.{target}",
            "timestamp": stamp,
            "hostname": platform.node() or "localhost",
            "time": "0",
            **{k: str(v) for k, v in counts.items()},
        }
        node = ET.SubElement(root, "testsuite", attrs)
        props = ET.SubElement(node, "properties")
        sources = ", ".join(sorted(str(s) for s in rows["cycle_source"].dropna().unique()))
        boards = ", ".join(sorted(str(b) for b in rows["board"].dropna().unique()))
        for name, value in (
            ("target", target),
            ("cycle_source", sources),
            ("boards", boards),
            ("run_dir", str(run_dir or "")),
        ):
            ET.SubElement(props, "property", name=name, value=value)
        for case in cases:
            element = ET.SubElement(node, "testcase", classname=case.classname, name=case.name, time="0")
            if case.failure:
                kind, message, text = case.failure
                failure = ET.SubElement(element, "failure", type=kind, message=_attr(message))
                failure.text = _text(text)
            elif case.skipped:
                ET.SubElement(element, "skipped", message=_attr(case.skipped))
            if case.output:
                ET.SubElement(element, "system-out").text = _text(case.output)
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _text(text: str) -> str:
    # XML 1.0 cannot hold most control characters (a garbled UART line may contain them)
    return "".join(c if c in "\t\n\r" or ord(c) >= 32 else f"\\x{ord(c):02x}" for c in text)


def _attr(text: str, limit: int = 500) -> str:
    text = _text(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_junit(suite: str | None, message: str, exit_code: int) -> str:
    """A JUnit document for a run that stopped before producing records: one failed test case."""
    name = suite or "suite"
    root = ET.Element("testsuites", name=f"nestbench {name}", tests="1", failures="1", errors="0")
    node = ET.SubElement(
        root, "testsuite", name=f"{name}.harness", tests="1", failures="1", errors="0", skipped="0"
    )
    case = ET.SubElement(node, "testcase", classname=f"{name}.harness", name="harness run", time="0")
    failure = ET.SubElement(
        case, "failure", type=VERDICTS.get(exit_code, "error"), message=_attr(message.splitlines()[0])
    )
    failure.text = _text(message)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, document: str) -> Path:
    atomic_write_text(Path(path), document)
    return Path(path)


def write_outputs(
    run_dir: Path,
    summary: Mapping[str, Any],
    junit: str,
    *,
    extra_summary: Path | None = None,
    extra_junit: Path | None = None,
) -> list[Path]:
    """``summary.json`` and ``junit.xml`` into the run folder, and copies where CI asked for them."""
    written = [write_summary(run_dir / "summary.json", summary), write_junit(run_dir / "junit.xml", junit)]
    if extra_summary is not None:
        written.append(write_summary(extra_summary, summary))
    if extra_junit is not None:
        written.append(write_junit(extra_junit, junit))
    return written


__all__ = [
    "GROUPS",
    "SUMMARY_SCHEMA",
    "VERDICTS",
    "build_summary",
    "describe",
    "error_junit",
    "error_summary",
    "junit_xml",
    "write_junit",
    "write_outputs",
    "write_summary",
]
