"""What a run shows: a summary on the terminal, and report.md + report.html in the run folder.

All are built from the same cell texts: one table per target (entry, format, level, sparsity, cycles,
accuracy host/device, model bytes, flash/RAM, status, baseline verdict, and the board that ran the row
when there is one), then the regressions, then the rows that failed or mismatched with their error.
A run on several targets also gets a side-by-side table (cycles per target and cycle source, never
compared across them). On a terminal the tables are rich tables; otherwise
(CI logs, pipes) plain aligned text without colour or box drawing.

The reports add, per target, the plots of `harness.plots` (accuracy vs latency, storage, cycles per
layer), a storage table (nested model vs standalone ensemble vs dense), the baseline comparison, the
full error of every failed row with its fault registers, and the provenance. Both reports come from
one list of blocks (`report_blocks`), rendered to Markdown or HTML, so they always say the same.

A saved run is rendered again from its folder alone (`load_run` + `write_report`): records,
``run.json`` and the saved baseline comparison ``comparison.json``. `compare_runs` puts several runs
side by side: per key and metric the value in each run and its change against the first run.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import plots
from harness.atomic import atomic_write_text
from harness.baselines import Comparison, ComparisonRow, RowKey, comparisons_from_json, row_key
from harness.errors import InputError
from harness.records import read_records

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


def _board(value: Any) -> str:
    return "" if _na(value) else str(value)


def _has_boards(rows: pd.DataFrame) -> bool:
    return bool(rows["board"].notna().any()) if "board" in rows else False


def _where(target: Any, board: Any) -> str:
    """A target cell: ``qemu_mps2_an500``, or ``nucleo_f767zi (0670FF38…)`` with the board that ran it."""
    board = _board(board)
    return f"{target} ({board})" if board else str(target)


def result_headers(frame: pd.DataFrame, target: str) -> tuple[str, ...]:
    """`_RESULT_HEADERS`, plus ``board`` when a board ran any of the target's rows."""
    rows = frame[frame["target"] == target]
    return (*_RESULT_HEADERS, "board") if _has_boards(rows) else _RESULT_HEADERS


def result_rows(frame: pd.DataFrame, target: str, comparisons: Comparisons) -> list[list[str]]:
    """The cells of one target's results table, rows sorted by entry, format, level (and board)."""
    comparison = _for_target(comparisons, target)
    rows = frame[frame["target"] == target]
    boards = _has_boards(rows)
    rows = rows.sort_values(["entry", "format", "level", "board"], kind="stable")
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
                *([_board(row["board"])] if boards else []),
            ]
        )
    return out


