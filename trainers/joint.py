"""The joint multi-level training engine behind the nested, dsnn and standalone trainers.

One module, L levels (sparsities s_0 < … < s_{L-1}, level 0 the densest), nested block masks from one
magnitude ranking per sparsified layer (trainers/sparsity.py). Each step runs one forward per level
with that level's masks and sums the levels' losses:

- batch norm: the int8 model folds one batch norm per layer for every level, so the levels must
  share normalization statistics. By default the L per-level forwards run as one pass over L copies
  of the batch (copy k with level k's masks), so batch norm normalizes with statistics over all
  levels together, the same statistics its running averages track for inference. Separate passes
  (`bn_stats: per_level`) normalize each level with its own batch statistics during training but
  with the shared running ones at inference; on digits that mismatch cost 10-50 points at
  every level, which is why it is only an ablation;
- gradient routing: a level × increment matrix R (trainers/sparsity.routing_matrix). Level k's
  forward computes with `route_grad(weight, route_k) * mask_k`, where route_k = Σ_j R[k, j]·1[Δ_j];
  the forward value is unchanged, but the gradient level k's loss sends to a weight of increment j
  is scaled by R[k, j]. One backward of the summed loss therefore gives every weight exactly
  Σ_k R[k, j] ∂L_k/∂w along each level's own forward path. With the `sum` preset the routes are all
  ones and are skipped. Parameters that have no mask (dense layers, batch norm, biases) get the
  plain sum over levels. One caveat: with shared batch statistics a level's loss also depends, to
  second order, on the other levels' activations through the batch mean and variance; that path
  goes through the other levels' forward passes and so through their routes. Routing is exact for
  layers without batch norm after them and with `bn_stats: per_level`;
- in-place distillation: level 0 learns from the labels; sparser levels from level 0's detached
  soft outputs (KL at a temperature, times T²), mixed with the label loss by `distill_weight`;
- masks `fixed` (ranked once at the end of a dense warm-up) or `gradual` (re-ranked every
  `update_every` steps with every level's sparsity on a cubic schedule from dense at the end of the
  warm-up to the targets at `freeze_epoch`, then frozen).

A standalone sparse model is this engine with one level (gradual magnitude pruning, then fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from trainers.dense import DenseOptions, accuracy, batches, make_optimizer
from trainers.graph import NetSpec
from trainers.sparsity import (
    DEFAULT_SPARSIFY,
    check_block,
    check_levels,
    nested_masks,
    routing_weights,
    scheduled_levels,
    select_layers,
)
from trainers.torchnet import SpecModule, as_tensor, level_masks, weight_layers

Report = Callable[[float, str], None]


class SparseOptions(DenseOptions):
    """Options every sparse trainer shares: granularity and which layers are sparsified."""

    block: Literal[1, 2, 4] = 2  # consecutive input channels sharing one mask bit (1×block blocks)
    sparsify: tuple[str, ...] = DEFAULT_SPARSIFY  # layer kinds and/or node names
    keep_dense: tuple[str, ...] = ()  # kinds or names removed from `sparsify`

    def layers(self, spec: NetSpec) -> list[str]:
        return select_layers(spec, self.sparsify, self.keep_dense)


class ScheduleOptions(SparseOptions):
    """A dense warm-up, then sparse training with fixed or gradually re-ranked masks.

    Left unset, the warm-up is WARMUP_SHARE of the epochs and the freeze epoch lies halfway between
    the end of the warm-up and the last epoch, so changing `epochs` alone keeps a valid schedule.
    """

    WARMUP_SHARE: ClassVar[float] = 0.2
    # dense epochs before the masks are first ranked (None: WARMUP_SHARE of the epochs)
    warmup_epochs: int | None = Field(None, ge=0)
    masks: Literal["fixed", "gradual"] = "fixed"
    # gradual: epoch (counted from the start) at which the masks reach their targets and freeze
    # (None: halfway between the end of the warm-up and the last epoch)
    freeze_epoch: int | None = Field(None, ge=1)
    update_every: int = Field(8, ge=1)  # gradual: steps between re-rankings
    # Batch-norm statistics while levels train together (see `level_logits`): "mixed" (all levels'
    # copies of a batch in one pass) or "per_level" (ablation: each level normalizes with its own).
    bn_stats: Literal["mixed", "per_level"] = "mixed"

    @model_validator(mode="after")
    def _epochs(self) -> ScheduleOptions:
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        warm = self.warmup()
        if self.freeze_epoch is not None and not warm < self.freeze_epoch <= self.epochs:
            raise ValueError(
                f"freeze_epoch ({self.freeze_epoch}) must lie after the warm-up ({warm} epochs) "
                f"and at most at epochs ({self.epochs})"
            )
        return self

    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(self.epochs - 1, round(self.epochs * self.WARMUP_SHARE))

    def freeze(self) -> int:
        if self.freeze_epoch is not None:
            return self.freeze_epoch
        warm = self.warmup()
        return min(self.epochs, warm + max(1, (self.epochs - warm) // 2))


def check_sparse(spec: NetSpec, levels: Sequence[float], options: SparseOptions) -> list[str]:
    """The validation every sparse trainer runs before training; returns the sparsified layers."""
    check_levels(levels)
    layers = options.layers(spec)
    if not layers:
        raise ValueError(
            f"sparsify: no layer of {spec.name!r} is selected (sparsify {list(options.sparsify)}, "
            f"keep_dense {list(options.keep_dense)})"
        )
    check_block(spec, layers, options.block)
    return layers


@dataclass(frozen=True)
class JointPlan:
    levels: tuple[float, ...]
    layers: tuple[str, ...]
    block: int
    warmup_epochs: int
    epochs: int
    masks: Literal["fixed", "gradual"]
    freeze_epoch: int
    update_every: int
    routing: np.ndarray | None  # [L, L] level × increment; None = plain sum (no routing hooks)
    distill: bool = False
    distill_weight: float = 1.0
    temperature: float = 1.0
    bn_stats: Literal["mixed", "per_level"] = "mixed"


MaskSet = dict[str, torch.Tensor]  # layer -> bool [L, *weight.shape]


def compute_masks(
    module: SpecModule, layers: Sequence[str], sparsities: Sequence[float], block: int
) -> MaskSet:
    found = weight_layers(module)
    return {name: nested_masks(found[name].weight, sparsities, block) for name in layers}


def compute_routes(masks: MaskSet, matrix: np.ndarray | None) -> dict[str, torch.Tensor] | None:
    if matrix is None:
        return None
    return {name: routing_weights(m, matrix) for name, m in masks.items()}


def _set_level(
    module: SpecModule, masks: Mapping[str, torch.Tensor], routes: Mapping[str, torch.Tensor] | None, k: int
) -> None:
    for name, layer in weight_layers(module).items():
        mask = masks.get(name)
        layer.mask = None if mask is None else mask[k].to(layer.weight.dtype)
        layer.route = None if routes is None or name not in routes else routes[name][k]


def clear_levels(module: SpecModule) -> None:
    for layer in weight_layers(module).values():
        layer.mask = None
        layer.route = None


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened outputs, times T² (Hinton et al.'s scaling)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


def _level_loss(
    plan: JointPlan,
    k: int,
    logits: torch.Tensor,
    yb: torch.Tensor,
    teacher: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    ce = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
    if k == 0 or teacher is None or not plan.distill:
        return ce
    kd = distill_loss(logits, teacher, plan.temperature)
    return plan.distill_weight * kd + (1.0 - plan.distill_weight) * ce


def level_logits(
    module: SpecModule,
    masks: Mapping[str, torch.Tensor],
    routes: Mapping[str, torch.Tensor] | None,
    n_levels: int,
    xb: torch.Tensor,
    bn_stats: str,
) -> list[torch.Tensor]:
    """Logits of every level for the batch `xb`.

    "mixed": one pass over L copies of the batch, copy k computed with level k's masks, so batch
    norm normalizes with statistics over all levels together — the statistics its running averages
    track, and the single batch norm the int8 model folds must serve every level. "per_level": one
    pass per level (each normalized with its own batch statistics, which then differ from the
    shared running statistics used at inference: kept for ablation).
    """
    try:
        if bn_stats == "mixed" and masks and n_levels > 1:
            for name, layer in weight_layers(module).items():
                if name in masks:
                    layer.mask = masks[name].to(layer.weight.dtype)
                    layer.route = None if routes is None else routes[name]
            stacked = xb.repeat(n_levels, *([1] * (xb.dim() - 1)))
            return list(module(stacked).chunk(n_levels))
        out = []
        for k in range(n_levels):
            _set_level(module, masks, routes, k)
            out.append(module(xb))
        return out
    finally:
        clear_levels(module)


def joint_loss(
    module: SpecModule,
    masks: Mapping[str, torch.Tensor],
    routes: Mapping[str, torch.Tensor] | None,
    plan: JointPlan,
    xb: torch.Tensor,
    yb: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, list[float]]:
    """Sum over levels of each level's loss (level 0, the densest, is the teacher); per-level values."""
    logits = level_logits(module, masks, routes, len(plan.levels), xb, plan.bn_stats)
    teacher = logits[0].detach()
    losses = [_level_loss(plan, k, out, yb, teacher, label_smoothing) for k, out in enumerate(logits)]
    total = torch.stack(losses).sum()
    return total, [float(v.detach()) for v in losses]


