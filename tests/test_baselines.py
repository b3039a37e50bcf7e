"""Baselines: metric directions, tolerance edges, cycle sources, new/missing rows, bad files, updates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.atomic import atomic_write_frame as write_records_csv
from harness.baselines import (
    RowKey,
    compare,
    comparisons_from_json,
    comparisons_to_json,
    load_baseline,
    load_baselines,
    update_baselines,
)
from harness.errors import InputError
from harness.records import RECORD_COLUMNS, records_frame, write_records
from harness.suite import Tolerance, Tolerances

TARGET = "qemu_mps2_an500"


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "suite": "s", "entry": "dense", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "sparsity": 0.0, "target": TARGET, "cycle_source": "qemu-icount",
        "cycles": 1000, "accuracy_host": 0.90, "accuracy_device": 0.90, "samples": 360,
        "model_bytes": 1000, "weight_bytes": 800, "index_bytes": 100, "meta_bytes": 100,
        "flash_bytes": 5000, "ram_bytes": 3000, "status": "ok",
    }  # fmt: skip
    base.update(over)
    return base


def judge(metric: str, baseline: Any, current: Any, tol: Tolerances | None = None, **common: Any) -> str:
    """Status of `metric` when only it changes from `baseline` to `current`."""
    result = compare(
        records_frame([row(**common, **{metric: current})]),
        records_frame([row(**common, **{metric: baseline})]),
        tol or Tolerances(),
    )
    (only,) = [r for r in result.rows if r.metric == metric]
    return only.status


def test_defaults_unchanged_is_ok() -> None:
    result = compare(records_frame([row()]), records_frame([row()]), Tolerances())
    assert {r.status for r in result.rows} == {"ok"}
    assert result.verdict == "ok" and not result.regressions and not result.improvements


def test_emulator_cycles_exact_by_default() -> None:
    assert judge("cycles", 1000, 1001) == "regression"
    assert judge("cycles", 1000, 999) == "improved"
    assert judge("cycles", 1000, 1000) == "ok"


@pytest.mark.parametrize(
    ("tol", "current", "status"),
    [
        (Tolerance(abs=10), 1010, "ok"),  # exactly at the tolerance
        (Tolerance(abs=10), 1011, "regression"),
        (Tolerance(abs=10), 990, "ok"),
        (Tolerance(abs=10), 989, "improved"),
        (Tolerance(rel=0.01, abs=50), 1050, "ok"),  # max(abs, rel * base) = 50
        (Tolerance(rel=0.01, abs=50), 1051, "regression"),
        (Tolerance(rel=0.1, abs=50), 1100, "ok"),  # max(abs, rel * base) = 100
        (Tolerance(rel=0.1, abs=50), 1101, "regression"),
    ],
)
def test_cycle_tolerance_edges(tol: Tolerance, current: int, status: str) -> None:
    assert judge("cycles", 1000, current, Tolerances(cycles=tol)) == status


def test_board_cycles_use_their_own_tolerance() -> None:
    dwt = {"cycle_source": "dwt"}
    assert judge("cycles", 1000, 1030, **dwt) == "ok"  # default board tolerance: 3 %
    assert judge("cycles", 1000, 1031, **dwt) == "regression"
    assert judge("cycles", 1000, 969, **dwt) == "improved"
    assert judge("cycles", 1000, 1030) == "regression"  # the same change in QEMU counts is real
    assert judge("cycles", 1000, 1030, cycle_source="renode-dwt") == "regression"


def test_accuracy_lower_is_worse_and_edge_is_float_safe() -> None:
    assert judge("accuracy_device", 0.90, 0.89) == "ok"  # 0.90 - 0.89 > 0.01 in binary floats
    assert judge("accuracy_device", 0.90, 0.8899) == "regression"
    assert judge("accuracy_device", 0.90, 0.91) == "ok"
    assert judge("accuracy_device", 0.90, 0.9101) == "improved"
    assert judge("accuracy_device", 0.90, 0.95, Tolerances(accuracy=Tolerance(abs=0.1))) == "ok"


@pytest.mark.parametrize("metric", ["model_bytes", "weight_bytes", "index_bytes", "meta_bytes"])
def test_storage_higher_is_worse(metric: str) -> None:
    assert judge(metric, 100, 101) == "regression"
    assert judge(metric, 100, 99) == "improved"
    tol = Tolerances(storage=Tolerance(abs=16))
    assert judge(metric, 100, 116, tol) == "ok"
    assert judge(metric, 100, 117, tol) == "regression"


@pytest.mark.parametrize("metric", ["flash_bytes", "ram_bytes"])
def test_footprint_higher_is_worse(metric: str) -> None:
    assert judge(metric, 4000, 4001) == "regression"
    assert judge(metric, 4000, 3000) == "improved"
    tol = Tolerances(footprint=Tolerance(rel=0.01))
    assert judge(metric, 4000, 4040, tol) == "ok"
    assert judge(metric, 4000, 4041, tol) == "regression"


def test_changed_cycle_source_is_never_compared() -> None:
    result = compare(
        records_frame([row(cycle_source="renode-dwt", cycles=99_999, flash_bytes=5001)]),
        records_frame([row()]),
        Tolerances(),
    )
    by_metric = {r.metric: r for r in result.rows}
    assert by_metric["cycles"].status == "source-changed"
    assert (by_metric["cycles"].baseline, by_metric["cycles"].current) == ("qemu-icount", "renode-dwt")
    assert by_metric["flash_bytes"].status == "regression"  # other metrics still count
    assert [r.metric for r in result.regressions] == ["flash_bytes"]


def test_new_and_missing_rows() -> None:
    current = records_frame([row(), row(entry="fresh")])
    baseline = records_frame([row(), row(entry="gone"), row(target="nucleo_f767zi", cycle_source="dwt")])
    result = compare(current, baseline, Tolerances())
    statuses = {(r.key.entry, r.key.target): r.status for r in result.rows if r.metric == "row"}
    # the nucleo baseline is ignored: that target was not part of this run
    assert statuses == {("fresh", TARGET): "new", ("gone", TARGET): "missing"}
    assert result.verdict == "ok"
    assert result.row_status(RowKey(TARGET, "gone", "dense", 0.0)) == "missing"


def test_no_baseline_at_all() -> None:
    result = compare(records_frame([row(), row(entry="b")]), None, Tolerances())
    assert [r.status for r in result.rows] == ["new", "new"]
    assert result.verdict == "no-baseline" and not result.regressions


def test_mismatch_regresses_and_failure_does_not() -> None:
    current = records_frame([row(status="mismatch", error="3 of 360 samples differ"),
                             row(entry="b", status="failed", cycles=None, accuracy_device=None)])  # fmt: skip
    baseline = records_frame([row(), row(entry="b")])
    result = compare(current, baseline, Tolerances())
    assert [(r.key.entry, r.metric) for r in result.regressions] == [("dense", "status")]
    assert result.row_status(RowKey(TARGET, "b", "dense", 0.0)) == "failed"
    assert result.row_status(RowKey(TARGET, "dense", "dense", 0.0)) == "regression"
    assert result.verdict == "regression"
    # a mismatch is a regression even without a baseline row
    alone = compare(records_frame([row(status="mismatch")]), None, Tolerances())
    assert alone.verdict == "regression"


def test_levels_from_csv_match_computed_levels(tmp_path: Path) -> None:
    write_records(tmp_path, records_frame([row(level=2, sparsity=0.1 * 9)]))
    baseline = load_baseline_copy(tmp_path)
    result = compare(records_frame([row(level=2, sparsity=0.9)]), baseline, Tolerances())
    assert {r.status for r in result.rows} == {"ok"}


def load_baseline_copy(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "b" / f"{TARGET}.csv"
    path.parent.mkdir()
    path.write_text((run_dir / "records.csv").read_text())
    return load_baseline(path)


def test_comparison_frame() -> None:
    result = compare(records_frame([row(cycles=1100)]), records_frame([row()]), Tolerances())
    frame = result.to_frame()
    cycles = frame[frame["metric"] == "cycles"].iloc[0]
    assert (cycles["baseline"], cycles["current"], cycles["delta"], cycles["status"]) == (
        1000, 1100, 100, "regression",
    )  # fmt: skip


# --- files -------------------------------------------------------------------------------------------

HEADER = ",".join(RECORD_COLUMNS)


def good_line(**over: Any) -> str:
    frame = records_frame([row(**over)])
    return frame.to_csv(index=False, header=False, lineterminator="\n").strip()


def write_baseline(tmp_path: Path, *lines: str, header: str = HEADER) -> Path:
    path = tmp_path / "s" / f"{TARGET}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_good_baseline_file(tmp_path: Path) -> None:
    path = write_baseline(tmp_path, good_line(), good_line(entry="b", cycles=None, status="failed"))
    frame = load_baseline(path)
    assert list(frame["entry"]) == ["dense", "b"] and pd.isna(frame.loc[1, "cycles"])


def _replace_cell(line: str, column: str, value: str) -> str:
    cells = line.split(",")
    cells[RECORD_COLUMNS.index(column)] = value
    return ",".join(cells)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("cycles", "12k", "expected an integer"),
        ("cycles", "1.5", "expected an integer"),
        ("flash_bytes", "-4", "≥ 0"),
        ("accuracy_device", "high", "expected a number"),
        ("accuracy_device", "1.5", "fraction"),
        ("level", "0.5", "integer"),
        ("status", "passed", "status must be one of"),
        ("status", "", "status must be one of"),
        ("cycle_source", "wallclock", "cycle_source must be one of"),
        ("cycles_per_layer", "conv1:12", "layer=count"),
        ("target", "nucleo_f767zi", "baseline of 'qemu_mps2_an500'"),
        ("entry", "", "must not be empty"),
    ],
)
def test_bad_cell_names_line_and_column(tmp_path: Path, column: str, value: str, message: str) -> None:
    path = write_baseline(tmp_path, good_line(), _replace_cell(good_line(entry="b"), column, value))
    with pytest.raises(InputError) as info:
        load_baseline(path)
    assert (info.value.line, info.value.field) == (3, column), str(info.value)
    assert message in info.value.message
    assert str(path) in str(info.value)


def test_duplicate_key_in_baseline(tmp_path: Path) -> None:
    path = write_baseline(tmp_path, good_line(), good_line(entry="b"), good_line(cycles=5))
    with pytest.raises(InputError, match="first on line 2") as info:
        load_baseline(path)
    assert info.value.line == 4


def test_bad_header(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown column 'latency'") as info:
        load_baseline(write_baseline(tmp_path, header=HEADER + ",latency"))
    assert (info.value.line, info.value.field) == (1, "latency")
    with pytest.raises(InputError, match="missing columns: cycles") as info:
        load_baseline(write_baseline(tmp_path, header=HEADER.replace(",cycles,", ",")))
    assert info.value.line == 1
    empty = write_baseline(tmp_path)
    empty.write_text("")
    with pytest.raises(InputError, match="empty file"):
        load_baseline(empty)


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    header = HEADER.replace(",fw_build", "").replace(",stack_bytes", "")
    line = good_line(stack_bytes=None, fw_build=None).replace(",,,ok", ",ok")
    frame = load_baseline(write_baseline(tmp_path, line, header=header))
    assert tuple(frame.columns) == RECORD_COLUMNS and pd.isna(frame.loc[0, "fw_build"])


def test_ragged_and_broken_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cells, the header has") as info:
        load_baseline(write_baseline(tmp_path, good_line(), good_line(entry="b") + ",extra"))
    assert info.value.line == 3
    with pytest.raises(InputError, match="CSV syntax error") as info:
        load_baseline(
            write_baseline(tmp_path, good_line(), _replace_cell(good_line(entry="b"), "error", '"open'))
        )
    assert info.value.line == 3


def test_update_baselines(tmp_path: Path) -> None:
    root = tmp_path / "baselines"
    first = records_frame([row(), row(entry="b"), row(target="nucleo_f767zi", cycle_source="dwt")])
    summary = update_baselines(first, root, "s")
    assert summary == [f"{root / 's' / 'nucleo_f767zi.csv'}: created with 1 rows",
                       f"{root / 's' / TARGET}.csv: created with 2 rows"]  # fmt: skip
    assert update_baselines(first, root, "s")[1].endswith("unchanged (2 rows)")
    stored = load_baselines(root, "s", [TARGET, "nucleo_f767zi", "absent"])
    assert stored is not None and len(stored) == 3

    # b fails this time: its old row stays; dense gets faster; c is new; only the QEMU target ran
    second = records_frame([row(cycles=900), row(entry="b", status="failed", cycles=None), row(entry="c")])
    summary = update_baselines(second, root, "s")
    text = "\n".join(summary)
    assert f"{TARGET}.csv: 1 added, 0 removed, 1 changed" in text
    assert "dense/dense/0: cycles 1,000 → 900 (-100, -10.00 %)" in text
    assert "b/dense/0: failed in this run, previous baseline row kept" in text
    after = load_baseline(root / "s" / f"{TARGET}.csv")
    assert list(after["entry"]) == ["b", "c", "dense"]
    assert list(after["cycles"]) == [1000, 1000, 900]
    assert len(load_baseline(root / "s" / "nucleo_f767zi.csv")) == 1  # untouched

    third = records_frame([row(cycles=900)])
    assert "0 added, 2 removed, 0 changed" in "\n".join(update_baselines(third, root, "s"))
    assert not [p for p in (root / "s").iterdir() if p.name.startswith(".")]


def test_update_writes_nothing_when_everything_failed(tmp_path: Path) -> None:
    summary = update_baselines(records_frame([row(status="failed", cycles=None)]), tmp_path, "s")
    assert summary[0].endswith("not created (no row of this target ran successfully)")
    assert not (tmp_path / "s" / f"{TARGET}.csv").exists()


def test_update_rejects_odd_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        update_baselines(records_frame([row()]), tmp_path, "../escape")


def test_update_shows_each_changed_metric(tmp_path: Path) -> None:
    update_baselines(records_frame([row()]), tmp_path, "s")
    changed = records_frame([row(accuracy_device=0.85, flash_bytes=5100, index_bytes=0, fw_build="x1")])
    (head, line) = update_baselines(changed, tmp_path, "s")
    assert head.endswith("0 added, 0 removed, 1 changed")
    assert line == (
        "  dense/dense/0: accuracy_device 90.00 % → 85.00 % (-5.00 pt); "
        "index_bytes 100 → 0 (-100, -100.00 %); flash_bytes 5,000 → 5,100 (+100, +2.00 %); also fw_build"
    )


def test_saved_comparison_round_trip() -> None:
    current = records_frame(
        [row(cycles=1100), row(entry="b", status="failed", cycles=None), row(entry="new")]
    )
    baseline = records_frame([row(), row(entry="b"), row(entry="gone")])
    comparison = compare(current, baseline, Tolerances())
    doc = json.loads(json.dumps(comparisons_to_json({TARGET: comparison})))
    back = comparisons_from_json(doc)[TARGET]
    assert back == comparison
    assert back.verdict == "regression" and back.row_status(RowKey(TARGET, "b", "dense", 0)) == "failed"
    with pytest.raises(ValueError, match="not a saved comparison"):
        comparisons_from_json({TARGET: {"rows": [{"metric": "cycles"}]}})


def test_baseline_of_another_suite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s" / f"{TARGET}.csv"
    path.parent.mkdir()
    write_records_csv(path, records_frame([row(), row(entry="b", suite="other")]))
    assert len(load_baseline(path)) == 2  # without a suite to check against
    with pytest.raises(InputError) as info:
        load_baseline(path, "s")
    assert (info.value.line, info.value.field) == (3, "suite")
    assert "row of suite 'other' in the baseline of suite 's'" in str(info.value)
