"""Stored baselines and the regression gate.

Baselines are records (same columns as a run's records.csv) kept in git at
``results/baselines/<suite>/<target>.csv``; only `update_baselines` (``--update-baselines``) writes
them. `compare` matches a run's rows with baseline rows by (target, entry, format, level) and judges
each metric (a farm that repeats every entry on each board has one row per board: each is judged
against its target's baseline row, which says nothing of boards):

==================  ====================  ============================================
metric              worse when            tolerance (suite `tolerances:`)
==================  ====================  ============================================
cycles              higher                `cycles` for emulator sources (qemu-icount,
                                          renode-dwt), `board_cycles` for `dwt`
accuracy_device     lower                 `accuracy`
model/weight/index/
meta_bytes          higher                `storage`
flash/ram_bytes     higher                `footprint`
status              current is mismatch   none: a device/host mismatch always regresses
==================  ====================  ============================================

A metric regresses when it is worse than its baseline by more than max(abs, rel × |baseline|);
exactly at the tolerance is fine. Better by more than that is "improved". Cycles measured by a
different cycle source than the baseline's are never compared ("source-changed"). A row with no
baseline is "new"; a baseline row the run did not produce is "missing"; a row that failed to run is
"failed". None of these three is a regression: infrastructure failures have their own exit code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from harness.atomic import atomic_write_frame
from harness.errors import InputError
from harness.records import (
    CORE_COLUMNS,
    EMULATOR_SOURCES,
    RECORD_COLUMNS,
    SOURCE_LINES,
    conform,
    read_records_csv,
)
from harness.suite import Tolerance, Tolerances

# comparison statuses, worst first (a record row shows its worst)
REGRESSION = "regression"
FAILED = "failed"
SOURCE_CHANGED = "source-changed"
MISSING = "missing"
NEW = "new"
IMPROVED = "improved"
OK = "ok"
_SEVERITY = {REGRESSION: 0, FAILED: 1, SOURCE_CHANGED: 2, MISSING: 3, NEW: 4, IMPROVED: 5, OK: 6}

# metric -> (tolerance family, +1 when higher is worse / -1 when lower is worse); cycles pick theirs
METRICS: dict[str, tuple[str, int]] = {
    "cycles": ("cycles", +1),
    "accuracy_device": ("accuracy", -1),
    "model_bytes": ("storage", +1),
    "weight_bytes": ("storage", +1),
    "index_bytes": ("storage", +1),
    "meta_bytes": ("storage", +1),
    "flash_bytes": ("footprint", +1),
    "ram_bytes": ("footprint", +1),
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_KEY_COLUMNS = ("target", "entry", "format", "level")


class RowKey(NamedTuple):
    target: str
    entry: str
    format: str
    level: int | None
    board: str | None = None  # set on a farm's records; baselines match without it

    def __str__(self) -> str:
        level = "-" if self.level is None else str(self.level)
        board = f"@{self.board}" if self.board else ""
        return f"{self.target}{board}:{self.entry}/{self.format}/{level}"

    def of_target(self) -> RowKey:
        """The key without its board: what a baseline row is keyed by."""
        return self._replace(board=None)


def row_key(row: pd.Series | dict[str, Any]) -> RowKey:
    """The comparison key of a record row."""
    level = row["level"]
    board = row.get("board")
    return RowKey(
        target=str(row["target"]),
        entry=str(row["entry"]),
        format=str(row["format"]),
        level=None if _missing(level) else int(level),
        board=None if _missing(board) or not str(board) else str(board),
    )


@dataclass(frozen=True)
class ComparisonRow:
    key: RowKey
    metric: str  # a METRICS name, "status", or "row" for new/missing rows
    baseline: Any  # int, float, str or None
    current: Any
    delta: float | None  # current - baseline, when both are numbers
    allowed: float | None  # the tolerance applied, when compared
    status: str  # ok | improved | regression | new | missing | source-changed | failed


@dataclass(frozen=True)
class Comparison:
    rows: list[ComparisonRow]
    has_baseline: bool

    @property
    def regressions(self) -> list[ComparisonRow]:
        return [r for r in self.rows if r.status == REGRESSION]

    @property
    def improvements(self) -> list[ComparisonRow]:
        return [r for r in self.rows if r.status == IMPROVED]

    @property
    def verdict(self) -> str:
        """``regression`` if any metric regressed, else ``no-baseline`` when there was none, else
        ``ok``."""
        if self.regressions:
            return REGRESSION
        return OK if self.has_baseline else "no-baseline"

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def row_status(self, key: RowKey) -> str:
        """The worst status among a record row's metrics (``ok`` when nothing was compared)."""
        statuses = [r.status for r in self.rows if r.key == key]
        return min(statuses, key=_SEVERITY.__getitem__) if statuses else OK

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    **r.key._asdict(),
                    "metric": r.metric,
                    "baseline": r.baseline,
                    "current": r.current,
                    "delta": r.delta,
                    "allowed": r.allowed,
                    "status": r.status,
                }
                for r in self.rows
            ],
            columns=[*_KEY_COLUMNS, "metric", "baseline", "current", "delta", "allowed", "status"],
        )


