"""Records: column order and nullable dtypes, CSV/Parquet round trips, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.atomic import atomic_write_bytes, atomic_write_frame, atomic_write_text, atomic_write_with
from harness.errors import InfraError, InputError
from harness.records import (
    DTYPES,
    RECORD_COLUMNS,
    format_cycles_per_layer,
    parse_cycles_per_layer,
    read_records,
    read_records_csv,
    records_frame,
    write_records,
)


def ok_row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "suite": "quickstart", "entry": "dense", "trainer": "dense", "arch": "digits_cnn",
        "dataset": "digits", "format": "dense", "level": 0, "sparsity": 0.0, "target": "qemu_mps2_an500",
        "cycle_source": "qemu-icount", "cycles": 812_345, "cycles_min": 812_345, "cycles_max": 812_350,
        "repetitions": 5, "cycles_per_layer": {"conv1": 500_000, "fc": 312_345},
        "accuracy_float": 0.975, "accuracy_host": 0.9722222222222222, "accuracy_device": 0.9722222222222222,
        "samples": 360, "model_bytes": 10_240, "weight_bytes": 9_000, "index_bytes": 0, "meta_bytes": 1_240,
        "flash_bytes": 40_000, "ram_bytes": 20_000, "stack_bytes": 1_024, "model_hash": "ab12",
        "fw_build": "cd34", "status": "ok", "error": "",
    }  # fmt: skip
    row.update(over)
    return row


def failed_row() -> dict[str, object]:
    return {
        "suite": "quickstart", "entry": "big", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "target": "qemu_mps2_an500", "cycle_source": "qemu-icount",
        "status": "failed", "error": 'device timeout after 30 s\nlast line: "conv1", 3',
    }  # fmt: skip


def test_frame_columns_and_dtypes() -> None:
    frame = records_frame([ok_row(), failed_row()])
    assert tuple(frame.columns) == RECORD_COLUMNS
    assert {c: str(t) for c, t in frame.dtypes.items()} == DTYPES
    assert frame.loc[0, "cycles"] == 812_345
    assert frame.loc[0, "cycles_per_layer"] == "conv1=500000;fc=312345"
    assert pd.isna(frame.loc[1, "cycles"]) and pd.isna(frame.loc[1, "accuracy_device"])
    assert str(frame["cycles"].dtype) == "Int64"  # stays integer despite the empty cell


def test_frame_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        records_frame([ok_row(latency=3)])
    with pytest.raises(ValueError, match="status"):
        records_frame([ok_row(status="passed")])
    with pytest.raises(ValueError, match="column cycles"):
        records_frame([ok_row(cycles=12.5)])
    with pytest.raises(ValueError, match="column accuracy_host"):
        records_frame([ok_row(accuracy_host="high")])
    with pytest.raises(ValueError, match="needs a status"):
        records_frame([{"entry": "x"}])
    assert records_frame([ok_row(cycles=12.0)]).loc[0, "cycles"] == 12  # integral floats are fine


def test_empty_frame_has_columns() -> None:
    frame = records_frame([])
    assert tuple(frame.columns) == RECORD_COLUMNS and len(frame) == 0


def test_round_trip_csv_and_parquet(tmp_path: Path) -> None:
    frame = records_frame([ok_row(), ok_row(entry="half", level=1, sparsity=0.5), failed_row()])
    csv_path, parquet_path = write_records(tmp_path, frame)
    assert (csv_path.name, parquet_path.name) == ("records.csv", "records.parquet")
    for path in (csv_path, parquet_path, tmp_path):
        back = read_records(path)
        pd.testing.assert_frame_equal(back, frame)
    text = csv_path.read_text()
    assert text.splitlines()[0] == ",".join(RECORD_COLUMNS)
    failed_line = next(line for line in text.splitlines() if line.startswith("quickstart,big,"))
    assert ",,,," in failed_line  # empty cells, not "nan" or "<NA>"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    atomic_write_text(path, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_cycles_per_layer_strings() -> None:
    counts = {"conv1": 10, "pool": 0, "fc": 7}
    text = format_cycles_per_layer(counts)
    assert text == "conv1=10;pool=0;fc=7"
    assert parse_cycles_per_layer(text) == counts
    assert parse_cycles_per_layer("") == {}
    for bad in ("conv1", "conv1=x", "a=1;;b=2", "a=1;a=2"):
        with pytest.raises(ValueError):
            parse_cycles_per_layer(bad)
    with pytest.raises(ValueError):
        format_cycles_per_layer({"a;b": 1})


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    atomic_write_text(path, "old complete content\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new but trunc")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(path, half_then_fail)
    assert path.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["records.csv"]


def test_library_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "records.parquet"
    good = records_frame([ok_row()])
    atomic_write_frame(path, good)
    mixed = pd.DataFrame({"a": [1, "two", 3.0]})  # pyarrow refuses mixed object columns
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's exact type is not the point
        atomic_write_frame(path, mixed)
    pd.testing.assert_frame_equal(read_records(path), good)
    assert [p.name for p in tmp_path.iterdir()] == ["records.parquet"]


def test_killed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    # a process that dies mid-write (no exception handling runs) must not damage the destination
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from harness.atomic import atomic_write_with\n"
        "def write(tmp):\n"
        "    with open(tmp, 'wb') as f:\n"
        "        f.write(b'partial'); f.flush(); os._exit(9)\n"
        "atomic_write_with(Path(sys.argv[1]), write)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 9
    assert path.read_bytes() == b"old"


def test_frame_suffix_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        atomic_write_frame(tmp_path / "x.json", records_frame([]))


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.csv"
    path.write_text(text)
    return path


def test_csv_cells_are_checked(tmp_path: Path) -> None:
    frame = records_frame([ok_row(), failed_row()])
    write_records(tmp_path, frame)
    lines = (tmp_path / "records.csv").read_text().splitlines(keepends=True)
    # the failed row's error holds a newline, so the CSV has 4 physical lines for 2 rows
    assert len(lines) == 4
    bad = lines[0] + lines[1].replace(",812345,", ",81x345,", 1) + "".join(lines[2:])
    with pytest.raises(InputError) as info:
        read_records_csv(_csv(tmp_path, bad))
    assert (info.value.line, info.value.field) == (2, "cycles")
    bad = "".join(lines[:2]) + lines[2].replace(",failed,", ",broken,") + lines[3]
    with pytest.raises(InputError) as info:
        read_records_csv(_csv(tmp_path, bad))
    assert (info.value.line, info.value.field) == (3, "status")


def test_parquet_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "records.parquet"
    records_frame([ok_row()]).drop(columns=["cycles"]).to_parquet(path)
    with pytest.raises(InputError, match="missing columns: cycles"):
        read_records(path)


def test_csv_encoding_problems_are_located(tmp_path: Path) -> None:
    frame = records_frame([ok_row(), ok_row(entry="half", level=1, sparsity=0.5)])
    write_records(tmp_path, frame)
    text = (tmp_path / "records.csv").read_text()
    # a byte-order mark (spreadsheet export) is not part of the first column's name
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    pd.testing.assert_frame_equal(read_records_csv(path), frame, check_like=True)
    # a Latin-1 byte in the second data row: its line and its column
    path.write_bytes(text.replace(",half,", ",h\u00e4lf,").encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_records_csv(path)
    assert (info.value.line, info.value.field) == (3, "entry")
    assert "not UTF-8 text (byte 0xe4)" in str(info.value)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("cycles", "9" * 30, "integer out of range"),
        ("cycles", "9223372036854775808", "integer out of range"),
        ("entry", "de\x00nse", "control character"),
        ("error", "bell \x07", "control character"),
    ],
)
def test_csv_cells_that_do_not_fit(tmp_path: Path, column: str, value: str, message: str) -> None:
    frame = records_frame([ok_row()])
    frame[column] = frame[column].astype(object)
    frame.loc[0, column] = value
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(InputError) as info:
        read_records_csv(path)
    assert (info.value.line, info.value.field) == (2, column) and message in str(info.value)
    assert len(str(info.value)) < 300  # a huge cell is not echoed whole


def test_csv_error_cell_keeps_newlines_and_tabs(tmp_path: Path) -> None:
    frame = records_frame([ok_row(status="failed", error="no reply\n\tlast UART lines:\n  > 5 hello*0")])
    write_records(tmp_path, frame)
    assert (
        read_records_csv(tmp_path / "records.csv").loc[0, "error"]
        == "no reply\n\tlast UART lines:\n  > 5 hello*0"
    )


def test_a_folder_is_not_a_records_file(tmp_path: Path) -> None:
    (tmp_path / "x.csv").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_records_csv(tmp_path / "x.csv")


def test_board_id_for_run_json() -> None:
    # The board's ID in run.json is its probe's UID (the one flashed and talked to); an emulator has none.
    from harness.backends.board import BoardBackend, PortInfo, ProbeInfo
    from harness.backends.qemu import QemuBackend
    from harness.pipeline import board_id

    uid = "066DFF495051717867154024"
    board = BoardBackend(
        pyocd_target="stm32f767zi",
        probes=lambda: [ProbeInfo(uid, "NUCLEO-F767ZI")],
        ports=lambda: [PortInfo("/dev/ttyACM0", uid, "STM32 STLink")],
    )
    assert board_id(board) == uid
    assert board_id(QemuBackend("-machine mps2-an500")) is None
    lost = BoardBackend(pyocd_target="stm32f767zi", probes=lambda: [], ports=lambda: [])
    with pytest.raises(InfraError, match="no debug probe"):
        board_id(lost)  # fails like the session would: the row is marked failed with this reason