def regression_rows(rows: Sequence[ComparisonRow]) -> list[list[str]]:
    return [
        [
            _where(r.key.target, r.key.board),
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
            _where(r["target"], r["board"]),
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
            console,
            title,
            result_headers(frame, target),
            result_rows(frame, target, comparison),
            status_col=(10, 11),
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
    numeric: Collection[str] = (),
) -> None:
    if not console.is_terminal:
        text = plain_table(title, headers, rows, numeric)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for header in headers:
        right = header in _NUMERIC or header in numeric
        table.add_column(header, justify="right" if right else "left", no_wrap=header != "error")
    for row in rows:
        cells: list[Any] = list(row)
        for col in status_col:
            style = _STATUS_STYLE.get(row[col])
            if style:
                cells[col] = f"[{style}]{row[col]}[/]"
        table.add_row(*[c if i in status_col else escape(c) for i, c in enumerate(cells)])
    console.print(table)


def plain_table(
    title: str, headers: Sequence[str], rows: list[list[str]], numeric: Collection[str] = ()
) -> str:
    """A fixed-width text table: numbers (`_NUMERIC` and `numeric` columns) right-aligned, text
    left-aligned, two spaces apart."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if h in _NUMERIC or h in numeric else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in rows), ""])


# --- blocks: one document, two renderings --------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class TableBlock:
    headers: tuple[str, ...]
    rows: list[list[str]]
    status_cols: tuple[int, ...] = ()
    numeric: tuple[str, ...] = ()  # right-aligned columns besides the usual numeric headers


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report
    alt: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]  # each shown as code


@dataclass(frozen=True)
class Items:
    items: list[tuple[str, str]]  # (name, value shown as code)


Block = Heading | Para | TableBlock | Image | Code | Bullets | Items


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return _md_cell(text).replace("`", "'")


def md_table(headers: Sequence[str], rows: list[list[str]], numeric: Collection[str] = ()) -> str:
    align = ["---:" if h in _NUMERIC or h in numeric else ":---" for h in headers]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_md(blocks: Sequence[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts += ["#" * block.level + " " + block.text.replace("\n", " "), ""]
        elif isinstance(block, Para):
            parts += [block.text, ""]
        elif isinstance(block, TableBlock):
            parts += [md_table(block.headers, block.rows, block.numeric), ""]
        elif isinstance(block, Image):
            parts += [f"![{_md_cell(block.alt)}]({block.src})", ""]
        elif isinstance(block, Code):
            fence = "````" if "```" in block.text else "```"
            parts += [fence, block.text.rstrip("\n"), fence, ""]
        elif isinstance(block, Bullets):
            parts += [*(f"- `{_code(item)}`" for item in block.items), ""]
        else:
            parts += [f"- {_md_cell(k)}: `{_code(_first_line(v, 200))}`" for k, v in block.items]
            parts += [""] if block.items else ["(none recorded)", ""]
    return "\n".join(parts).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em}th,td{padding:3px 9px;border-bottom:1px solid #ddd}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:0.7em;overflow-x:auto;font-size:0.85em}code{font-size:0.9em}
img{max-width:100%;margin:0.3em 0 1em}
.ok{color:#08711b}.improved{color:#05668d}.regression,.mismatch{color:#b00020;font-weight:bold}
.failed{color:#b00020}.source-changed,.missing{color:#a06000}.new{color:#3547a8}
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            out.append(f"<h{level}>{esc(block.text)}</h{level}>")
        elif isinstance(block, Para):
            # the Markdown of a paragraph is only `code` spans: show them as code
            parts = block.text.split("`")
            text = "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))
            out.append(f"<p>{text}</p>")
        elif isinstance(block, TableBlock):
            out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.headers))
            out.append("</tr></thead><tbody>")
            for row in block.rows:
                cells = []
                for i, (header, cell) in enumerate(zip(block.headers, row, strict=True)):
                    classes = []
                    if header in _NUMERIC or header in block.numeric:
                        classes.append("num")
                    if i in block.status_cols and cell in _STATUS_STYLE:
                        classes.append(cell)
                    attr = f' class="{" ".join(classes)}"' if classes else ""
                    cells.append(f"<td{attr}>{esc(cell)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, Image):
            out.append(f'<p><img src="{esc(block.src)}" alt="{esc(block.alt)}"></p>')
        elif isinstance(block, Code):
            out.append(f"<pre>{esc(block.text)}</pre>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li><code>{esc(i)}</code></li>" for i in block.items) + "</ul>")
        else:
            if not block.items:
                out.append("<p>(none recorded)</p>")
                continue
            out.append("<ul>")
            out += [f"<li>{esc(k)}: <code>{esc(_first_line(v, 200))}</code></li>" for k, v in block.items]
            out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- report content ----------------------------------------------------------------------------------


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


_FAULT_RE = re.compile(r"firmware fault:((?:\s+\w+=0x[0-9a-fA-F]+)+)")
_STORAGE_HEADERS = (
    "entry",
    "trainer",
    "format",
    "models",
    "weight B",
    "index B",
    "meta B",
    "total B",
    "vs dense",
)
_NUMERIC |= {"models", "weight B", "index B", "meta B", "total B", "vs dense", "total"}


def fault_registers(error: str) -> dict[str, str]:
    """Registers of a ``firmware fault: pc=0x… lr=0x…`` error text (empty when it holds none)."""
    found = _FAULT_RE.search(error or "")
    if not found:
        return {}
    return dict(word.split("=", 1) for word in found.group(1).split())


def storage_rows(frame: pd.DataFrame, target: str) -> list[list[str]]:
    """Per entry the flash bytes to serve all its levels, and the ratio to the dense entry's."""
    bars = plots.storage_bars(frame, target)
    dense = next((b.total for b in bars if b.format == "dense" and b.models == 1), None)
    return [
        [
            b.entry,
            b.trainer,
            b.format,
            str(b.models),
            fmt_int(b.weight_bytes),
            fmt_int(b.index_bytes),
            fmt_int(b.meta_bytes),
            fmt_int(b.total),
            f"{b.total / dense:.2f}×" if dense else "-",
        ]
        for b in bars
    ]


def _rel(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def _target_line(target: str, rows: pd.DataFrame, provenance: Mapping[str, Any]) -> str:
    info = (
        provenance.get("targets", {}).get(target, {})
        if isinstance(provenance.get("targets"), Mapping)
        else {}
    )
    parts = [f"Cycle source: `{_cycle_source(rows)}`."]
    if info:
        clock = info.get("clock_hz")
        details = [f"board `{info.get('board', '?')}`", f"backend `{info.get('backend', '?')}`"]
        if clock:
            details.append(f"clock {int(clock) / 1e6:g} MHz")
        board_id = info.get("board_id")
        farm_boards = info.get("boards") or []
        if farm_boards:
            details.append("boards " + ", ".join(f"`{b}`" for b in farm_boards))
        elif board_id:
            details.append(f"board ID `{board_id}`")
        elif info.get("backend") == "board":
            details.append("no board reached")
        else:
            details.append("emulator")
        retries = info.get("uart_retries")
        if retries:
            details.append(f"{retries} UART command(s) resent (corrupt lines, or a boot banner during hello)")
        parts.append(", ".join(details) + ".")
    return " ".join(parts)


def report_blocks(
    frame: pd.DataFrame,
    comparison: Comparisons,
    provenance: Mapping[str, Any],
    plot_files: Mapping[str, plots.TargetPlots] | None = None,
    folder: Path | None = None,
) -> list[Block]:
    """The report of one run as blocks; `plot_files` (from `plots.run_plots`) are linked relative to
    `folder`."""
    suites = sorted(str(s) for s in frame["suite"].dropna().unique()) if not frame.empty else []
    suite = ", ".join(suites) or str(provenance.get("suite_name", provenance.get("suite", "?")))
    blocks: list[Block] = [Heading(1, f"nestbench report: {suite}")]
    run_id = provenance.get("run_id")
    meta = []
    if run_id:
        meta.append(f"Run `{run_id}`.")
    status = provenance.get("status")
    if status and status != "complete":
        meta.append(f"Status `{status}`: the run did not finish; `harness run SUITE --resume` completes it.")
    git = provenance.get("git")
    if isinstance(git, Mapping) and git.get("sha"):
        meta.append(
            f"Code `{str(git['sha'])[:12]}`" + (" with uncommitted changes." if git.get("dirty") else ".")
        )
    if meta:
        blocks.append(Para(" ".join(meta)))
    blocks.append(Para(verdict_line(comparison)))
    if len(_targets(frame)) > 1:
        headers, rows_ = side_by_side(frame)
        blocks += [
            Heading(2, "Side by side"),
            Para(
                "Every target's figures beside each other. Cycle counts are per target and cycle source "
                "(qemu-icount: retired instructions; renode-dwt: Renode's DWT; dwt: core cycles of a "
                "real board): compare down a column, never across. With several boards of a target, "
                "the median over its boards."
            ),
            TableBlock(headers, rows_, numeric=headers[4:]),
        ]
    folder = folder or Path(".")
    for target in _targets(frame):
        rows = frame[frame["target"] == target]
        blocks += [Heading(2, target), Para(_target_line(target, rows, provenance))]
        blocks.append(
            TableBlock(
                result_headers(frame, target), result_rows(frame, target, comparison), status_cols=(10, 11)
            )
        )
        files = (plot_files or {}).get(target)
        if files:
            for source, path in files.pareto.items():
                blocks.append(Image(_rel(path, folder), f"{target}: accuracy vs latency ({source})"))
        storage = storage_rows(frame, target)
        if storage:
            blocks += [
                Heading(3, "Storage"),
                Para(
                    "Bytes in flash to serve every level of an entry: a nested model is one model, a "
                    "standalone ensemble the sum of its models."
                ),
                TableBlock(_STORAGE_HEADERS, storage),
            ]
            if files and files.storage:
                blocks.append(Image(_rel(files.storage, folder), f"{target}: storage"))
        if files and files.layers:
            blocks.append(Heading(3, "Cycles per layer"))
            for source, path in files.layers.items():
                blocks.append(Image(_rel(path, folder), f"{target}: cycles per layer ({source})"))
    if frame.empty:
        blocks.append(Para("No records."))
    if any(c.has_baseline for c in _all(comparison)):
        blocks.append(Heading(2, "Baseline comparison"))
        for title, status_ in (
            ("Regressions", "regression"),
            ("Improvements", "improved"),
            ("Cycle source changed (not compared)", "source-changed"),
        ):
            selected = _rows_with(comparison, status_)
            if selected:
                blocks += [Heading(3, title), TableBlock(_REGRESSION_HEADERS, regression_rows(selected))]
        for label, status_ in (
            ("New rows (no baseline)", "new"),
            ("Missing rows (in baseline, not run)", "missing"),
        ):
            keys = sorted({str(r.key) for r in _rows_with(comparison, status_)})
            if keys:
                blocks += [Heading(3, label), Bullets(keys)]
        if not _rows_with(comparison, "regression"):
            blocks.append(Para("No metric is worse than its baseline beyond its tolerance."))
    problems = problem_rows(frame)
    if problems:
        blocks += [Heading(2, "Failed or mismatched")]
        blocks.append(TableBlock(("target", "entry", "format", "level", "status", "error"), problems, (4,)))
        blocks += _failure_details(frame)
    blocks += [Heading(2, "Provenance"), Items(flatten(provenance))]
    return blocks


def _failure_details(frame: pd.DataFrame) -> list[Block]:
    """Per failed/mismatched model: its fault registers (a HardFault) and the full error text with the
    last UART lines. Rows of one model fail together with one error: shown once."""
    blocks: list[Block] = []
    bad = frame[frame["status"].isin(["failed", "mismatch"])]
    seen: set[tuple[str, str, str, str]] = set()
    for _, row in bad.iterrows():
        error = "" if _na(row["error"]) else str(row["error"])
        once = (str(row["target"]), _board(row["board"]), str(row["entry"]), error)
        if once in seen:
            continue
        seen.add(once)
        same_board = bad["board"].isna() if _na(row["board"]) else bad["board"] == row["board"]
        levels = bad[
            (bad["target"] == row["target"])
            & same_board.fillna(False)
            & (bad["entry"] == row["entry"])
            & (bad["error"] == row["error"])
        ]["level"]
        shown = ", ".join(fmt_level(v) for v in levels) if error else fmt_level(row["level"])
        where = _where(row["target"], row["board"])
        blocks.append(
            Heading(3, f"{where}: {row['entry']} ({row['format']}), level {shown}: {row['status']}")
        )
        registers = fault_registers(error)
        if registers:
            blocks += [
                Para("HardFault registers:"),
                TableBlock(("register", "value"), [[k, v] for k, v in registers.items()]),
            ]
        blocks.append(Code(error or "(no error text)"))
    return blocks


def render_report_md(
    frame: pd.DataFrame,
    comparison: Comparisons,
    provenance: Mapping[str, Any],
    plot_files: Mapping[str, plots.TargetPlots] | None = None,
    folder: Path | None = None,
) -> str:
    return render_md(report_blocks(frame, comparison, provenance, plot_files, folder))


def write_report_md(
    run_dir: Path, frame: pd.DataFrame, comparison: Comparisons, provenance: Mapping[str, Any]
) -> Path:
    """Write ``report.md`` (without plots) into `run_dir` (atomically) and return its path."""
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, render_report_md(frame, comparison, provenance))
    return path


@dataclass
class ReportFiles:
    md: Path
    html: Path
    plots: dict[str, plots.TargetPlots] = field(default_factory=dict)

    def plot_paths(self) -> list[Path]:
        out: list[Path] = []
        for p in self.plots.values():
            out += list(p.pareto.values()) + list(p.layers.values()) + ([p.storage] if p.storage else [])
        return out


def write_report(
    run_dir: Path, frame: pd.DataFrame, comparison: Comparisons, provenance: Mapping[str, Any]
) -> ReportFiles:
    """The plots, ``report.md`` and ``report.html`` of a run, into its folder (each file atomically)."""
    run_dir = Path(run_dir)
    plot_files = plots.run_plots(one_row_per_key(frame), run_dir)
    blocks = report_blocks(frame, comparison, provenance, plot_files, run_dir)
    md, page = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md, render_md(blocks))
    title = blocks[0].text if isinstance(blocks[0], Heading) else "nestbench report"
    atomic_write_text(page, render_html(blocks, title))
    return ReportFiles(md=md, html=page, plots=plot_files)


