"""Quantization-aware fine-tuning: fake int8 in the forward pass, straight-through gradients.

Generic int8 (TFLite-style) semantics, mirroring what post-training quantization will do later:

- weights: symmetric per output channel in [-127, 127] on the batch-norm-folded weight (running
  statistics, frozen during QAT), with the scale taken from the densest level's masked weights, so
  one set of scales serves every level and masked weights stay exactly zero;
- activations: asymmetric per tensor in [-128, 127]; each conv/linear/add/avg-pool output gets the
  range its float version reaches on calibration images, unioned over all levels and widened to
  include 0 (re-calibrated at the start of every QAT epoch); pools and global average pooling keep
  their input's parameters (max pooling needs no rounding at all); the network input uses the
  dataset's input range;
- rounding to nearest even (torch's fake-quant ops), gradients passed straight through inside the
  clamping range and zeroed outside (the usual STE).

Trainers call `qat_finetune` after their main training when `qat_epochs > 0`; it leaves the module
in float mode, and the exported weights are then quantized by the harness as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from trainers.dense import DenseOptions, batches
from trainers.graph import INPUT, Add, Conv2d, GlobalAvgPool, Linear, Pool
from trainers.joint import JointPlan, Report, compute_routes, joint_loss, level_accuracies
from trainers.torchnet import ConvUnit, LinearUnit, SpecModule, as_tensor, level_masks

CALIBRATION_SAMPLES = 256  # as the harness's post-training calibration
MIN_RANGE = 1e-6
QAT_OUT = "qat_out"  # every torchnet unit has this attribute (nn.ModuleDict types them as Module)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric int8 tensor covering [lo, hi] ∪ {0}."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < MIN_RANGE:
        hi = lo + MIN_RANGE
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
    return scale, zero_point


class ActFakeQuant:
    """Per-tensor asymmetric int8 fake quantization with fixed parameters."""

    def __init__(self, scale: float, zero_point: int) -> None:
        self.scale, self.zero_point = scale, zero_point

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, -128, 127)


class WeightFakeQuant:
    """Per-channel symmetric int8 fake quantization; scales from the densest level's folded weight."""

    def __init__(self, unit: ConvUnit | LinearUnit, densest_mask: torch.Tensor | None) -> None:
        self.unit, self.mask = unit, densest_mask

    def _reference(self) -> torch.Tensor:
        layer = self.unit.conv if isinstance(self.unit, ConvUnit) else self.unit.fc
        w = layer.weight.detach()
        if self.mask is not None:
            w = w * self.mask
        if isinstance(self.unit, ConvUnit) and self.unit.bn is not None:
            bn = self.unit.bn
            assert bn.running_var is not None
            w = w * (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
        return w

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self._reference()
            scale = (ref.abs().reshape(ref.shape[0], -1).amax(dim=1) / 127.0).clamp_min(1e-12)
            zeros = torch.zeros(ref.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale.to(torch.float32), zeros, 0, -127, 127)


def calibrate(
    module: SpecModule, x: np.ndarray, masks: Mapping[str, torch.Tensor], n_levels: int, device: str
) -> dict[str, tuple[float, float]]:
    """Min/max of every node's float output over `x` and every level (module in eval mode)."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            lo[name] = min(lo.get(name, np.inf), float(out.min()))
            hi[name] = max(hi.get(name, -np.inf), float(out.max()))

        return record

    for name, unit in module.units.items():
        handles.append(unit.register_forward_hook(hook(name)))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for k in range(n_levels if masks else 1):
                for start in range(0, len(x), 128):
                    xb = torch.as_tensor(
                        np.asarray(x[start : start + 128]), dtype=torch.float32, device=device
                    )
                    if masks:
                        with level_masks(module, masks, k):
                            module(xb)
                    else:
                        module(xb)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return {name: (lo[name], hi[name]) for name in lo}


def enable_qat(
    module: SpecModule,
    masks: Mapping[str, torch.Tensor],
    ranges: Mapping[str, tuple[float, float]],
    input_range: tuple[float, float],
) -> None:
    """Switch every unit to fake-quantized weights and outputs (see the module docstring)."""
    params: dict[str, tuple[float, int]] = {INPUT: activation_qparams(*input_range)}
    module.qat_in = ActFakeQuant(*params[INPUT])
    for node in module.spec.nodes:
        unit = module.units[node.name]
        if isinstance(node, Pool | GlobalAvgPool):
            params[node.name] = params[node.input]
            needs_rounding = isinstance(node, GlobalAvgPool) or node.kind == "avg"
            setattr(unit, QAT_OUT, ActFakeQuant(*params[node.name]) if needs_rounding else None)
            continue
        params[node.name] = activation_qparams(*ranges[node.name])
        setattr(unit, QAT_OUT, ActFakeQuant(*params[node.name]))
        if isinstance(node, Conv2d | Linear):
            assert isinstance(unit, ConvUnit | LinearUnit)
            mask = masks.get(node.name)
            densest = None if mask is None else mask[0].to(torch.float32)
            unit.qat_weight = WeightFakeQuant(unit, densest)
        else:
            assert isinstance(node, Add)


def disable_qat(module: SpecModule) -> None:
    module.qat_in = None
    for unit in module.units.values():
        if hasattr(unit, QAT_OUT):
            setattr(unit, QAT_OUT, None)
        if isinstance(unit, ConvUnit | LinearUnit):
            unit.qat_weight = None


def qat_finetune(
    module: SpecModule,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    input_range: tuple[float, float],
    opt: DenseOptions,
    plan: JointPlan,
    masks: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    seed: int,
    device: str,
    report: Report | None = None,
) -> dict[str, Any]:
    """`epochs` of joint training (the plan's routing and distillation, masks frozen) with fake int8.

    Batch-norm statistics stay frozen (the folded path never updates them), so what is trained is
    what the int8 model computes. Returns the curves: loss, and per-level accuracy of the
    fake-quantized model on the test split after each epoch.
    """
    plan = replace(plan, masks="fixed", bn_stats="per_level")  # BN is folded and frozen here
    n_levels = len(plan.levels)
    xt = as_tensor(x_train, torch.float32, device)
    yt = as_tensor(y_train, torch.long, device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=opt.weight_decay)
    generator = torch.Generator().manual_seed(seed + 7919)  # a stream apart from the main training
    routes = None
    if plan.routing is not None:
        routes = compute_routes(dict(masks), plan.routing)
    curves: dict[str, Any] = {"qat_train_loss": [], "qat_test_accuracy_per_level": []}
    try:
        for epoch in range(epochs):
            disable_qat(module)
            ranges = calibrate(module, x_train[:CALIBRATION_SAMPLES], masks, n_levels, device)
            enable_qat(module, masks, ranges, input_range)
            module.train()
            total, count = 0.0, 0
            for idx in batches(len(y_train), opt.batch_size, generator):
                idx = idx.to(device)
                loss, _ = joint_loss(module, masks, routes, plan, xt[idx], yt[idx], opt.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            curves["qat_train_loss"].append(total / max(count, 1))
            accs = level_accuracies(module, masks, x_test, y_test, device, n_levels)
            curves["qat_test_accuracy_per_level"].append(accs)
            if report is not None:
                text = "/".join(f"{a:.3f}" for a in accs)
                report((epoch + 1) / epochs, f"qat epoch {epoch + 1}/{epochs} acc {text}")
    finally:
        disable_qat(module)
    return curves


def qat_plan(levels: Sequence[float]) -> JointPlan:
    """The plan of a model without masks (dense): one level, no routing, no distillation."""
    return JointPlan(
        levels=tuple(levels),
        layers=(),
        block=1,
        warmup_epochs=0,
        epochs=1,
        masks="fixed",
        freeze_epoch=1,
        update_every=1,
        routing=None,
    )
