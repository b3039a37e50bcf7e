"""The `nested` trainer: one model serving every level through nested block masks.

One magnitude ranking per sparsified layer gives masks M_0 ⊃ M_1 ⊃ … (level 0 the densest); the
levels train jointly, one forward per level per step (trainers/joint.py), with

- gradient routing (`routing`): `sum` (default: every level's loss reaches every weight it uses,
  as DSNN), `exclusive` (the weights first added at level k learn only from level k's loss —
  hypothesis H1 of the paper brief) or `weighted` (`routing_matrix`, levels × increments);
- in-place distillation (`distill`, on by default): level 0 learns from the labels, sparser levels
  from its detached soft outputs (mixed with the labels by `distill_weight`);
- masks `gradual` (default: cubic schedule from the end of the warm-up to `freeze_epoch`, then
  frozen) or `fixed` (ranked once after the dense warm-up);
- optional quantization-aware fine-tuning (`qat_epochs`).

`dsnn` (trainers/dsnn.py) runs the same engine with the plain summed loss and no distillation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from trainers.base import Trainer, TrainRequest
from trainers.dense import deterministic_torch, scaled_progress
from trainers.graph import NetSpec, TrainedModel
from trainers.joint import (
    JointPlan,
    ScheduleOptions,
    check_sparse,
    level_accuracies,
    masks_to_numpy,
    train_joint,
)
from trainers.qat import qat_finetune
from trainers.sparsity import mask_sparsities, routing_matrix
from trainers.torchnet import build_module, export_params


class NestedOptions(ScheduleOptions):
    # Defaults tuned on digits (benchmarks/nested_vs_standalone.py): 30 epochs cost less wall time
    # than the standalone trainer's 30 epochs per level; there, gradual masks beat fixed ones, the
    # plain sum beat exclusive ownership, and distillation helped the sparsest level.
    epochs: int = Field(30, ge=1)  # the warm-up takes the first 20 % (6), the masks freeze at 18
    masks: Literal["fixed", "gradual"] = "gradual"
    routing: Literal["sum", "exclusive", "weighted"] = "sum"
    # routing: weighted — rows = level whose loss (densest first), columns = increment receiving it
    routing_matrix: tuple[tuple[float, ...], ...] | None = None
    distill: bool = True
    distill_weight: float = Field(0.7, ge=0.0, le=1.0)  # sparser levels: weight of KD vs labels
    temperature: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _routing(self) -> NestedOptions:
        if (self.routing == "weighted") != (self.routing_matrix is not None):
            raise ValueError("routing_matrix is required with routing 'weighted' and only then")
        return self


def sparse_meta(
    trainer: str,
    request: TrainRequest,
    opt: ScheduleOptions,
    levels: Sequence[float],
    layers: Sequence[str],
    model_masks: dict[str, np.ndarray],
    params: dict[str, dict[str, np.ndarray]],
    curves: dict[str, Any],
    final_accuracy: list[float],
    wall: float,
) -> dict[str, Any]:
    """Meta every sparse model carries: what was asked, what was served and reached, curves, time."""
    per_layer = mask_sparsities(model_masks)
    n_sparse = sum(m[0].size for m in model_masks.values())
    n_all = sum(p["weight"].size for p in params.values())
    zeros = [
        sum(int(m[k].size - np.count_nonzero(m[k])) for m in model_masks.values()) for k in range(len(levels))
    ]
    return {
        "trainer": trainer,
        "options": opt.model_dump(mode="json"),
        "epochs": opt.epochs,
        "seed": request.seed,
        "device": request.device,
        "requested_levels": list(request.levels),
        "served_levels": list(levels),
        "block": opt.block,
        "sparsified_layers": list(layers),
        "sparsity_per_layer": per_layer,  # layer -> reached sparsity per served level
        "sparsity_sparsified": [z / max(n_sparse, 1) for z in zeros],
        "sparsity_overall": [z / max(n_all, 1) for z in zeros],
        "torch": torch.__version__,
        **curves,
        "test_accuracy_final": final_accuracy,  # float, exported weights, per served level
        "wall_time_s": wall,
    }


def joint_plan(opt: ScheduleOptions, levels: Sequence[float], layers: Sequence[str]) -> JointPlan:
    """The engine's plan for the nested/dsnn options (dsnn options have no routing or distillation)."""
    routing: np.ndarray | None = None
    preset = getattr(opt, "routing", "sum")
    if preset != "sum":
        routing = routing_matrix(preset, len(levels), getattr(opt, "routing_matrix", None))
    return JointPlan(
        levels=tuple(levels),
        layers=tuple(layers),
        block=opt.block,
        warmup_epochs=opt.warmup(),
        epochs=opt.epochs,
        masks=opt.masks,
        freeze_epoch=opt.freeze(),
        update_every=opt.update_every,
        routing=routing,
        distill=bool(getattr(opt, "distill", False)),
        distill_weight=float(getattr(opt, "distill_weight", 1.0)),
        temperature=float(getattr(opt, "temperature", 1.0)),
        bn_stats=opt.bn_stats,
    )


def train_sparse_model(
    trainer: str, request: TrainRequest, opt: ScheduleOptions, levels: Sequence[float], layers: Sequence[str]
) -> TrainedModel:
    """Train one model serving `levels` (nested: all requested, standalone: one) with the engine."""
    plan = joint_plan(opt, levels, layers)
    ds = request.dataset
    total = opt.epochs + opt.qat_epochs
    start = time.perf_counter()
    with deterministic_torch(request.seed, opt.threads):
        module = build_module(request.spec).to(request.device)
        result = train_joint(
            module,
            ds.x_train,
            ds.y_train,
            ds.x_test,
            ds.y_test,
            opt,
            plan,
            seed=request.seed,
            device=request.device,
            report=scaled_progress(request.progress, 0.0, opt.epochs / total),
        )
        curves = result.curves
        if opt.qat_epochs:
            curves.update(
                qat_finetune(
                    module,
                    ds.x_train,
                    ds.y_train,
                    ds.x_test,
                    ds.y_test,
                    ds.input_range,
                    opt,
                    plan,
                    result.masks,
                    epochs=opt.qat_epochs,
                    lr=opt.qat_learning_rate(),
                    seed=request.seed,
                    device=request.device,
                    report=scaled_progress(request.progress, opt.epochs / total, 1.0),
                )
            )
        final = level_accuracies(module, result.masks, ds.x_test, ds.y_test, request.device, len(levels))
        params = export_params(module, request.spec)
    masks = masks_to_numpy(result.masks)
    wall = time.perf_counter() - start
    meta = sparse_meta(trainer, request, opt, levels, layers, masks, params, curves, final, wall)
    return TrainedModel(spec=request.spec, params=params, levels=tuple(levels), masks=masks, meta=meta)


class NestedTrainer(Trainer):
    name = "nested"
    Options = NestedOptions
    serves = "all"

    @classmethod
    def check(cls, spec: NetSpec, levels: Sequence[float], options: Any) -> None:
        opt = cls.parse_options(options)
        assert isinstance(opt, NestedOptions)
        check_sparse(spec, levels, opt)
        if opt.routing == "weighted":
            routing_matrix("weighted", len(levels), opt.routing_matrix)

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = self.parse_options(request.options)
        assert isinstance(opt, ScheduleOptions)
        self.check(request.spec, request.levels, opt)
        layers = opt.layers(request.spec)
        return [train_sparse_model(self.name, request, opt, request.levels, layers)]