# --- several boards, several targets ------------------------------------------------------------------


def one_row_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with one row per (target, entry, format, level): where several boards ran a key,
    the measured row with the median cycles (plots draw one point per key)."""
    if frame.empty or not frame.duplicated(["target", "entry", "format", "level"]).any():
        return frame
    chosen = []
    for _, group in frame.groupby(["target", "entry", "format", "level"], sort=False, dropna=False):
        measured = group[group["cycles"].notna()].sort_values(["cycles", "board"], kind="stable")
        pool = measured if not measured.empty else group
        chosen.append(pool.iloc[[(len(pool) - 1) // 2]])
    return pd.concat(chosen).sort_index(kind="stable")


def side_by_side(frame: pd.DataFrame) -> tuple[tuple[str, ...], list[list[str]]]:
    """Per entry, format and level: each target's cycles (headed with its cycle source) and device
    accuracy, the median over the target's boards, or its status when it did not run."""
    names = _targets(frame)
    sources = {t: _cycle_source(frame[frame["target"] == t]) for t in names}
    headers: tuple[str, ...] = ("entry", "format", "level", "sparsity")
    for t in names:
        headers += (f"{t} cycles [{sources[t]}]", f"{t} acc")
    keys = frame[["entry", "format", "level"]].drop_duplicates()
    order = {e: i for i, e in enumerate(dict.fromkeys(frame["entry"].tolist()))}
    keys = keys.sort_values(["level"], kind="stable").sort_values(
        ["entry"], key=lambda col: col.map(order), kind="stable"
    )
    out = []
    for _, key in keys.iterrows():
        part = frame[(frame["entry"] == key["entry"]) & (frame["format"] == key["format"])]
        part = part[part["level"] == key["level"]] if not _na(key["level"]) else part[part["level"].isna()]
        cells = [
            str(key["entry"]),
            str(key["format"]),
            fmt_level(key["level"]),
            fmt_percent(part["sparsity"].iloc[0], 1),
        ]
        for t in names:
            rows = part[part["target"] == t]
            ran = rows[rows["status"].isin(["ok", "mismatch"]) & rows["cycles"].notna()]
            if ran.empty:
                status = ", ".join(sorted(set(rows["status"].astype(str)))) or "-"
                cells += [status, "-"]
                continue
            cycles = fmt_int(int(ran["cycles"].astype("int64").median()))
            accuracy = fmt_percent(float(ran["accuracy_device"].astype("float64").median()))
            if len(ran) > 1:
                cycles += f" ({len(ran)} boards)"
            cells += [cycles, accuracy]
        out.append(cells)
    return headers, out


