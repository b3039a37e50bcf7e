"""What a run shows: a summary on the terminal and report.md in the run folder.

Both are built from the same cell texts: one table per target (entry, format, level, sparsity, cycles,
accuracy host/device, model bytes, flash/RAM, status, baseline verdict), then the regressions, then the
rows that failed or mismatched with their error. On a terminal the tables are rich tables; otherwise
(CI logs, pipes) plain aligned text without colour or box drawing. Plots come in a later issue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.atomic import atomic_write_text
from harness.baselines import Comparison, ComparisonRow, RowKey, row_key

_RESULT_HEADERS = (
    "entry",
    "format",
    "level",
    "sparsity",
    "cycles",
    "acc host",
    "acc device",
    "model B",
    "flash B",
    "RAM B",
    "status",
    "baseline",
)
_NUMERIC = {
    "level",
    "sparsity",
    "cycles",
    "acc host",
    "acc device",
    "model B",
    "flash B",
    "RAM B",
    "current",
    "delta",
    "allowed",
    "baseline value",
}
_REGRESSION_HEADERS = (
    "target",
    "entry",
    "format",
    "level",
    "metric",
    "baseline value",
    "current",
    "delta",
    "allowed",
)
_STATUS_STYLE = {
    "ok": "green",
    "improved": "cyan",
    "regression": "bold red",
    "mismatch": "bold red",
    "failed": "red",
    "source-changed": "yellow",
    "missing": "yellow",
    "new": "blue",
}


# --- cell texts --------------------------------------------------------------------------------------


def _na(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def fmt_int(value: Any) -> str:
    return "-" if _na(value) else f"{int(value):,}"


def fmt_level(value: Any) -> str:
    return "-" if _na(value) else f"{float(value):g}"


def fmt_percent(value: Any, digits: int = 2) -> str:
    return "-" if _na(value) else f"{float(value) * 100:.{digits}f} %"


def fmt_value(value: Any, metric: str = "") -> str:
    if _na(value):
        return "-"
    if isinstance(value, str):
        return value
    if metric.startswith("accuracy"):
        return fmt_percent(value)
    number = float(value)
    if number.is_integer() and abs(number) < 2**53:
        return f"{int(number):,}"
    return f"{number:.4g}"


def fmt_delta(row: ComparisonRow) -> str:
    if row.delta is None or (isinstance(row.delta, float) and math.isnan(row.delta)):
        return "-"
    if row.metric.startswith("accuracy"):
        return f"{row.delta * 100:+.2f} pt"
    text = f"{row.delta:+,.0f}" if float(row.delta).is_integer() else f"{row.delta:+.4g}"
    if isinstance(row.baseline, int | float) and row.baseline:
        text += f" ({row.delta / row.baseline * 100:+.2f} %)"
    return text


def _first_line(text: Any, limit: int = 120) -> str:
    if _na(text):
        return ""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _targets(frame: pd.DataFrame) -> list[str]:
    return sorted(str(t) for t in frame["target"].dropna().unique())


def _cycle_source(rows: pd.DataFrame) -> str:
    sources = sorted(str(s) for s in rows["cycle_source"].dropna().unique())
    return ", ".join(sources) if sources else "-"


# One comparison for every target, or one per target name (as the pipeline keeps them), or none.
Comparisons = Comparison | Mapping[str, Comparison] | None


def _for_target(comparisons: Comparisons, target: str) -> Comparison | None:
    if isinstance(comparisons, Mapping):
        return comparisons.get(target)
    return comparisons


def _all(comparisons: Comparisons) -> list[Comparison]:
    if comparisons is None:
        return []
    if isinstance(comparisons, Mapping):
        return list(comparisons.values())
    return [comparisons]


def _rows_with(comparisons: Comparisons, status: str) -> list[ComparisonRow]:
    return [r for c in _all(comparisons) for r in c.rows if r.status == status]


def _baseline_cell(comparison: Comparison | None, key: RowKey) -> str:
    if comparison is None:
        return "-"
    if not comparison.has_baseline:
        return "new"
    return comparison.row_status(key)


def result_rows(frame: pd.DataFrame, target: str, comparisons: Comparisons) -> list[list[str]]:
    """The cells of one target's results table, rows sorted by entry, format and level."""
    comparison = _for_target(comparisons, target)
    rows = frame[frame["target"] == target].sort_values(["entry", "format", "level"], kind="stable")
    out = []
    for _, row in rows.iterrows():
        out.append(
            [
                str(row["entry"]),
                str(row["format"]),
                fmt_level(row["level"]),
                fmt_percent(row["sparsity"], 1),
                fmt_int(row["cycles"]),
                fmt_percent(row["accuracy_host"]),
                fmt_percent(row["accuracy_device"]),
                fmt_int(row["model_bytes"]),
                fmt_int(row["flash_bytes"]),
                fmt_int(row["ram_bytes"]),
                str(row["status"]),
                _baseline_cell(comparison, row_key(row)),
            ]
        )
    return out