# --- comparing ---------------------------------------------------------------------------------------


def compare(current: pd.DataFrame, baseline: pd.DataFrame | None, tol: Tolerances) -> Comparison:
    """Judge `current` records against `baseline` records (None: no baseline yet). Baseline rows of
    targets absent from `current` are ignored (that target was not run)."""
    cur = _index(current, "current records")
    base = _index(baseline, "baseline", boards=False) if baseline is not None else {}
    rows: list[ComparisonRow] = []
    for key, row in cur.items():
        old = base.get(key.of_target())
        if old is None:
            status = _text(row["status"])
            if status == "failed":
                rows.append(ComparisonRow(key, "status", None, status, None, None, FAILED))
                continue
            if status == "mismatch":
                rows.append(ComparisonRow(key, "status", None, status, None, None, REGRESSION))
            rows.append(ComparisonRow(key, "row", None, status, None, None, NEW))
            continue
        rows += _compare_row(key, row, old, tol)
    run_targets = {k.target for k in cur}
    produced = {k.of_target() for k in cur}
    for key, old in base.items():
        if key.target in run_targets and key not in produced:
            rows.append(ComparisonRow(key, "row", _text(old["status"]), None, None, None, MISSING))
    return Comparison(rows=rows, has_baseline=baseline is not None)


def _compare_row(key: RowKey, row: pd.Series, old: pd.Series, tol: Tolerances) -> list[ComparisonRow]:
    status, old_status = _text(row["status"]), _text(old["status"])
    if status == "failed":
        return [ComparisonRow(key, "status", old_status, status, None, None, FAILED)]
    out = []
    if status == "mismatch":
        out.append(ComparisonRow(key, "status", old_status, status, None, None, REGRESSION))
    elif old_status != "ok":
        out.append(ComparisonRow(key, "status", old_status, status, None, None, IMPROVED))
    for metric, (family, direction) in METRICS.items():
        if metric == "cycles":
            source, old_source = _text(row["cycle_source"]), _text(old["cycle_source"])
            if source != old_source:
                out.append(ComparisonRow(key, metric, old_source, source, None, None, SOURCE_CHANGED))
                continue
            family = "cycles" if source in EMULATOR_SOURCES else "board_cycles"
        judged = _judge(key, metric, old[metric], row[metric], getattr(tol, family), direction)
        if judged is not None:
            out.append(judged)
    return out


def _judge(
    key: RowKey, metric: str, baseline: Any, current: Any, tol: Tolerance, direction: int
) -> ComparisonRow | None:
    if _missing(baseline) and _missing(current):
        return None
    if _missing(baseline):
        return ComparisonRow(key, metric, None, _number(current), None, None, NEW)
    if _missing(current):
        return ComparisonRow(key, metric, _number(baseline), None, None, None, MISSING)
    base, cur = _number(baseline), _number(current)
    delta = cur - base
    allowed = tol.allowed(base)
    worse = delta * direction
    if _beyond(worse, allowed):
        status = REGRESSION
    elif _beyond(-worse, allowed):
        status = IMPROVED
    else:
        status = OK
    return ComparisonRow(key, metric, base, cur, delta, allowed, status)


def _beyond(amount: float, allowed: float) -> bool:
    # "exactly at the tolerance is fine", also after float rounding (0.90 - 0.89 > 0.01 in binary)
    return amount > allowed and not math.isclose(amount, allowed, rel_tol=1e-9, abs_tol=1e-12)


def _index(frame: pd.DataFrame, what: str, *, boards: bool = True) -> dict[RowKey, pd.Series]:
    out: dict[RowKey, pd.Series] = {}
    for _, row in frame.iterrows():
        key = row_key(row) if boards else row_key(row).of_target()
        if key in out:
            raise ValueError(f"{what}: two rows for {key}")
        out[key] = row
    return out


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _number(value: Any) -> int | float:
    # ints stay ints so byte and cycle deltas are exact
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    return float(value)


# --- files -------------------------------------------------------------------------------------------


