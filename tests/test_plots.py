"""Plots: what each one draws (the data behind it) and that real PNG files come out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.image import imread

from harness import plots
from harness.records import records_frame

QEMU, NUCLEO = "qemu_mps2_an500", "nucleo_f767zi"
LAYERS = "conv1=40000;conv2=150000;pool=20000;conv3=180000;gap=5000;fc=5000"


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "suite": "s", "entry": "dense", "trainer": "dense", "arch": "digits_cnn", "dataset": "digits",
        "format": "dense", "level": 0, "sparsity": 0.0, "target": QEMU, "cycle_source": "qemu-icount",
        "cycles": 400_000, "accuracy_host": 0.98, "accuracy_device": 0.98, "samples": 360,
        "model_bytes": 6944, "weight_bytes": 6152, "index_bytes": 0, "meta_bytes": 792, "model_hash": "d",
        "flash_bytes": 30_000, "ram_bytes": 9_000, "status": "ok", "cycles_per_layer": LAYERS,
    }  # fmt: skip
    base.update(over)
    return base


def suite_frame() -> pd.DataFrame:
    """dense, nested (one model, 3 levels), standalone csr (3 models), dsnn, a failed entry, and the
    dense model on a board too."""
    rows = [row(), row(target=NUCLEO, cycle_source="dwt", cycles=900_000)]
    for lv, (sp, cycles, acc) in enumerate(
        [(0.7, 200_000, 0.975), (0.8, 150_000, 0.97), (0.9, 110_000, 0.95)]
    ):
        common = {"level": lv, "sparsity": sp}
        rows.append(
            row(
                entry="nested",
                trainer="nested",
                format="nested",
                cycles=cycles,
                accuracy_device=acc,
                model_hash="n",
                model_bytes=3500,
                weight_bytes=2000,
                index_bytes=1000,
                meta_bytes=500,
                **common,
            )
        )
        rows.append(
            row(
                entry="standalone",
                trainer="standalone",
                format="csr",
                cycles=cycles - 5000,
                accuracy_device=acc + 0.003,
                model_hash=f"s{lv}",
                model_bytes=3000 - 500 * lv,
                weight_bytes=1800 - 300 * lv,
                index_bytes=900 - 150 * lv,
                meta_bytes=300 - 50 * lv,
                **common,
            )
        )
        rows.append(
            row(
                entry="dsnn",
                trainer="dsnn",
                format="nested",
                cycles=cycles + 1000,
                accuracy_device=acc - 0.01,
                model_hash="x",
                model_bytes=3500,
                weight_bytes=2000,
                index_bytes=1000,
                meta_bytes=500,
                **common,
            )
        )
    rows.append(
        row(
            entry="crash",
            status="failed",
            cycles=None,
            accuracy_device=None,
            cycles_per_layer=None,
            model_hash="c",
            error="firmware fault: pc=0x00000100",
        )
    )
    return records_frame(rows)  # fmt: skip


def test_pareto_series_per_kind() -> None:
    series = {s.entry: s for s in plots.pareto_series(suite_frame(), QEMU, "qemu-icount")}
    assert list(series) == ["dense", "nested", "standalone", "dsnn"]  # the failed entry has no point
    assert series["dense"].kind == "dense" and not series["dense"].connected
    assert series["nested"].kind == "nested" and series["nested"].connected  # one model, a line
    assert series["dsnn"].kind == "nested" and series["dsnn"].label == "dsnn (dsnn, nested)"
    assert series["standalone"].kind == "standalone" and not series["standalone"].connected
    nested = series["nested"].points
    assert [(p.level, p.cycles, p.accuracy, p.sparsity) for p in nested] == [
        (0, 200_000, 0.975, 0.7),
        (1, 150_000, 0.97, 0.8),
        (2, 110_000, 0.95, 0.9),
    ]


def test_cycle_sources_never_share_a_plot(tmp_path: Path) -> None:
    frame = suite_frame()
    board = plots.pareto_series(frame, NUCLEO, "dwt")
    assert [(s.entry, [p.cycles for p in s.points]) for s in board] == [("dense", [900_000])]
    assert plots.pareto_series(frame, QEMU, "dwt") == []
    # one target whose rows come from two sources (say, re-run under another counter): two plots
    mixed = records_frame([row(), row(entry="other", cycle_source="renode-dwt", cycles=123)])
    files = plots.run_plots(mixed, tmp_path)[QEMU]
    assert sorted(files.pareto) == ["qemu-icount", "renode-dwt"]
    assert {p.name for p in files.pareto.values()} == {
        "pareto_qemu_mps2_an500_qemu-icount.png",
        "pareto_qemu_mps2_an500_renode-dwt.png",
    }
    assert [s.entry for s in plots.pareto_series(mixed, QEMU, "renode-dwt")] == ["other"]


def test_pareto_front() -> None:
    p = plots.Point
    points = [p(100, 0.90, 0, 0.9), p(150, 0.95, 1, 0.8), p(160, 0.94, 2, 0.7), p(400, 0.98, 0, 0.0)]
    assert plots.pareto_front(points) == [points[0], points[1], points[3]]


def test_storage_bars_count_each_model_once() -> None:
    bars = {b.entry: b for b in plots.storage_bars(suite_frame(), QEMU)}
    assert (bars["nested"].models, bars["nested"].total) == (1, 3500)  # one model serves 3 levels
    assert (bars["standalone"].models, bars["standalone"].total) == (3, 3000 + 2500 + 2000)  # the ensemble
    assert (bars["standalone"].weight_bytes, bars["standalone"].index_bytes) == (4500, 2250)
    assert (bars["dense"].models, bars["dense"].total) == (1, 6944)
    assert bars["crash"].total == 6944  # storage is known even when the run failed
    assert bars["standalone"].label == "standalone (csr, 3 models)"


def test_layer_bars() -> None:
    bars = plots.layer_bars(suite_frame(), QEMU)
    assert [b.label for b in bars][:4] == ["dense L0", "nested L0", "standalone L0", "dsnn L0"]
    assert len(bars) == 10  # every measured row of the target, none of the failed one
    assert bars[0].counts == {
        "conv1": 40000,
        "conv2": 150000,
        "pool": 20000,
        "conv3": 180000,
        "gap": 5000,
        "fc": 5000,
    }


def assert_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert float(np.std(image[..., :3])) > 0.01  # something is drawn


def test_run_plots_write_pngs(tmp_path: Path) -> None:
    files = plots.run_plots(suite_frame(), tmp_path)
    assert set(files) == {QEMU, NUCLEO}
    qemu = files[QEMU]
    assert qemu.pareto["qemu-icount"].name == "pareto_qemu_mps2_an500.png"
    assert qemu.storage is not None and qemu.storage.name == "storage_qemu_mps2_an500.png"
    assert qemu.layers["qemu-icount"].name == "layers_qemu_mps2_an500.png"
    for path in [*qemu.pareto.values(), *qemu.layers.values(), qemu.storage, *files[NUCLEO].pareto.values()]:
        assert_png(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_nothing_measured_no_plot(tmp_path: Path) -> None:
    failed = records_frame([row(status="failed", cycles=None, accuracy_device=None, cycles_per_layer=None)])
    files = plots.run_plots(failed, tmp_path)[QEMU]
    assert files.pareto == {} and files.layers == {}
    assert files.storage is not None  # the model's size is still known
    assert plots.pareto_plot(failed, QEMU, "qemu-icount", tmp_path / "p.png") is None


def test_compare_plot(tmp_path: Path) -> None:
    before = suite_frame()
    after = before.copy()
    after["cycles"] = (after["cycles"] * 0.9).round().astype("Int64")
    path = plots.compare_pareto_plot({"run1": before, "run2": after}, QEMU, "qemu-icount", tmp_path / "c.png")
    assert path is not None
    assert_png(path)
    assert plots.compare_pareto_plot({"run1": before}, QEMU, "dwt", tmp_path / "none.png") is None
