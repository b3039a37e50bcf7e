"""Pre-training size estimates (harness/estimate.py), checked against what the packer, the arena
planner and the board manifests really say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness import codegen, pack, quantize
from harness.estimate import (
    DEFAULT_OVERHEAD,
    FirmwareOverhead,
    activation_arena,
    check_fits,
    estimate,
    estimate_for,
)
from harness.targets import load_targets
from trainers.archs import ARCHS
from trainers.graph import TrainedModel
from trainers.sparsity import nested_masks, select_layers
from trainers.torchnet import build_module, export_params

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.7, 0.8, 0.9)


@pytest.fixture(scope="module")
def f767() -> tuple[int, int]:
    target = load_targets(ROOT)["nucleo_f767zi"]
    return target.max_flash, target.max_ram


@pytest.mark.parametrize(
    ("arch", "shape", "options"),
    [
        ("digits_cnn", (8, 8, 1), {}),
        ("layer_zoo", (12, 12, 3), {}),
        ("resnet8", (16, 16, 3), {"width": 0.25}),
    ],
)
def test_dense_estimate_equals_the_packed_model_and_the_planned_arena(
    arch: str, shape: tuple[int, int, int], options: dict[str, float]
) -> None:
    spec = ARCHS[arch](shape, 4, **options)
    model = TrainedModel(spec, export_params(build_module(spec), spec))
    rng = np.random.default_rng(0)
    qm = quantize.quantize(model, rng.uniform(0, 1, (8, *shape)).astype(np.float32), (0.0, 1.0), name=arch)
    packed = pack.pack(qm, "dense")
    est = estimate(spec, LEVELS, "dense")
    assert est.detail["models"] == [
        {
            "model_bytes": packed.model_bytes,
            "weight_bytes": packed.weight_bytes,
            "index_bytes": 0,
            "meta_bytes": packed.meta_bytes,
        }
    ]
    assert est.flash_bytes == packed.model_bytes
    assert est.ram_bytes == activation_arena(spec) == codegen.plan_qmodel_arena(qm).size


@pytest.mark.parametrize(
    ("arch", "shape", "options", "block", "tolerance"),
    [
        ("digits_cnn", (8, 8, 1), {}, 2, 0.02),
        ("mobilenet_v1", (32, 32, 3), {"width": 0.25}, 2, 0.02),
        ("resnet8", (16, 16, 3), {"width": 0.5}, 4, 0.02),
        ("digits_cnn", (8, 8, 1), {}, 1, 0.05),  # lone weights: pair occupancy is statistical
    ],
)
def test_sparse_estimates_track_the_packer(
    arch: str, shape: tuple[int, int, int], options: dict[str, float], block: int, tolerance: float
) -> None:
    spec = ARCHS[arch](shape, 10, **options)
    torch.manual_seed(0)
    params = export_params(build_module(spec), spec)
    masks = {
        n: nested_masks(torch.as_tensor(params[n]["weight"]), LEVELS, block).numpy()
        for n in select_layers(spec)
    }
    calib = np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype(np.float32)

    def packed(levels: tuple[float, ...], m: dict[str, np.ndarray], fmt: str) -> tuple[int, int]:
        qm = quantize.quantize(TrainedModel(spec, params, levels, m), calib, (0.0, 1.0), name=arch)
        p = pack.pack(qm, fmt)
        scratch = {lay.index: lay.scratch_bytes for lay in p.layers if lay.scratch_bytes > 0}
        return p.model_bytes, codegen.plan_qmodel_arena(qm, scratch).size

    est = estimate(spec, LEVELS, "nested", block=block)
    model_bytes, arena = packed(LEVELS, masks, "nested")
    assert est.flash_bytes == pytest.approx(model_bytes, rel=tolerance)
    # tensors plus the sparse kernels' scratch, as codegen plans them (close, not exact: the
    # kernels' scratch layout may grow without the estimate knowing)
    assert est.ram_bytes == pytest.approx(arena, rel=0.05)
    csr = estimate(spec, LEVELS, "csr", block=block).detail["models"]
    for k, s in enumerate(LEVELS):
        real, _ = packed((s,), {n: v[k : k + 1] for n, v in masks.items()}, "csr")
        assert csr[k]["model_bytes"] == pytest.approx(real, rel=tolerance)


def test_sparse_formats_store_less_and_nested_beats_the_standalone_family() -> None:
    spec = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.5)
    dense = estimate(spec, LEVELS, "dense")
    csr = estimate(spec, LEVELS, "csr")
    nested = estimate(spec, LEVELS, "nested")
    assert len(csr.detail["models"]) == 3
    per_level = [m["model_bytes"] for m in csr.detail["models"]]
    assert per_level == sorted(per_level, reverse=True)  # sparser levels store less
    assert csr.flash_bytes == per_level[0]  # one firmware image holds one standalone model
    assert nested.flash_bytes < csr.detail["total_model_bytes"] < 2 * dense.flash_bytes
    # one nested model: the densest standalone model's blocks plus its per-level tables
    assert per_level[0] < nested.flash_bytes < 1.1 * per_level[0]
    assert nested.detail["models"][0]["weight_bytes"] == csr.detail["models"][0]["weight_bytes"]
    # the 70 % level keeps about 30 % of the sparsified weights
    sparse_w = nested.detail["models"][0]["weight_bytes"]
    assert 0.25 * dense.flash_bytes < sparse_w < 0.35 * dense.flash_bytes
    assert dense.ram_bytes < csr.ram_bytes == nested.ram_bytes  # the sparse kernels' scratch
    # block size and layer selection follow the trainers' options
    assert (
        estimate(spec, LEVELS, "nested", block=4).detail["models"][0]["index_bytes"]
        < (nested.detail["models"][0]["index_bytes"])
    )
    only_fc = estimate(spec, LEVELS, "nested", sparsify=["linear"])
    assert only_fc.detail["sparsified_layers"] == ["fc"]
    assert only_fc.flash_bytes > nested.flash_bytes


def test_mobilenet_against_the_f767(f767: tuple[int, int]) -> None:
    max_flash, max_ram = f767
    assert (max_flash, max_ram) == (2 * 1024 * 1024, 128 * 1024)
    full = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=1.0)
    half = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.5)
    # width 1.0 dense (~3.3 MB of int8 weights) cannot fit the 2 MB flash
    message = check_fits(estimate(full, LEVELS, "dense"), max_flash, max_ram)
    assert message is not None and message.startswith("the model does not fit (dense format")
    assert "flash: needs about" in message and "2,097,152 B" in message and "RAM" not in message
    # width 0.5 fits in every format
    for fmt in ("dense", "csr", "nested"):
        assert check_fits(estimate(half, LEVELS, fmt), max_flash, max_ram) is None
    # a 64x64 input keeps the stem at stride 1: 128 KB maps overflow the 128 KB DTCM
    big = ARCHS["mobilenet_v1"]((64, 64, 3), 10, width=0.5)
    est = estimate(big, LEVELS, "nested")
    message = check_fits(est, max_flash, max_ram)
    assert message is not None and "RAM: needs about" in message and f"{est.ram_bytes:,} B" in message


def test_estimate_for_reads_the_trainer_options() -> None:
    from trainers.nested import NestedOptions

    spec = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.25)
    options = NestedOptions(block=4, keep_dense=("fc",))
    got = estimate_for(spec, LEVELS, "nested", options)
    assert got == estimate(spec, LEVELS, "nested", block=4, keep_dense=("fc",))
    assert "fc" not in got.detail["sparsified_layers"]
    assert estimate_for(spec, LEVELS, "nested", None) == estimate(spec, LEVELS, "nested")


def test_check_fits_counts_the_firmware_overhead() -> None:
    spec = ARCHS["digits_cnn"]((8, 8, 1), 10)
    est = estimate(spec, LEVELS, "nested")
    room = est.flash_bytes + DEFAULT_OVERHEAD.flash
    assert check_fits(est, room, 10**6) is None
    assert check_fits(est, room - 1, 10**6) is not None
    assert check_fits(est, room - 1, 10**6, FirmwareOverhead(flash=0, ram=0)) is None
    assert check_fits(est, 0, 0) is None  # unknown limits are not checked


def test_unknown_format_and_selection_are_errors() -> None:
    spec = ARCHS["digits_cnn"]((8, 8, 1), 10)
    with pytest.raises(ValueError, match=r"^format: unknown format 'coo'"):
        estimate(spec, LEVELS, "coo")
    with pytest.raises(ValueError, match=r"^sparsify: "):
        estimate(spec, LEVELS, "nested", sparsify=["conv9"])
