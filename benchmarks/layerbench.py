"""Instruction counts of single layers (or small models) in QEMU, per format and level.

The shared measuring tool of the kernel benchmarks: it builds an int8 model with the harness's own
packer and code generator, builds the firmware with PlatformIO, runs it in QEMU (mps2-an500,
Cortex-M7, icount) and reads the per-layer retired-instruction counts over the UART protocol. Every
measured output is also checked bit for bit against the host integer reference, so a fast wrong
kernel cannot produce a figure.

    from layerbench import conv_layer, measure
    qm = conv_layer(h=16, w=16, cin=32, cout=32, k=3, levels=(0.7, 0.8, 0.9))
    counts = measure(qm, "nested")    # {level: [per-layer instructions]}

Run as a script for a quick look: `.venv/bin/python benchmarks/layerbench.py`.
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import build, codegen, pack, reference, targets
from harness.elfsize import elf_sizes
from harness.paths import ROOT
from harness.protocol import DeviceClient
from harness.qmodel import QLayer, QModel, QTensor
from harness.requant import quantize_multiplier

TARGET = "qemu_mps2_an500"


def nested_block_masks(
    weight: np.ndarray,
    levels: tuple[float, ...],
    block: int,
    rng: np.random.Generator,
    reduction_axis: int = -1,
) -> np.ndarray:
    """Nested masks [len(levels), *weight.shape] from one random ranking of blocks of `block` weights
    along the reduction axis (benchmark data: which weights survive does not matter to the speed)."""
    w = np.moveaxis(weight, reduction_axis, -1)
    if w.shape[-1] % block:
        raise ValueError(f"block {block} does not divide the reduction size {w.shape[-1]}")
    n_blocks = w.size // block
    order = rng.permutation(n_blocks)  # position in the ranking of each block
    masks = []
    for sparsity in levels:
        keep = order < round(n_blocks * (1.0 - sparsity))
        mask = np.repeat(keep, block).reshape(w.shape)
        masks.append(np.moveaxis(mask, -1, reduction_axis))
    return np.stack(masks)


def _requant(cout: int, k_depth: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(v)) for v in rng.uniform(0.3, 1.0, cout) / (np.sqrt(k_depth) * 40)]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def conv_layer(
    h: int,
    w: int,
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    *,
    depthwise: bool = False,
    levels: tuple[float, ...] = (0.0,),
    block: int = 2,
    seed: int = 0,
) -> QModel:
    """One conv2d (or depthwise conv2d when `depthwise`) with 'same' padding, random int8 data and,
    for levels > 0, nested block masks along Cin."""
    rng = np.random.default_rng(seed)
    pad = k // 2
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if depthwise:
        weight = rng.integers(-127, 128, (k, k, cin), dtype=np.int8)
        cout, k_depth, op = cin, k * k, "dwconv2d"
    else:
        weight = rng.integers(-127, 128, (cout, k, k, cin), dtype=np.int8)
        k_depth, op = k * k * cin, "conv2d"
    mult, shift = _requant(cout, k_depth, rng)
    sparse = any(s > 0 for s in levels)
    masks = nested_block_masks(weight, levels, block, rng) if sparse and not depthwise else None
    layer = QLayer(
        name="layer",
        op=op,
        inputs=(0,),
        output=1,
        kernel=(k, k),
        stride=(stride, stride),
        padding=(pad, pad),
        weight=weight,
        bias=rng.integers(-2000, 2000, cout, dtype=np.int32),
        multiplier=mult,
        shift=shift,
        act_min=-128,
        act_max=127,
        masks=masks,
    )
    tensors = [QTensor("input", (h, w, cin), 0.05, -3), QTensor("output", (ho, wo, cout), 0.05, 5)]
    return QModel(name="bench", tensors=tensors, layers=[layer], input=0, output=1, levels=levels)


def fc_layer(
    cin: int, cout: int, *, levels: tuple[float, ...] = (0.0,), block: int = 2, seed: int = 0
) -> QModel:
    rng = np.random.default_rng(seed)
    weight = rng.integers(-127, 128, (cout, cin), dtype=np.int8)
    mult, shift = _requant(cout, cin, rng)
    masks = nested_block_masks(weight, levels, block, rng) if any(s > 0 for s in levels) else None
    layer = QLayer(
        name="layer",
        op="fc",
        inputs=(0,),
        output=1,
        weight=weight,
        bias=rng.integers(-2000, 2000, cout, dtype=np.int32),
        multiplier=mult,
        shift=shift,
        masks=masks,
    )
    tensors = [QTensor("input", (1, 1, cin), 0.05, -3), QTensor("output", (1, 1, cout), 0.05, 5)]
    return QModel(name="bench", tensors=tensors, layers=[layer], input=0, output=1, levels=levels)


def single_level(qm: QModel, level: int) -> QModel:
    """The standalone ('csr') view of one level: a one-level model with that level's mask."""
    layers = [
        QLayer(**{**lay.__dict__, "masks": None if lay.masks is None else lay.masks[level : level + 1]})
        for lay in qm.layers
    ]
    return QModel(qm.name, qm.tensors, layers, qm.input, qm.output, (qm.levels[level],), qm.meta)