def baseline_path(root: Path, suite: str, target: str) -> Path:
    """``<root>/<suite>/<target>.csv``; ValueError for names that are not plain file names."""
    for name in (suite, target):
        if not _SAFE_NAME.match(name):
            raise ValueError(f"{name!r} cannot name a baseline file")
    return Path(root) / suite / f"{target}.csv"


def load_baseline(path: Path, suite: str | None = None) -> pd.DataFrame:
    """Read and check one baseline file: the record columns DESIGN.md promises must be there, every
    cell must fit its column, every row must belong to the file's target (and to `suite` when
    given) and no key may repeat. A bad file raises InputError naming the file, the CSV line and the
    column."""
    path = Path(path)
    frame = read_records_csv(path, required=CORE_COLUMNS)
    lines: list[int] = frame.attrs.get(SOURCE_LINES, [])
    seen: dict[RowKey, int] = {}
    for i, (_, row) in enumerate(frame.iterrows()):
        line = lines[i] if i < len(lines) else None
        for column in _KEY_COLUMNS[:-1]:
            if _missing(row[column]):
                raise InputError("must not be empty", file=path, line=line, field=column)
        if suite is not None and row["suite"] != suite:
            raise InputError(
                f"row of suite {_text(row['suite'])!r} in the baseline of suite {suite!r}",
                file=path,
                line=line,
                field="suite",
            )
        if row["target"] != path.stem:
            raise InputError(
                f"row for target {row['target']!r} in the baseline of {path.stem!r}",
                file=path,
                line=line,
                field="target",
            )
        key = row_key(row).of_target()
        if key in seen:
            raise InputError(
                f"a second row for {key} (first on line {seen[key]})", file=path, line=line, field="entry"
            )
        seen[key] = line or 0
    return frame


# --- a run's comparison, saved with the run (so `harness report` shows it again) -----------------


def comparisons_to_json(comparisons: Mapping[str, Comparison]) -> dict[str, Any]:
    """target -> comparison as plain JSON data; `comparisons_from_json` reads it back."""
    return {
        target: {
            "has_baseline": c.has_baseline,
            "rows": [
                {
                    **r.key._asdict(),
                    "metric": r.metric,
                    "baseline": _plain(r.baseline),
                    "current": _plain(r.current),
                    "delta": _plain(r.delta),
                    "allowed": _plain(r.allowed),
                    "status": r.status,
                }
                for r in c.rows
            ],
        }
        for target, c in comparisons.items()
    }


def comparisons_from_json(doc: Mapping[str, Any]) -> dict[str, Comparison]:
    """Inverse of `comparisons_to_json`; ValueError (with the cause) on a document of another shape."""
    try:
        out = {}
        for target, data in doc.items():
            rows = [
                ComparisonRow(
                    key=RowKey(
                        str(r["target"]), str(r["entry"]), str(r["format"]), r["level"], r.get("board")
                    ),
                    metric=str(r["metric"]),
                    baseline=r["baseline"],
                    current=r["current"],
                    delta=r["delta"],
                    allowed=r["allowed"],
                    status=str(r["status"]),
                )
                for r in data["rows"]
            ]
            out[str(target)] = Comparison(rows=rows, has_baseline=bool(data["has_baseline"]))
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a saved comparison: {type(exc).__name__} {exc}") from None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _number(value)


def load_baselines(root: Path, suite: str, targets: Iterable[str]) -> pd.DataFrame | None:
    """The baselines of `targets` for `suite`, concatenated; None when none of the files exists."""
    frames = []
    for target in targets:
        path = baseline_path(root, suite, target)
        if path.exists():
            frames.append(load_baseline(path, suite))
    if not frames:
        return None
    return conform(pd.concat(frames, ignore_index=True))


def update_baselines(frame: pd.DataFrame, root: Path, suite: str) -> list[str]:
    """Write the baseline file of every target in `frame` (atomically) and return a human summary of
    the changes against the previous files. Failed rows are not written: the previous row for that key
    is kept (when there is one). Rows of the previous file the run did not produce are dropped. A key
    measured on several boards (a farm repeating entries on each board) is stored once, from the
    board with the median cycles."""
    frame = conform(frame)
    summary: list[str] = []
    for target in sorted(frame["target"].dropna().unique()):
        path = baseline_path(root, suite, str(target))
        rows = frame[frame["target"] == target]
        notes: list[str] = []
        old: pd.DataFrame | None = None
        if path.exists():
            try:
                old = load_baseline(path)
            except InputError as exc:
                notes.append(f"  the previous file was unreadable and is replaced ({exc})")
        old_rows = _index(old, "baseline", boards=False) if old is not None else {}
        keep: list[pd.Series] = []
        for row in _one_per_key(rows, notes):
            key = row_key(row).of_target()
            if row["status"] == "failed":
                if key in old_rows:
                    keep.append(old_rows[key])
                    notes.append(f"  {_short(key)}: failed in this run, previous baseline row kept")
                else:
                    notes.append(f"  {_short(key)}: failed in this run, no baseline row written")
                continue
            if row["status"] == "mismatch":
                notes.append(f"  warning: {_short(key)} is recorded with status mismatch")
            keep.append(row)
        new = conform(pd.DataFrame(keep, columns=list(RECORD_COLUMNS)))
        new = _sorted(new)
        if new.empty and old is None:
            summary.append(f"{path}: not created (no row of this target ran successfully)")
            summary += notes
            continue
        atomic_write_frame(path, new)
        summary += _describe_change(path, old, new, old_rows)
        summary += notes
    return summary