def regression_rows(rows: Sequence[ComparisonRow]) -> list[list[str]]:
    return [
        [
            r.key.target,
            r.key.entry,
            r.key.format,
            fmt_level(r.key.level),
            r.metric,
            fmt_value(r.baseline, r.metric),
            fmt_value(r.current, r.metric),
            fmt_delta(r),
            fmt_value(r.allowed, r.metric),
        ]
        for r in rows
    ]


def problem_rows(frame: pd.DataFrame) -> list[list[str]]:
    """Rows that failed or mismatched, with the first line of their error."""
    bad = frame[frame["status"].isin(["failed", "mismatch"])]
    return [
        [
            str(r["target"]),
            str(r["entry"]),
            str(r["format"]),
            fmt_level(r["level"]),
            str(r["status"]),
            _first_line(r["error"]),
        ]
        for _, r in bad.iterrows()
    ]


def verdict_line(comparisons: Comparisons) -> str:
    """``baseline: regression (1 regression, 2 improved)``, or why nothing was compared."""
    all_ = _all(comparisons)
    if not all_:
        return "baseline: not compared"
    if not any(c.has_baseline for c in all_):
        return "baseline: none stored yet (store one with --update-baselines)"
    rows = [r for c in all_ for r in c.rows]
    statuses = ("regression", "improved", "new", "missing", "source-changed", "failed")
    counts = ", ".join(f"{n} {s}" for s in statuses if (n := sum(1 for r in rows if r.status == s)))
    verdict = "regression" if any(c.regressions for c in all_) else "ok"
    line = f"baseline: {verdict}" + (f" ({counts})" if counts else "")
    if isinstance(comparisons, Mapping):
        without = sorted(t for t, c in comparisons.items() if not c.has_baseline)
        if without:
            line += f"; no baseline yet for {', '.join(without)}"
    return line


# --- terminal ----------------------------------------------------------------------------------------


def print_summary(console: Console, frame: pd.DataFrame, comparison: Comparisons) -> None:
    """Print one results table per target, the regressions, the failures and the verdict.
    `comparison` is one `Comparison`, a mapping target -> `Comparison`, or None."""
    if frame.empty:
        console.print("no records", markup=False, highlight=False)
        return
    for target in _targets(frame):
        rows = frame[frame["target"] == target]
        title = f"{target} (cycles: {_cycle_source(rows)})"
        _print_table(
            console, title, _RESULT_HEADERS, result_rows(frame, target, comparison), status_col=(10, 11)
        )
    regressions = _rows_with(comparison, "regression")
    if regressions:
        _print_table(console, "regressions", _REGRESSION_HEADERS, regression_rows(regressions))
    problems = problem_rows(frame)
    if problems:
        _print_table(
            console,
            "failed or mismatched",
            ("target", "entry", "format", "level", "status", "error"),
            problems,
            status_col=(4,),
        )
    line = verdict_line(comparison)
    if console.is_terminal:
        style = "bold red" if regressions else "bold"
        console.print(line, style=style, markup=False, highlight=False)
    else:
        console.print(line, markup=False, highlight=False)


