"""Whole-network instructions per inference per level, and the memory each storage format needs.

Models: the quickstart architecture (digits_cnn, 8x8x1, 10 classes) and MobileNetV1 (width 0.5,
32x32x3, 10 classes, CIFAR-style stride-1 stem). Weights are random (He initialisation, random
batch-norm statistics) and quantized by the harness's own quantizer on calibration inputs (digits:
the dataset's training images; MobileNet: uniform noise): instruction counts depend on shapes and
on which requantization path the scales select, not on what the network learned. The sparse
levels 0.7 / 0.8 / 0.9 use nested 1x2 block masks (layerbench.nested_block_masks, blocks along
the input channels) on the layers the trainers sparsify by default: standard and pointwise
convolutions after the first, and fully connected layers; the first convolution and the depthwise
layers stay dense.

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

from layerbench import macs, measure, nested_block_masks, single_level

from harness.errors import NestbenchError
from harness.pack import FORMATS
from harness.qmodel import QModel
from harness.quantize import quantize
from trainers.archs import ARCHS
from trainers.datasets import load_dataset
from trainers.graph import INPUT, Conv2d, Linear, NetSpec, TrainedModel

LEVELS = (0.7, 0.8, 0.9)
BLOCK = 2


def sparsified(node: Conv2d | Linear) -> bool:
    """The trainers' default: every Linear and every non-depthwise conv except the first."""
    return isinstance(node, Linear) or (not node.depthwise and node.input != INPUT)


def random_trained(spec: NetSpec, levels: tuple[float, ...], seed: int = 0) -> TrainedModel:
    rng = np.random.default_rng(seed)
    shapes = spec.shapes()
    params: dict[str, dict[str, np.ndarray]] = {}
    masks: dict[str, np.ndarray] = {}
    for node in spec.nodes:
        if isinstance(node, Conv2d):
            cin = 1 if node.depthwise else shapes[node.input][2]
            shape: tuple[int, ...] = (node.out_channels, cin, node.kernel, node.kernel)
            fan_in = cin * node.kernel * node.kernel
            p = {"weight": (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)}
            if node.bias:
                p["bias"] = rng.normal(0, 0.1, node.out_channels).astype(np.float32)
            if node.batchnorm:
                co = node.out_channels
                p["bn_weight"] = rng.uniform(0.6, 1.4, co).astype(np.float32)
                p["bn_bias"] = rng.normal(0.0, 0.2, co).astype(np.float32)
                p["bn_mean"] = rng.normal(0.0, 0.2, co).astype(np.float32)
                p["bn_var"] = rng.uniform(0.5, 1.5, co).astype(np.float32)
                p["bn_eps"] = np.array(1e-5, dtype=np.float32)
        elif isinstance(node, Linear):
            fan_in = int(np.prod(shapes[node.input]))
            shape = (node.out_features, fan_in)
            p = {
                "weight": (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32),
                "bias": rng.normal(0, 0.1, node.out_features).astype(np.float32),
            }
        else:
            continue
        params[node.name] = p
        if any(s > 0 for s in levels) and sparsified(node):
            masks[node.name] = nested_block_masks(p["weight"], levels, BLOCK, rng, reduction_axis=1)
    return TrainedModel(spec, params, levels, masks)


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
    dense = quantize(random_trained(spec, (0.0,)), calib, input_range, name=spec.name)
    nested = quantize(random_trained(spec, LEVELS), calib, input_range, name=spec.name)
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
