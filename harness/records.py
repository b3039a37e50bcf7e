"""Result records: one row per model × format × level × target (× board when a farm repeats every
entry on each board) (DESIGN.md §3).

A run writes its records as ``records.csv`` (for people and diffs) and ``records.parquet`` (typed, for
tools), both atomically. Columns are `RECORD_COLUMNS` in that order. Integer columns are pandas'
nullable ``Int64`` so a failed row keeps empty cycles rather than turning the column into floats;
fractions are nullable ``Float64``; text is the nullable ``string`` dtype.

Column meanings (DESIGN.md §3 for the contract):
    level            index of the level in the entry's levels, sparsest last (0 for a dense
                     model); part of the row's key
    sparsity         weight sparsity of the model at that level
    board            the board that ran the row: its probe UID, a farm board's ID or labgrid place;
                     empty for a local emulator. Baselines are keyed by target, not board
    cycle_source     qemu-icount | renode-dwt | dwt; never compare across sources
    cycles           median cycles (or instructions) per inference over `repetitions`
    cycles_min/max   extremes over the repetitions
    cycles_per_layer ``layer=count;layer=count`` (median per layer), empty when not measured
    accuracy_*       fractions in [0, 1]: float model on host, int8 reference on host, device
    *_bytes          storage of the packed model and footprint of the linked image
    status           ok | mismatch (device output ≠ host reference) | failed (build/device/infra)
    error            why a row failed or mismatched
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.atomic import atomic_write_frame
from harness.errors import InputError

STRING_COLUMNS = (
    "suite",
    "entry",
    "trainer",
    "arch",
    "dataset",
    "format",
    "target",
    "board",
    "cycle_source",
    "cycles_per_layer",
    "model_hash",
    "fw_build",
    "status",
    "error",
)
FLOAT_COLUMNS = ("sparsity", "accuracy_float", "accuracy_host", "accuracy_device")
INT_COLUMNS = (
    "level",
    "cycles",
    "cycles_min",
    "cycles_max",
    "repetitions",
    "samples",
    "model_bytes",
    "weight_bytes",
    "index_bytes",
    "meta_bytes",
    "flash_bytes",
    "ram_bytes",
    "stack_bytes",
)

RECORD_COLUMNS: tuple[str, ...] = (
    "suite", "entry", "trainer", "arch", "dataset", "format", "level", "sparsity", "target", "board",
    "cycle_source", "cycles", "cycles_min", "cycles_max", "repetitions", "cycles_per_layer",
    "accuracy_float", "accuracy_host", "accuracy_device", "samples", "model_bytes", "weight_bytes",
    "index_bytes", "meta_bytes", "flash_bytes", "ram_bytes", "stack_bytes", "model_hash", "fw_build",
    "status", "error",
)  # fmt: skip

# The columns DESIGN.md §3 promises; files lacking others (older baselines) get them empty.
CORE_COLUMNS: tuple[str, ...] = (
    "suite", "entry", "trainer", "arch", "dataset", "format", "level", "sparsity", "target",
    "cycle_source", "cycles", "cycles_per_layer", "accuracy_host", "accuracy_device", "samples",
    "model_bytes", "weight_bytes", "index_bytes", "meta_bytes", "flash_bytes", "ram_bytes", "status",
)  # fmt: skip

DTYPES: dict[str, str] = {
    **{c: "string" for c in STRING_COLUMNS},
    **{c: "Float64" for c in FLOAT_COLUMNS},
    **{c: "Int64" for c in INT_COLUMNS},
}
assert set(DTYPES) == set(RECORD_COLUMNS) and len(RECORD_COLUMNS) == len(DTYPES)

# Columns added after records were first written: files without them read as empty.
OPTIONAL_COLUMNS: tuple[str, ...] = ("board",)
STATUSES = ("ok", "mismatch", "failed")
CYCLE_SOURCES = ("qemu-icount", "renode-dwt", "dwt")
EMULATOR_SOURCES = frozenset({"qemu-icount", "renode-dwt"})
_FRACTIONS = ("accuracy_float", "accuracy_host", "accuracy_device", "sparsity")
SOURCE_LINES = "source_lines"
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_LAYER_RE = re.compile(r"^[^;=\s]+$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tabs and newlines are text (an error message)
_INT_MAX = 2**63 - 1  # Int64


def _clip(text: str, limit: int = 40) -> str:
    """A cell as shown in an error message: huge cells are cut."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


