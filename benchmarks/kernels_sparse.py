"""Sparse (csr / nested) kernels vs the dense kernels in QEMU: instruction counts, storage and RAM.

Layers (issue 4): 3x3 conv 16x16x32→32, 3x3 conv 8x8x64→64, 1x1 conv 8x8x64→128, FC 1024→64, each
with random int8 data and nested 1x2-block masks at 70 / 80 / 90 % sparsity. For every layer it
builds and runs, in QEMU (mps2-an500, Cortex-M7, icount: retired instructions, not cycles):

- `dense`: the level's weights densified with zeros in the dense format (the "own dense" baseline;
  its count does not depend on the level),
- `csr`: one standalone sparse model per level,
- `nested`: one model with all three levels,

checking every output bit for bit against the host reference, and prints the targets of issue 4:
nested vs own dense on the 3x3 convs (>= 2.0x / 3.0x / 5.0x fewer instructions), nested vs csr at the
same level (<= 3 % more), storage of the nested model vs the three standalone ones (<= 0.55x their
sum, <= 1.05x the densest) and the RAM each format needs (static RAM of the linked image: arena with
the sparse scratch, buffers, and the measured stack high-water mark).

    .venv/bin/python benchmarks/kernels_sparse.py [--only conv3x3_16 ...] [--index compact]

`measure(qm, fmt, **pack_options)` is also the measuring tool of benchmarks/crossover.py and the
QEMU tests: layerbench.measure, with the packer's options passed through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerbench import TARGET, conv_layer, fc_layer, macs, measure, single_level

from harness.qmodel import QLayer, QModel

LEVELS = (0.7, 0.8, 0.9)


def densified(qm: QModel, level: int) -> QModel:
    """A one-level dense model with `level`'s weights (zeros where pruned): the own-dense baseline."""
    layers = [QLayer(**{**lay.__dict__, "weight": lay.weight_at(level), "masks": None}) for lay in qm.layers]
    return QModel(qm.name, qm.tensors, layers, qm.input, qm.output, (0.0,), qm.meta)


LAYERS: dict[str, tuple[str, Callable[[], QModel]]] = {
    "conv3x3_16": ("3x3 conv 16x16x32->32", lambda: conv_layer(16, 16, 32, 32, 3, levels=LEVELS)),
    "conv3x3_8": ("3x3 conv 8x8x64->64", lambda: conv_layer(8, 8, 64, 64, 3, levels=LEVELS)),
    "conv1x1": ("1x1 conv 8x8x64->128", lambda: conv_layer(8, 8, 64, 128, 1, levels=LEVELS)),
    "fc": ("FC 1024->64", lambda: fc_layer(1024, 64, levels=LEVELS)),
}
TARGETS_3X3 = {0: 2.0, 1: 3.0, 2: 5.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(LAYERS), help="measure only these layers")
    parser.add_argument("--index", choices=["fast", "compact"], default="fast", help="sparse index encoding")
    args = parser.parse_args(argv)
    names = args.only or list(LAYERS)
    print(f"QEMU {TARGET}: retired instructions (not cycles); sparse index '{args.index}'")
    total_nested, total_dense = 0, 0
    total_csr = [0] * len(LEVELS)
    for name in names:
        title, make = LAYERS[name]
        qm = make()
        dense = measure(densified(qm, 0), "dense")
        nested = measure(qm, "nested", index=args.index)
        csrs = [measure(single_level(qm, k), "csr", index=args.index) for k in range(len(LEVELS))]
        d_count = dense.layer_counts[0][0]
        print(f"\n{title}: dense {d_count:,} instructions ({d_count / macs(qm):.2f} per MAC)")
        print("  level sparsity     nested        csr  nested/csr  dense/nested  target      per kept MAC")
        for k, s in enumerate(LEVELS):
            n = nested.layer_counts[k][0]
            c = csrs[k].layer_counts[0][0]
            speed = d_count / n
            want = TARGETS_3X3.get(k) if name.startswith("conv3x3") else None
            mark = "" if want is None else f">= {want:.1f} " + ("ok" if speed >= want else "MISS")
            print(
                f"  {k:5d} {s:8.0%} {n:10,} {c:10,} {n / c - 1:+10.2%} {speed:12.2f}x  {mark:10s}"
                f"  {n / macs(qm, k):6.2f}"
            )
        nb = nested.storage["model_bytes"]
        cb = [m.storage["model_bytes"] for m in csrs]
        print(
            f"  storage: nested {nb:,} B; csr {' + '.join(f'{b:,}' for b in cb)} = {sum(cb):,} B; "
            f"dense {dense.storage['model_bytes']:,} B; nested/sum {nb / sum(cb):.3f} (<= 0.55), "
            f"nested/densest {nb / cb[0]:.3f} (<= 1.05)"
        )
        print(
            "  RAM (static + stack high-water): "
            + ", ".join(
                f"{label} {m.ram_bytes:,} B (arena {m.arena_bytes:,}, stack {m.stack_bytes:,})"
                for label, m in (("dense", dense), ("csr", csrs[0]), ("nested", nested))
            )
        )
        total_nested += nb
        total_dense += dense.storage["model_bytes"]
        total_csr = [t + b for t, b in zip(total_csr, cb, strict=True)]
    ratio_sum, ratio_densest = total_nested / sum(total_csr), total_nested / total_csr[0]
    print(
        f"\nall layers: nested {total_nested:,} B; csr {', '.join(f'{b:,}' for b in total_csr)} "
        f"(sum {sum(total_csr):,} B); dense {total_dense:,} B; nested/sum {ratio_sum:.3f}, "
        f"nested/densest {ratio_densest:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