def level_accuracies(
    module: SpecModule, masks: Mapping[str, torch.Tensor], x: np.ndarray, y: np.ndarray, device: str, n: int
) -> list[float]:
    """Float test accuracy at each of `n` levels (dense when there are no masks yet)."""
    if not masks:
        acc = accuracy(module, x, y, device)
        return [acc] * n
    out = []
    for k in range(n):
        with level_masks(module, masks, k):
            out.append(accuracy(module, x, y, device))
    return out


def count_batches(n: int, batch_size: int) -> int:
    """Batches per epoch as `dense.batches` yields them (a last batch of one sample is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and n == 1) else 0)


@dataclass
class JointResult:
    masks: MaskSet
    curves: dict[str, Any]


def train_joint(
    module: SpecModule,
    dataset_x: np.ndarray,
    dataset_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    opt: DenseOptions,
    plan: JointPlan,
    *,
    seed: int,
    device: str,
    report: Report | None = None,
) -> JointResult:
    """Dense warm-up, then joint masked training of every level; returns the final (frozen) masks."""
    x_train = as_tensor(dataset_x, torch.float32, device)
    y_train = as_tensor(dataset_y, torch.long, device)
    optimizer = make_optimizer(module, opt)
    steps_per_epoch = count_batches(len(dataset_y), opt.batch_size)
    total_steps = plan.epochs * steps_per_epoch
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if opt.schedule == "cosine"
        else None
    )
    generator = torch.Generator().manual_seed(seed)
    n_levels = len(plan.levels)
    warm = plan.warmup_epochs * steps_per_epoch
    freeze = plan.freeze_epoch * steps_per_epoch if plan.masks == "gradual" else warm
    masks: MaskSet = {}
    routes: dict[str, torch.Tensor] | None = None
    progress = -1.0  # schedule progress the current masks were ranked at (1.0: final, frozen)
    curves: dict[str, Any] = {
        "train_loss": [],
        "train_loss_per_level": [],
        "test_accuracy_per_level": [],
        "scheduled_sparsity": [],
        "mask_changes": [],  # mask entries (weights × levels) flipped by re-ranking, per epoch
    }
    step = 0
    for epoch in range(plan.epochs):
        module.train()
        total, count, changes = 0.0, 0, 0
        level_sums = np.zeros(n_levels)
        for idx in batches(len(dataset_y), opt.batch_size, generator):
            idx = idx.to(device)
            xb, yb = x_train[idx], y_train[idx]
            if step >= warm and progress < 1.0:
                target = 1.0 if freeze <= warm else min(1.0, (step - warm) / (freeze - warm))
                if progress < 0 or target >= 1.0 or (step - warm) % plan.update_every == 0:
                    ranked = scheduled_levels(plan.levels, target)
                    new = compute_masks(module, plan.layers, ranked, plan.block)
                    if masks:
                        changes += sum(int(torch.count_nonzero(new[n] != masks[n])) for n in new)
                    masks = new
                    routes = compute_routes(masks, plan.routing)
                    progress = target
            if step < warm:
                loss = F.cross_entropy(module(xb), yb, label_smoothing=opt.label_smoothing)
                per_level = [float(loss.detach())] * n_levels
            else:
                loss, per_level = joint_loss(module, masks, routes, plan, xb, yb, opt.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(idx)
            level_sums += np.asarray(per_level) * len(idx)
            count += len(idx)
            step += 1
        curves["train_loss"].append(total / max(count, 1))
        curves["train_loss_per_level"].append((level_sums / max(count, 1)).tolist())
        accs = level_accuracies(module, masks, test_x, test_y, device, n_levels)
        curves["test_accuracy_per_level"].append(accs)
        curves["scheduled_sparsity"].append(scheduled_levels(plan.levels, max(progress, 0.0)))
        curves["mask_changes"].append(changes)
        if report is not None:
            accs_text = "/".join(f"{a:.3f}" for a in accs)
            report(
                (epoch + 1) / plan.epochs,
                f"epoch {epoch + 1}/{plan.epochs} loss {curves['train_loss'][-1]:.3f} acc {accs_text}",
            )
    if progress < 1.0:  # training ended before the masks were final (cannot happen with valid plans)
        masks = compute_masks(module, plan.layers, plan.levels, plan.block)
    return JointResult(masks=masks, curves=curves)


def masks_to_numpy(masks: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: m.detach().to("cpu").numpy().astype(bool) for name, m in masks.items()}
