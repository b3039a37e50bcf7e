"""Nested vs standalone vs DSNN vs dense on digits: int8 accuracy per level and training wall time.

The paper-style comparison of issue 3 ("Done when"): digits, the digits_cnn, levels 0.7/0.8/0.9,
three seeds. Every trainer runs with its default options (what a suite gets when it names the
trainer); each trained model is quantized with harness.quantize exactly as a run does (calibration
on the first 256 training images) and evaluated with the bit-exact integer reference
(harness.reference) on the whole test split at every level. The seed sets both the training and
the train/test split, as in a suite.

Prints the table (mean ± sample standard deviation over seeds), the float accuracies, training wall
and CPU times (CPU time is less disturbed by other processes on a shared machine), and whether the
issue's targets are met:
  - nested int8 accuracy within 1.0 point (mean) of standalone at every level,
  - nested at least DSNN's at the sparsest level,
  - training the one nested model takes less wall time than training the standalone models.

    .venv/bin/python benchmarks/nested_vs_standalone.py [--seeds 0 1 2] [--levels 0.7 0.8 0.9]

Takes about two minutes on 2 cores. It asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness import quantize, reference
from trainers.archs import ARCHS
from trainers.base import TrainRequest
from trainers.datasets import Dataset, load_dataset
from trainers.graph import TrainedModel
from trainers.registry import get_trainer

TRAINERS = ("nested", "standalone", "dsnn", "dense")
CALIBRATION = 256  # as harness/prepare.py


def int8_accuracy(model: TrainedModel, ds: Dataset) -> list[float]:
    """Accuracy of the int8 model at each of its levels, from the bit-exact host reference."""
    qm = quantize.quantize(model, ds.x_train[:CALIBRATION], ds.input_range, name="bench")
    x_q = quantize.quantize_input(ds.x_test, qm.tensors[qm.input])
    out = []
    for level in range(len(model.levels)):
        logits = reference.run_int8(qm, x_q, level=level)
        out.append(float(np.mean(np.argmax(logits, axis=1) == ds.y_test)))
    return out


def train(
    name: str, ds: Dataset, levels: tuple[float, ...], seed: int
) -> tuple[list[TrainedModel], float, float]:
    """The trainer's models, its wall time and its CPU time (less sensitive to other processes)."""
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes)
    cls = get_trainer(name)
    request = TrainRequest(ds, spec, levels, seed, "cpu", cls.Options())
    start, cpu = time.perf_counter(), time.process_time()
    models = cls().train(request)
    return models, time.perf_counter() - start, time.process_time() - cpu


def per_level(
    models: list[TrainedModel], values: list[list[float]], levels: tuple[float, ...]
) -> list[float]:
    """Values by requested level (a dense model's single value serves as its row at every level)."""
    by_sparsity = {
        s: v for m, vs in zip(models, values, strict=True) for s, v in zip(m.levels, vs, strict=True)
    }
    if list(by_sparsity) == [0.0]:
        return [by_sparsity[0.0]] * len(levels)
    return [by_sparsity[s] for s in levels]


def fmt(values: list[float]) -> str:
    a = np.asarray(values) * 100
    spread = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
    return f"{a.mean():6.2f} ± {spread:4.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    args = parser.parse_args()
    levels = tuple(args.levels)
    int8: dict[str, list[list[float]]] = {t: [] for t in TRAINERS}  # trainer -> seed -> level
    flt: dict[str, list[list[float]]] = {t: [] for t in TRAINERS}
    wall: dict[str, list[float]] = {t: [] for t in TRAINERS}
    cpu: dict[str, list[float]] = {t: [] for t in TRAINERS}
    for seed in args.seeds:
        ds = load_dataset("digits", seed=seed)
        for name in TRAINERS:
            models, seconds, cpu_seconds = train(name, ds, levels, seed)
            q = [int8_accuracy(m, ds) for m in models]
            f = [list(np.atleast_1d(m.meta["test_accuracy_final"])) for m in models]
            int8[name].append(per_level(models, q, levels))
            flt[name].append(per_level(models, f, levels))
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            text = " ".join(f"{v * 100:.2f}" for v in int8[name][-1])
            print(
                f"seed {seed} {name:<10} {seconds:6.1f} s wall {cpu_seconds:6.1f} s cpu  int8 {text}",
                flush=True,
            )

    n_test = len(load_dataset("digits", seed=args.seeds[0]).y_test)
    print()
    print(f"digits, digits_cnn, {len(args.seeds)} seeds {args.seeds}, {n_test} test images per seed")
    print("int8 accuracy (%) on the host integer reference, mean ± sd over seeds")
    print(f"{'level':>5} {'sparsity':>8}  " + "  ".join(f"{t:>15}" for t in TRAINERS))
    for k, s in enumerate(levels):
        row = "  ".join(f"{fmt([seed_row[k] for seed_row in int8[t]]):>15}" for t in TRAINERS)
        print(f"{k:>5} {s:>8.0%}  {row}")
    print("float accuracy (%), same models")
    for k, s in enumerate(levels):
        row = "  ".join(f"{fmt([seed_row[k] for seed_row in flt[t]]):>15}" for t in TRAINERS)
        print(f"{k:>5} {s:>8.0%}  {row}")
    print(
        "training time per seed (s), mean wall / cpu: "
        + ", ".join(f"{t} {np.mean(wall[t]):.1f} / {np.mean(cpu[t]):.1f}" for t in TRAINERS)
    )

    mean = {t: np.mean(np.asarray(int8[t]), axis=0) * 100 for t in TRAINERS}
    gaps = mean["standalone"] - mean["nested"]
    within = bool(np.all(gaps <= 1.0))
    vs_dsnn = float(mean["nested"][-1] - mean["dsnn"][-1])
    faster = float(np.mean(wall["nested"])) < float(np.mean(wall["standalone"]))
    cpu_ratio = float(np.mean(cpu["nested"]) / np.mean(cpu["standalone"]))
    print()
    print(
        "target: nested within 1.0 point of standalone at every level: "
        f"{'met' if within else 'MISSED'} (standalone − nested = "
        + ", ".join(f"{g:+.2f}" for g in gaps)
        + ")"
    )
    print(
        f"target: nested ≥ dsnn at {levels[-1]:.0%}: {'met' if vs_dsnn >= 0 else 'MISSED'} "
        f"(nested − dsnn = {vs_dsnn:+.2f})"
    )
    print(
        f"target: nested training faster than the {len(levels)} standalone models: "
        f"{'met' if faster else 'MISSED'} ({np.mean(wall['nested']):.1f} s vs "
        f"{np.mean(wall['standalone']):.1f} s wall; cpu ratio {cpu_ratio:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