# --- cycles_per_layer --------------------------------------------------------------------------------


def format_cycles_per_layer(counts: Mapping[str, int]) -> str:
    """``{"conv1": 1200, "fc": 80}`` -> ``conv1=1200;fc=80`` (insertion order kept)."""
    parts = []
    for name, count in counts.items():
        if not _LAYER_RE.match(name):
            raise ValueError(f"layer name {name!r} cannot hold ';', '=' or spaces")
        parts.append(f"{name}={int(count)}")
    return ";".join(parts)


def parse_cycles_per_layer(text: str) -> dict[str, int]:
    """Inverse of `format_cycles_per_layer`; ``""`` -> ``{}``. ValueError on a malformed string."""
    out: dict[str, int] = {}
    if not text:
        return out
    for part in text.split(";"):
        name, sep, count = part.partition("=")
        if not sep or not _LAYER_RE.match(name) or not _INT_RE.match(count) or name in out:
            raise ValueError(f"expected layer=count;layer=count, bad part {part!r}")
        out[name] = int(count)
    return out


# --- building frames ---------------------------------------------------------------------------------


def records_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (dicts keyed by column; absent keys are empty) -> a frame with `RECORD_COLUMNS` in order
    and their dtypes. `cycles_per_layer` may be given as a mapping; empty strings become empty (NA)
    cells. ValueError on an unknown column,
    a bad status or a value that does not fit its column: these are the harness's bugs, not input."""
    known = set(RECORD_COLUMNS)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(f"record {i}: unknown columns {unknown}")
    data = {}
    for column in RECORD_COLUMNS:
        try:
            values = [_prepare(column, row.get(column)) for row in rows]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {column}: {exc}") from None
        data[column] = pd.array(values, dtype=DTYPES[column])
    return pd.DataFrame(data, columns=list(RECORD_COLUMNS))


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every record column, in order, with its dtype (missing columns empty). ValueError
    on unknown columns or values that do not fit."""
    unknown = [c for c in frame.columns if c not in DTYPES]
    if unknown:
        raise ValueError(f"unknown record columns {unknown}")
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return records_frame(rows)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _prepare(column: str, value: Any) -> Any:
    if isinstance(value, str) and not value and DTYPES[column] == "string":
        value = None  # CSV cannot tell "" from empty: keep one spelling so round trips are exact
    if _is_missing(value):
        if column == "status":
            raise ValueError(f"every record needs a status ({', '.join(STATUSES)})")
        return None
    kind = DTYPES[column]
    if kind == "Int64":
        if isinstance(value, bool | np.bool_):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if kind == "Float64":
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if column == "cycles_per_layer" and isinstance(value, Mapping):
        return format_cycles_per_layer(value)
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    if column == "status" and value not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {value!r}")
    return value


# --- files -------------------------------------------------------------------------------------------


def write_records(run_dir: Path, frame: pd.DataFrame) -> tuple[Path, Path]:
    """Write ``records.csv`` and ``records.parquet`` into `run_dir`, each atomically."""
    frame = conform(frame)
    csv_path, parquet_path = Path(run_dir) / "records.csv", Path(run_dir) / "records.parquet"
    atomic_write_frame(csv_path, frame)
    atomic_write_frame(parquet_path, frame)
    return csv_path, parquet_path


def read_records(path: Path) -> pd.DataFrame:
    """Read records from a ``.csv`` or ``.parquet`` file, or from a run folder (its Parquet file, else
    its CSV). A malformed file raises InputError naming file, line and column."""
    path = Path(path)
    if path.is_dir():
        parquet = path / "records.parquet"
        path = parquet if parquet.exists() else path / "records.csv"
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except FileNotFoundError:
            raise InputError("file not found", file=path) from None
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise InputError(f"cannot read Parquet: {exc}", file=path) from None
        missing = [c for c in RECORD_COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
        if missing:
            raise InputError(f"missing columns: {', '.join(missing)}", file=path)
        try:
            return conform(frame)
        except ValueError as exc:
            raise InputError(str(exc), file=path) from None
    return read_records_csv(path, required=[c for c in RECORD_COLUMNS if c not in OPTIONAL_COLUMNS])


def read_records_csv(path: Path, *, required: Collection[str] = RECORD_COLUMNS) -> pd.DataFrame:
    """Parse a records CSV cell by cell. Columns in `required` must be present, unknown columns are
    errors, other record columns may be absent (they come back empty). Every bad cell raises an
    InputError with the file, the CSV line it starts on and the column as field. The frame's
    ``attrs[SOURCE_LINES]`` holds each row's line, for later checks to point at."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _parse_csv(path, csv.reader(handle, strict=True), required)
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except IsADirectoryError:
        raise InputError("is a folder, expected a CSV file", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> InputError:
    """Locate the first byte that is not UTF-8: its line, and its column when the header parses."""
    data = exc.object if isinstance(exc.object, bytes) else Path(path).read_bytes()
    line = data[: exc.start].count(b"\n") + 1
    message = f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
    text = data.decode("utf-8", errors="replace").splitlines()
    column = "header" if line == 1 else "encoding"
    if line > 1 and text:
        header = next(csv.reader([text[0]]), [])
        cells = next(csv.reader([text[line - 1]]), [])
        for name, cell in zip(header, cells, strict=False):
            if "\ufffd" in cell:
                column = name.strip()
                break
    return InputError(message, file=path, line=line, field=column)


def _parse_csv(path: Path, reader: Iterable[list[str]], required: Collection[str]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    line = 0
    header: list[str] | None = None
    iterator = iter(reader)
    while True:
        start = line + 1
        try:
            cells = next(iterator)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"CSV syntax error: {exc}", file=path, line=start, field="CSV") from None
        line = getattr(reader, "line_num", start)
        if header is None:
            header = [c.strip() for c in cells]
            _check_header(path, header, required)
            continue
        if not any(c.strip() for c in cells):
            continue  # a blank line
        if len(cells) != len(header):
            raise InputError(
                f"{len(cells)} cells, the header has {len(header)}", file=path, line=start, field="row"
            )
        row = {}
        for column, cell in zip(header, cells, strict=True):
            try:
                row[column] = _parse_cell(column, cell)
            except ValueError as exc:
                raise InputError(str(exc), file=path, line=start, field=column) from None
        rows.append(row)
        lines.append(start)
    if header is None:
        raise InputError(
            "empty file: expected a header line with the record columns", file=path, line=1, field="header"
        )
    frame = records_frame(rows)
    frame.attrs[SOURCE_LINES] = lines
    return frame


def _check_header(path: Path, header: list[str], required: Collection[str]) -> None:
    seen: set[str] = set()
    for name in header:
        if name not in DTYPES:
            raise InputError(
                f"unknown column {_clip(name)!r}", file=path, line=1, field=_clip(name) or "(empty)"
            )
        if name in seen:
            raise InputError(f"column {name!r} appears twice", file=path, line=1, field=name)
        seen.add(name)
    missing = [c for c in required if c not in seen]
    if missing:
        raise InputError(f"missing columns: {', '.join(missing)}", file=path, line=1, field=missing[0])


def _parse_cell(column: str, cell: str) -> Any:
    text = cell.strip()
    if column == "status":
        if text not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {_clip(cell)!r}")
        return text
    if not text:
        return None
    kind = DTYPES[column]
    if kind == "Int64":
        if not _INT_RE.match(text):
            raise ValueError(f"expected an integer, got {_clip(cell)!r}")
        if len(text.lstrip("+-0")) > 19 or abs(int(text)) > _INT_MAX:
            raise ValueError(f"integer out of range (at most {_INT_MAX}), got {_clip(cell)}")
        value = int(text)
        if value < 0:
            raise ValueError(f"expected a count ≥ 0, got {value}")
        return value
    if kind == "Float64":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {_clip(cell)!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {_clip(cell)!r}")
        if column in _FRACTIONS and not 0.0 <= number <= 1.0:
            raise ValueError(f"expected a fraction in [0, 1], got {number}")
        return number
    if _CONTROL_RE.search(cell if column == "error" else text):
        raise ValueError(f"control character in {_clip(cell)!r}")
    if column == "cycle_source" and text not in CYCLE_SOURCES:
        raise ValueError(f"cycle_source must be one of {', '.join(CYCLE_SOURCES)}, got {_clip(cell)!r}")
    if column == "cycles_per_layer":
        parse_cycles_per_layer(text)
    return cell