def _print_table(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: list[list[str]],
    status_col: tuple[int, ...] = (),
) -> None:
    if not console.is_terminal:
        console.print(plain_table(title, headers, rows), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in headers:
        table.add_column(header, justify="right" if header in _NUMERIC else "left", no_wrap=header != "error")
    for row in rows:
        cells: list[Any] = list(row)
        for col in status_col:
            style = _STATUS_STYLE.get(row[col])
            if style:
                cells[col] = f"[{style}]{row[col]}[/]"
        table.add_row(*[c if i in status_col else escape(c) for i, c in enumerate(cells)])
    console.print(table)


def plain_table(title: str, headers: Sequence[str], rows: list[list[str]]) -> str:
    """A fixed-width text table: numbers right-aligned, text left-aligned, two spaces apart."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if h in _NUMERIC else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in rows), ""])


# --- report.md ---------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return _md_cell(text).replace("`", "'")


def md_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    align = ["---:" if h in _NUMERIC else ":---" for h in headers]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"tools": {"gcc": "12.2"}}`` -> ``[("tools.gcc", "12.2")]``; lists joined with commas."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += flatten(value, f"{name}.")
        elif isinstance(value, list | tuple):
            out.append((name, ", ".join(str(v) for v in value)))
        else:
            out.append((name, "-" if value is None else str(value)))
    return out


def render_report_md(frame: pd.DataFrame, comparison: Comparisons, provenance: Mapping[str, Any]) -> str:
    suites = sorted(str(s) for s in frame["suite"].dropna().unique()) if not frame.empty else []
    suite = ", ".join(suites) or str(provenance.get("suite", "?"))
    parts = [f"# nestbench report: {suite}", ""]
    run_id = provenance.get("run_id")
    if run_id:
        parts += [f"Run `{run_id}`.", ""]
    parts += [verdict_line(comparison), ""]
    for target in _targets(frame):
        rows = frame[frame["target"] == target]
        parts += [f"## {target}", "", f"Cycle source: {_cycle_source(rows)}.", ""]
        parts += [md_table(_RESULT_HEADERS, result_rows(frame, target, comparison)), ""]
    if frame.empty:
        parts += ["No records.", ""]
    if any(c.has_baseline for c in _all(comparison)):
        parts += ["## Baseline comparison", ""]
        for title, status in (
            ("Regressions", "regression"),
            ("Improvements", "improved"),
            ("Cycle source changed (not compared)", "source-changed"),
        ):
            selected = _rows_with(comparison, status)
            if selected:
                parts += [f"### {title}", "", md_table(_REGRESSION_HEADERS, regression_rows(selected)), ""]
        for label, status in (
            ("New rows (no baseline)", "new"),
            ("Missing rows (in baseline, not run)", "missing"),
        ):
            keys = sorted({str(r.key) for r in _rows_with(comparison, status)})
            if keys:
                parts += [f"### {label}", "", *(f"- `{k}`" for k in keys), ""]
    problems = problem_rows(frame)
    if problems:
        parts += ["## Failed or mismatched", ""]
        parts += [md_table(("target", "entry", "format", "level", "status", "error"), problems), ""]
    parts += ["## Provenance", ""]
    items = flatten(provenance)
    parts += [f"- {_md_cell(k)}: `{_code(_first_line(v, 200))}`" for k, v in items] or ["(none recorded)"]
    return "\n".join(parts).rstrip() + "\n"


def write_report_md(
    run_dir: Path, frame: pd.DataFrame, comparison: Comparisons, provenance: Mapping[str, Any]
) -> Path:
    """Write ``report.md`` into `run_dir` (atomically) and return its path."""
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, render_report_md(frame, comparison, provenance))
    return path
