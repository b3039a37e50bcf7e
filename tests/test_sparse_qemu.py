"""The sparse formats end to end on the Cortex-M7 in QEMU: the M7 build (SMLAD / hand-scheduled block
loop, fast requantization) of a small network stored as nested (every level), as nested with the
compact index and dense copies, and as csr, each output bit for bit equal to the host reference
(benchmarks/layerbench.measure asserts it), with the ELF's symbols equal to the storage figures
and the pack-time fit estimate an upper bound of the linked image."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harness import targets
from harness.fit import fit
from harness.qmodel import QLayer, QModel, QTensor
from harness.requant import quantize_multiplier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from layerbench import Measurement, measure  # noqa: E402

pytestmark = pytest.mark.e2e
LEVELS = (0.5, 0.75, 0.9)
NEVER_DENSE = {"conv": 9.0, "conv1x1": 9.0, "fc": 9.0}


def chain(seed: int = 5) -> QModel:
    """16x16x5 → conv 3x3 (6, block 1, ReLU: runs of 16 pixels) → conv 1x1 (8, block 4: one
    256-pixel run, split in chunks) → conv 3x3 stride 2 (7, block 2) → conv 3x3 no padding (6:
    6-pixel rows, leftover pixels) → depthwise (dense) → fc (10): odd channel counts and every mask
    granularity on every path of the M7 kernel."""
    rng = np.random.default_rng(seed)
    shapes = [(16, 16, 5), (16, 16, 6), (16, 16, 8), (8, 8, 7), (6, 6, 6), (6, 6, 6), (1, 1, 10)]
    tensors = [QTensor(f"t{i}", s, 0.05, int(rng.integers(-20, 20))) for i, s in enumerate(shapes)]
    specs = [
        ("c1", "conv2d", 3, 1, 1, 1),
        ("pw", "conv2d", 1, 1, 0, 4),
        ("c2", "conv2d", 3, 2, 1, 2),
        ("c3", "conv2d", 3, 1, 0, 2),
        ("dw", "dwconv2d", 3, 1, 1, 0),
        ("fc", "fc", 1, 1, 0, 2),
    ]
    layers = []
    for i, (name, op, k, stride, pad, block) in enumerate(specs):
        cin, cout = shapes[i][2], shapes[i + 1][2]
        if op == "dwconv2d":
            shape: tuple[int, ...] = (k, k, cin)
        elif op == "fc":
            shape = (cout, shapes[i][0] * shapes[i][1] * cin)
        else:
            shape = (cout, k, k, cin)
        weight = rng.integers(-127, 128, shape, dtype=np.int8)
        depth = int(np.prod(shape[1:])) if op != "dwconv2d" else k * k
        pairs = [quantize_multiplier(float(v)) for v in rng.uniform(0.3, 1.0, cout) / (np.sqrt(depth) * 30)]
        masks = None
        if block:
            n_blocks = weight.size // block
            rank = rng.permutation(n_blocks)
            masks = np.stack(
                [np.repeat(rank < round(n_blocks * (1 - s)), block).reshape(shape) for s in LEVELS]
            )
        zp_out = tensors[i + 1].zero_point
        layers.append(
            QLayer(
                name=name,
                op=op,  # type: ignore[arg-type]
                inputs=(i,),
                output=i + 1,
                kernel=(k, k),
                stride=(stride, stride),
                padding=(pad, pad),
                weight=weight,
                bias=rng.integers(-3000, 3000, cout).astype(np.int32),
                multiplier=np.array([m for m, _ in pairs], np.int32),
                shift=np.array([s for _, s in pairs], np.int32),
                act_min=zp_out if name == "c1" else -128,
                act_max=127,
                masks=masks,
            )
        )
    return QModel("chain", tensors, layers, 0, len(tensors) - 1, LEVELS)


def single_level(qm: QModel, level: int) -> QModel:
    layers = [
        QLayer(**{**lay.__dict__, "masks": None if lay.masks is None else lay.masks[level : level + 1]})
        for lay in qm.layers
    ]
    return QModel(qm.name, qm.tensors, layers, qm.input, qm.output, (qm.levels[level],))


def _check_image(m: Measurement) -> None:
    for symbol, nbytes in m.codegen.symbol_sizes.items():
        assert m.elf_symbols.get(symbol) == nbytes, symbol
    target = targets.load_targets(ROOT)["qemu_mps2_an500"]
    estimate = fit(m.codegen, target)
    assert m.flash_bytes <= estimate.flash_need
    assert m.ram_bytes - m.stack_bytes + 16 * 1024 <= estimate.ram_need


def test_nested_every_level_bit_exact_in_qemu() -> None:
    m = measure(chain(), "nested", crossover=NEVER_DENSE)
    assert sorted(m.totals) == [0, 1, 2]
    assert m.storage["index_bytes"] > 0
    _check_image(m)


def test_nested_compact_with_dense_copies_bit_exact_in_qemu() -> None:
    # a 2000-byte scratch budget cuts the 16x16 layers into bands
    crossover = {"conv": 0.4, "conv1x1": 0.4, "fc": 0.4}
    m = measure(
        chain(seed=6), "nested", index="compact", crossover=crossover, dense_copies=True, scratch_budget=2000
    )
    assert sorted(m.totals) == [0, 1, 2]
    assert any(name.startswith("nb_dc_") for name in m.codegen.symbol_sizes)  # level 0 runs dense
    _check_image(m)


def test_csr_bit_exact_in_qemu() -> None:
    m = measure(single_level(chain(seed=7), 2), "csr", crossover=NEVER_DENSE)
    assert list(m.totals) == [0]
    _check_image(m)