@dataclass
class Measurement:
    layer_counts: dict[int, list[int]]  # level -> per-layer retired instructions
    totals: dict[int, int]  # level -> whole inference
    storage: dict[str, int]
    flash_bytes: int
    ram_bytes: int  # static RAM (arena incl. scratch, buffers) + measured stack high-water mark
    arena_bytes: int
    stack_bytes: int
    codegen: codegen.CodegenResult  # what was emitted (symbol sizes, storage, arena)
    elf_symbols: dict[str, int]  # data symbol sizes of the linked image


def measure(
    qm: QModel, fmt: str, *, seed: int = 1, levels: list[int] | None = None, **pack_options: Any
) -> Measurement:
    """Build `qm` packed as `fmt` (with `pack_options`), run each level (all, or `levels`) once in
    QEMU on a random input and return the counts; AssertionError when an output differs from the
    host reference."""
    target = targets.load_targets(ROOT)[TARGET]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        packed = pack.pack(qm, fmt, **pack_options)
        result = codegen.generate(packed, qm, folder / "model")
        image = build.build_firmware(
            ROOT, target, folder / "model", "bench", folder / "build", folder / "build.log"
        )
        sizes = elf_sizes(image.elf)
        x = np.random.default_rng(seed).integers(-128, 128, qm.tensors[qm.input].shape, dtype=np.int8)
        backend = targets.make_backend(target, ROOT, timeout_s=120)
        counts, totals = {}, {}
        with backend.session(image.elf) as link:
            client = DeviceClient(link.port, timeout=120)
            client.hello()
            for level in levels if levels is not None else range(len(qm.levels)):
                client.select_level(level)
                client.load_input(x.tobytes())
                totals[level] = client.infer(1, 0, zlib.crc32(x.tobytes()))[0]
                counts[level] = client.layer_cycles()
                out = np.frombuffer(client.read_output(), np.int8)
                want = reference.run_int8(qm, x[None], level=level)[0]
                assert np.array_equal(out, want), (
                    f"{fmt} level {level}: device output differs from the reference"
                )
            stack = client.mem().get("stack", 0)
    return Measurement(
        counts,
        totals,
        result.storage,
        sizes.flash_bytes,
        sizes.ram_bytes + stack,
        result.arena_bytes,
        stack,
        result,
        sizes.symbol_sizes,
    )


def macs(qm: QModel, level: int | None = None) -> int:
    """Multiply-accumulates of the weighted layers: every weight once per output pixel (dense), or
    only the weights kept at `level`."""
    total = 0
    for lay in qm.layers:
        if lay.weight is None:
            continue
        out = qm.tensors[lay.output]
        kept = lay.weight.size if level is None or lay.masks is None else int(lay.masks[level].sum())
        total += out.shape[0] * out.shape[1] * kept
    return total


if __name__ == "__main__":
    qm = conv_layer(16, 16, 32, 32)
    m = measure(qm, "dense")
    print(
        f"dense 3x3 conv 16x16x32->32: {m.layer_counts[0][0]:,} instructions, "
        f"{m.layer_counts[0][0] / macs(qm):.2f} per MAC"
    )