# --- saved runs --------------------------------------------------------------------------------------


@dataclass
class SavedRun:
    folder: Path
    frame: pd.DataFrame
    info: dict[str, Any]  # run.json
    comparisons: dict[str, Comparison] | None  # None: the run saved no comparison

    @property
    def label(self) -> str:
        return str(self.info.get("run_id") or self.folder.name)


def load_run(folder: Path) -> SavedRun:
    """A run folder's records, run.json and saved baseline comparison. InputError (exit 2) when the
    folder is missing or any of these is unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such run folder", file=folder, field="RUN")
    if not (folder / "records.parquet").is_file() and not (folder / "records.csv").is_file():
        raise InputError(
            "not a run folder: it has no records.csv or records.parquet", file=folder, field="RUN"
        )
    info = _read_json(folder / "run.json", required=True)
    if not isinstance(info, dict):
        raise InputError("expected a JSON object", file=folder / "run.json", line=1, field="(top level)")
    frame = read_records(folder)
    saved = _read_json(folder / "comparison.json", required=False)
    comparisons = None
    if saved is not None:
        try:
            if not isinstance(saved, Mapping):
                raise ValueError("expected a JSON object")
            comparisons = comparisons_from_json(saved)
        except ValueError as exc:
            raise InputError(str(exc), file=folder / "comparison.json", line=1, field="(top level)") from None
    return SavedRun(folder=folder, frame=frame, info=info, comparisons=comparisons)


def _read_json(path: Path, *, required: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return None
        raise InputError("missing: a run folder keeps its provenance in run.json", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", file=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON: {exc.msg}", file=path, line=exc.lineno, field=f"column {exc.colno}"
        ) from None


def rerender(run: SavedRun) -> ReportFiles:
    """Write a saved run's plots and reports again, from its folder alone."""
    return write_report(run.folder, run.frame, run.comparisons, run.info)


