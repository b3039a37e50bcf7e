"""Measure where the dense kernel overtakes the sparse one, and write harness/crossover.json.

For each layer kind the packer distinguishes ("conv": k x k convolutions, "conv1x1", "fc") this
runs one layer in QEMU (mps2-an500, Cortex-M7, icount: retired instructions) densely and sparsely
over block densities 10 %, 20 %, ..., 100 % (1x2 blocks, the trainers' default), with every output
checked bit for bit against the host reference, for both sparse index encodings (fast and
compact). The sparse sweep is one nested model with a level per density (level k is exactly the
prefix a csr model of that density would hold, so the counts are the csr kernel's;
benchmarks/kernels_sparse.py checks nested = csr). The crossover of a kind is the density where
sparse / dense instructions reaches 1, linearly interpolated between measured points; 1.0 when the
sparse kernel is still faster fully dense (the layer then never runs dense). The packer
(harness/pack.py) reads the result ("crossover" for the fast index, "crossover_compact"): a
(layer, level) whose block density is above its kind's crossover runs the dense kernel on a dense
copy.

    .venv/bin/python benchmarks/crossover.py            # measure, print, write harness/crossover.json
    .venv/bin/python benchmarks/crossover.py --dry-run  # measure and print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels_sparse import densified, measure
from layerbench import conv_layer, fc_layer

from harness.pack import CROSSOVER_FILE
from harness.paths import ROOT
from harness.qmodel import QModel

DENSITIES = tuple(round(0.1 * i, 1) for i in range(1, 11))
SPARSE_ONLY = {"conv": 9.0, "conv1x1": 9.0, "fc": 9.0}  # a crossover no density reaches
INDEXES = ("fast", "compact")
KEYS = {"fast": "crossover", "compact": "crossover_compact"}  # the tables in harness/crossover.json
LAYERS: dict[str, list[tuple[str, Callable[[tuple[float, ...]], QModel]]]] = {
    "conv": [
        ("3x3 conv 16x16x32->32", lambda lv: conv_layer(16, 16, 32, 32, 3, levels=lv)),
        ("3x3 conv 8x8x64->64", lambda lv: conv_layer(8, 8, 64, 64, 3, levels=lv)),
    ],
    "conv1x1": [("1x1 conv 8x8x64->128", lambda lv: conv_layer(8, 8, 64, 128, 1, levels=lv))],
    "fc": [("FC 1024->64", lambda lv: fc_layer(1024, 64, levels=lv))],
}


def crossing(points: list[tuple[float, float]]) -> float:
    """First density where the ratio sparse/dense reaches 1 (linear between points), else 1.0."""
    for (d0, r0), (d1, r1) in itertools.pairwise(points):
        if r1 >= 1.0 > r0:
            return round(d0 + (1.0 - r0) * (d1 - d0) / (r1 - r0), 3)
    if points and points[0][1] >= 1.0:
        return points[0][0]
    return 1.0


def sweep(make: Callable[[tuple[float, ...]], QModel]) -> tuple[int, dict[str, dict[float, int]]]:
    """Dense count, and per index encoding the sparse count per density."""
    levels = tuple(round(1.0 - d, 1) for d in sorted(DENSITIES, reverse=True))  # 0.0, 0.1, ..., 0.9
    qm = make(levels)
    dense = measure(densified(qm, 0), "dense").layer_counts[0][0]
    sparse = {}
    for index in INDEXES:
        counts = measure(qm, "nested", index=index, crossover=SPARSE_ONLY).layer_counts
        sparse[index] = {round(1.0 - s, 1): counts[k][0] for k, s in enumerate(levels)}
    return dense, sparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="do not write harness/crossover.json")
    args = parser.parse_args(argv)
    dense_src = ROOT / "targets" / "firmware" / "core" / "nb_kernels_dense.c"
    sparse_src = ROOT / "targets" / "firmware" / "core" / "nb_kernels_sparse.c"
    doc: dict[str, object] = {
        "about": "block density above which the dense kernel retires fewer instructions than the "
        "sparse one, per layer kind; written by benchmarks/crossover.py, read by harness/pack.py",
        "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "target": "qemu_mps2_an500",
        "cycle_source": "qemu-icount",
        "dense_kernel_sha256": hashlib.sha256(dense_src.read_bytes()).hexdigest()[:16],
        "sparse_kernel_sha256": hashlib.sha256(sparse_src.read_bytes()).hexdigest()[:16],
    }
    tables: dict[str, dict[str, float]] = {index: {} for index in INDEXES}
    sweeps: dict[str, object] = {}
    print("QEMU retired instructions, sparse / dense per block density")
    for kind, layers in LAYERS.items():
        found: dict[str, list[float]] = {index: [] for index in INDEXES}
        for title, make in layers:
            dense, sparse = sweep(make)
            entry: dict[str, object] = {"kind": kind, "dense": dense}
            for index in INDEXES:
                points = [(d, sparse[index][d] / dense) for d in DENSITIES]
                cross = crossing(points)
                found[index].append(cross)
                ratios = "  ".join(f"{d:.1f}:{r:.2f}" for d, r in points)
                print(f"{kind:8s} {index:8s} {title:24s} dense {dense:>9,}  {ratios}  crossover {cross:.3f}")
                entry[KEYS[index].replace("crossover", "sparse")] = {
                    str(d): sparse[index][d] for d in DENSITIES
                }
            sweeps[title] = entry
        for index in INDEXES:
            tables[index][kind] = min(found[index])  # the most conservative layer of the kind
    for index in INDEXES:
        doc[KEYS[index]] = tables[index]
        print(f"{KEYS[index]}:", ", ".join(f"{k} {v:.3f}" for k, v in tables[index].items()))
    doc["sweeps"] = sweeps
    if not args.dry_run:
        CROSSOVER_FILE.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {CROSSOVER_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