def _one_per_key(rows: pd.DataFrame, notes: list[str]) -> list[pd.Series]:
    """One row per (target, entry, format, level): the only one, or among several boards' rows the
    one with the median cycles of those that ran (lower median; board order breaks ties)."""
    groups: dict[RowKey, list[pd.Series]] = {}
    for _, row in rows.iterrows():
        groups.setdefault(row_key(row).of_target(), []).append(row)
    out = []
    for key, group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        ran = [r for r in group if r["status"] != "failed" and not _missing(r["cycles"])]
        if not ran:
            out.append(group[0])
            continue
        ran.sort(key=lambda r: (int(r["cycles"]), str(r.get("board") or "")))
        chosen = ran[(len(ran) - 1) // 2]
        out.append(chosen)
        notes.append(
            f"  {_short(key)}: measured on {len(group)} boards; stored from board {chosen.get('board')} "
            f"(median cycles of {len(ran)})"
        )
    return out


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame.sort_values(["entry", "format", "level"], na_position="first", kind="stable").reset_index(
        drop=True
    )


def _describe_change(
    path: Path, old: pd.DataFrame | None, new: pd.DataFrame, old_rows: dict[RowKey, pd.Series]
) -> list[str]:
    if old is None:
        return [f"{path}: created with {len(new)} rows"]
    new_rows = _index(new, "new baseline", boards=False)
    added = [k for k in new_rows if k not in old_rows]
    removed = [k for k in old_rows if k not in new_rows]
    changes = []
    for key, row in new_rows.items():
        if key in old_rows:
            diff = _diff(old_rows[key], row)
            if diff:
                changes.append(f"  {_short(key)}: {diff}")
    if not (added or removed or changes):
        return [f"{path}: unchanged ({len(new)} rows)"]
    head = f"{path}: {len(added)} added, {len(removed)} removed, {len(changes)} changed"
    details = [f"  {_short(k)}: added" for k in added] + [f"  {_short(k)}: removed" for k in removed]
    return [head, *details, *changes]


def _diff(old: pd.Series, new: pd.Series) -> str:
    parts, others = [], []
    for column in RECORD_COLUMNS:
        a, b = old[column], new[column]
        if _missing(a) and _missing(b):
            continue
        if not _missing(a) and not _missing(b) and a == b:
            continue
        if column in METRICS:
            parts.append(f"{column} {_show(a, column)} → {_show(b, column)}{_change(a, b, column)}")
        elif column in ("status", "cycle_source"):
            parts.append(f"{column} {_show(a)} → {_show(b)}")
        else:
            others.append(column)
    if others:
        parts.append(f"also {', '.join(others)}")
    return "; ".join(parts)


def _show(value: Any, column: str = "") -> str:
    if _missing(value):
        return "(empty)"
    if column.startswith("accuracy"):
        return f"{float(value) * 100:.2f} %"
    if column in METRICS:
        return f"{_number(value):,}"
    return str(value)


def _change(old: Any, new: Any, column: str) -> str:
    """`` (+12, +1.20 %)`` for a metric present on both sides; accuracy in percentage points."""
    if _missing(old) or _missing(new):
        return ""
    delta = _number(new) - _number(old)
    if column.startswith("accuracy"):
        return f" ({delta * 100:+.2f} pt)"
    if not _number(old):
        return f" ({delta:+,})"
    return f" ({delta:+,}, {delta / _number(old) * 100:+.2f} %)"


def _short(key: RowKey) -> str:
    level = "-" if key.level is None else f"{key.level:g}"
    return f"{key.entry}/{key.format}/{level}"


__all__ = [
    "METRICS",
    "Comparison",
    "ComparisonRow",
    "RowKey",
    "baseline_path",
    "compare",
    "comparisons_from_json",
    "comparisons_to_json",
    "load_baseline",
    "load_baselines",
    "row_key",
    "update_baselines",
]
