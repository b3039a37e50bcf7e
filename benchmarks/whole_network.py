"""Whole-network instructions per inference per level, and the memory each storage format needs.

Models: the quickstart architecture (digits_cnn, 8x8x1, 10 classes) and MobileNetV1 (width 0.5,
32x32x3, 10 classes, CIFAR-style stride-1 stem). Weights are random (He initialisation, random
batch-norm statistics) and quantized by the harness's own quantizer on calibration inputs (digits:
the dataset's training images; MobileNet: uniform noise): instruction counts depend on shapes and
on which requantization path the scales select, not on what the network learned. The sparse
levels 0.7 / 0.8 / 0.9 use nested 1x2 block masks ranked on the random weights, on the layers the
trainers sparsify by default (trainers.untrained.random_model: standard and pointwise convolutions
after the first, and fully connected layers; the first convolution and the depthwise layers stay
dense).

Formats: every entry of harness.pack.FORMATS when the script runs. `dense` runs the unmasked model
(its cost does not depend on sparsity); `csr` runs one standalone model per level; any other
format (`nested`) runs the one multi-level model at every level. Each run is built with PlatformIO,
executed in QEMU (mps2-an500, Cortex-M7, icount: retired instructions, not cycles) and every output
is checked bit for bit against the host reference (layerbench.measure). RAM is the linked image's
(.data + .bss incl. the activation arena + the reserved stack); flash includes the model.

    .venv/bin/python benchmarks/whole_network.py [--model digits_cnn|mobilenet_v1 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerbench import macs, measure, single_level

from harness.errors import NestbenchError
from harness.pack import FORMATS
from harness.qmodel import QModel
from harness.quantize import quantize
from trainers.archs import ARCHS
from trainers.datasets import load_dataset
from trainers.untrained import random_model

LEVELS = (0.7, 0.8, 0.9)


def build_models(name: str) -> tuple[QModel, QModel]:
    """(dense model, nested multi-level model) of one architecture."""
    if name == "digits_cnn":
        ds = load_dataset("digits")
        spec = ARCHS[name](ds.x_train.shape[1:], ds.num_classes)
        calib, input_range = ds.x_train[:256], ds.input_range
    else:
        spec = ARCHS[name]((32, 32, 3), 10, width=0.5)
        calib = np.random.default_rng(5).uniform(0.0, 1.0, (64, 32, 32, 3)).astype(np.float32)
        input_range = (0.0, 1.0)
    dense = quantize(random_model(spec), calib, input_range, name=spec.name)
    nested = quantize(random_model(spec, LEVELS), calib, input_range, name=spec.name)
    return dense, nested


def runs(fmt: str, dense: QModel, nested: QModel) -> list[tuple[QModel, list[tuple[int, int]]]]:
    """The builds of one format: (model, [(level reported, level run in that model)])."""
    if fmt == "dense":
        return [(dense, [(0, 0)])]
    if fmt == "csr":
        return [(single_level(nested, k), [(k, 0)]) for k in range(len(nested.levels))]
    return [(nested, [(k, k) for k in range(len(nested.levels))])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="*", choices=["digits_cnn", "mobilenet_v1"])
    args = parser.parse_args(argv)
    print(f"formats: {', '.join(FORMATS)}")
    header = (
        f"{'model':14} {'format':7} {'level':>5} {'sparsity':>8} {'instructions':>13} {'instr/MAC':>9} "
        f"{'model B':>9} {'flash B':>9} {'RAM B':>8}"
    )
    for name in args.model or ["digits_cnn", "mobilenet_v1"]:
        dense, nested = build_models(name)
        dense_macs = macs(dense)
        print(f"\n{name}: {dense_macs:,} MACs dense, {len(dense.layers)} layers")
        print(header)
        for fmt in FORMATS:
            for qm, levels in runs(fmt, dense, nested):
                try:
                    m = measure(qm, fmt)
                except (ValueError, NestbenchError) as exc:  # a format that cannot run this model (yet)
                    print(f"{name:14} {fmt:7} skipped: {str(exc).splitlines()[0]}")
                    break
                for level, run_level in levels:
                    total = m.totals[run_level]
                    sparsity = 0.0 if fmt == "dense" else nested.levels[level]
                    print(
                        f"{name:14} {fmt:7} {level:>5} {sparsity:>8.0%} {total:>13,} "
                        f"{total / dense_macs:>9.3f} {m.storage['model_bytes']:>9,} {m.flash_bytes:>9,} "
                        f"{m.ram_bytes:>8,}"
                    )


if __name__ == "__main__":
    main()