# --- several runs side by side -----------------------------------------------------------------------

COMPARE_METRICS = (
    ("cycles", "cycles"),
    ("accuracy_device", "acc device"),
    ("model_bytes", "model B"),
    ("flash_bytes", "flash B"),
    ("ram_bytes", "RAM B"),
)


def _key_of(row: pd.Series) -> tuple[str, str, str, int]:
    return (
        str(row["target"]),
        str(row["entry"]),
        str(row["format"]),
        -1 if _na(row["level"]) else int(row["level"]),
    )


def _value_text(metric: str, value: Any) -> str:
    if _na(value):
        return "-"
    return fmt_percent(value) if metric.startswith("accuracy") else fmt_int(value)


def _change(metric: str, ref: Any, value: Any) -> str:
    if _na(ref) or _na(value):
        return "-"
    if metric.startswith("accuracy"):
        return f"{(float(value) - float(ref)) * 100:+.2f} pt"
    delta = int(value) - int(ref)
    pct = f" ({delta / int(ref) * 100:+.2f} %)" if int(ref) else ""
    return f"{delta:+,}{pct}"


def compare_rows(runs: Sequence[SavedRun], target: str) -> tuple[tuple[str, ...], list[list[str]]]:
    """Side-by-side table for one target: per key and metric the value in each run and the change of
    each later run against the first. Cycles of rows whose cycle source differs from the first run's
    are not compared."""
    labels = [r.label for r in runs]
    headers = (
        "entry",
        "format",
        "level",
        "metric",
        labels[0],
        *[h for lab in labels[1:] for h in (lab, "Δ " + lab)],
    )
    indexed = []
    for run in runs:
        part = run.frame[run.frame["target"] == target]
        indexed.append({_key_of(row): row for _, row in part.iterrows()})
    keys = sorted({k for index in indexed for k in index})
    out = []
    for key in keys:
        rows = [index.get(key) for index in indexed]
        for metric, name in COMPARE_METRICS:
            values = [None if r is None else r[metric] for r in rows]
            if all(_na(v) for v in values):
                continue
            ref_row = rows[0]
            cells = [key[1], key[2], "-" if key[3] < 0 else str(key[3]), name, _value_text(metric, values[0])]
            for row, value in zip(rows[1:], values[1:], strict=True):
                change = _change(metric, values[0], value)
                if (
                    metric == "cycles"
                    and ref_row is not None
                    and row is not None
                    and str(row["cycle_source"]) != str(ref_row["cycle_source"])
                ):
                    change = "other cycle source"
                cells += [_value_text(metric, value), change]
            out.append(cells)
    return headers, out


