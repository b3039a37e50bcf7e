"""Instructions per MAC of the dense int8 kernels in QEMU (mps2-an500, Cortex-M7, icount).

Each layer is built alone with benchmarks/layerbench.py (random int8 data, 'same' padding), run once
in QEMU and checked bit for bit against the host reference; the figure is the layer's retired
instructions (requantization, im2col and loop overhead included) over its multiply-accumulates.
These are instruction counts, not cycles (kernels.md §3).

    .venv/bin/python benchmarks/kernels_dense.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerbench import conv_layer, fc_layer, macs, measure

from harness.qmodel import QModel

# name -> model builder; the first five are issue 4's benchmark layers
LAYERS: dict[str, Callable[[], QModel]] = {
    "conv3x3 16x16x32->32": lambda: conv_layer(16, 16, 32, 32, k=3),
    "conv3x3 8x8x64->64": lambda: conv_layer(8, 8, 64, 64, k=3),
    "conv1x1 8x8x64->128": lambda: conv_layer(8, 8, 64, 128, k=1),
    "dwconv3x3 16x16x64": lambda: conv_layer(16, 16, 64, 64, k=3, depthwise=True),
    "fc 1024->64": lambda: fc_layer(1024, 64),
    "first conv3x3 32x32x3->16": lambda: conv_layer(32, 32, 3, 16, k=3),
    "first conv3x3/2 32x32x3->16": lambda: conv_layer(32, 32, 3, 16, k=3, stride=2),
    "conv3x3/2 16x16x32->64": lambda: conv_layer(16, 16, 32, 64, k=3, stride=2),
    "dwconv3x3/2 16x16x64": lambda: conv_layer(16, 16, 64, 64, k=3, stride=2, depthwise=True),
    "digits conv1 8x8x1->8": lambda: conv_layer(8, 8, 1, 8, k=3),
}


def run(names: list[str]) -> list[tuple[str, int, int]]:
    """(name, instructions, MACs) of each named layer."""
    rows = []
    for name in names:
        qm = LAYERS[name]()
        m = measure(qm, "dense")
        rows.append((name, m.layer_counts[0][0], macs(qm)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=list(LAYERS), help="measure only these layers")
    args = parser.parse_args(argv)
    names = args.only or list(LAYERS)
    print(f"{'layer':30} {'instructions':>13} {'MACs':>11} {'instr/MAC':>9}")
    for name, count, n_macs in run(names):
        print(f"{name:30} {count:>13,} {n_macs:>11,} {count / n_macs:>9.3f}")


if __name__ == "__main__":
    main()