def compare_blocks(
    runs: Sequence[SavedRun], plot_files: Mapping[str, Sequence[Path]], folder: Path
) -> list[Block]:
    blocks: list[Block] = [Heading(1, "nestbench comparison: " + " vs ".join(r.label for r in runs))]
    listing = [
        (
            r.label,
            f"{r.folder} (suite {_suite_of(r)}, status {r.info.get('status', '?')})",
        )
        for r in runs
    ]
    blocks += [Para("The first run is the reference; Δ is each later run minus it."), Items(listing)]
    targets = sorted({t for r in runs for t in _targets(r.frame)})
    for target in targets:
        headers, rows = compare_rows(runs, target)
        blocks += [Heading(2, target), TableBlock(headers, rows, numeric=headers[4:])]
        for path in plot_files.get(target, []):
            blocks.append(Image(_rel(path, folder), f"{target}: accuracy vs latency, all runs"))
    return blocks


def _suite_of(run: SavedRun) -> str:
    suites = sorted(str(s) for s in run.frame["suite"].dropna().unique())
    return ", ".join(suites) or "?"


@dataclass
class CompareFiles:
    md: Path
    html: Path
    plots: list[Path]


def compare_runs(runs: Sequence[SavedRun], folder: Path) -> CompareFiles:
    """compare.md, compare.html and one combined accuracy-vs-latency plot per target (and cycle source)
    into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = {r.label: r.frame for r in runs}
    plot_files: dict[str, list[Path]] = {}
    targets = sorted({t for r in runs for t in _targets(r.frame)})
    for target in targets:
        sources = sorted({s for r in runs for s in plots.cycle_sources(r.frame, target)})
        for source in sources:
            suffix = plots.safe_name(target) + ("" if len(sources) == 1 else f"_{plots.safe_name(source)}")
            path = plots.compare_pareto_plot(frames, target, source, folder / f"compare_pareto_{suffix}.png")
            if path:
                plot_files.setdefault(target, []).append(path)
    blocks = compare_blocks(runs, plot_files, folder)
    md, page = folder / "compare.md", folder / "compare.html"
    atomic_write_text(md, render_md(blocks))
    atomic_write_text(page, render_html(blocks, "nestbench comparison"))
    return CompareFiles(md=md, html=page, plots=[p for paths in plot_files.values() for p in paths])


def print_comparison(console: Console, runs: Sequence[SavedRun]) -> None:
    targets = sorted({t for r in runs for t in _targets(r.frame)})
    for target in targets:
        headers, rows = compare_rows(runs, target)
        title = f"{target}: {' vs '.join(r.label for r in runs)}"
        _print_table(console, title, headers, rows, numeric=headers[4:])


def default_compare_folder(root: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / stamp
