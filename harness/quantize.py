"""Post-training int8 quantization of a TrainedModel into a QModel (TFLite int8 semantics).

- Batch norm is folded first (`floatref.fold_batchnorm`).
- Weights: symmetric per output channel from the level-0 (densest) masked weights,
  scale_c = max|w_c| / 127, q = rint(w / scale_c) in [-127, 127]. Masks travel with the layer, so a
  masked weight is exactly 0 at every level and one set of scales serves all levels.
- Activations: asymmetric per tensor from the min/max each node's output reaches on the calibration
  set, taken over every level the model serves (union of ranges) and widened to include 0;
  scale = (max - min) / 255 as a float32 value, zero point = rint(-128 - min / scale) in [-128, 127].
  Pools and GAP keep their input's scale and zero point.
- The network input is quantized from the dataset's `input_range`, not from calibration.
- Bias: int32 = rint(b / (s_in * s_w[c])); requantization (multiplier, shift) per channel from
  float64(s_in) * float64(s_w[c]) / float64(s_out) with TFLite's QuantizeMultiplier.
- ADD as TFLite: left_shift 20, twice_max_input_scale, input multipliers via
  QuantizeMultiplierSmallerThanOneExp, output multiplier twice_max / (2^20 * s_out).

Rounding: every float → int step of the quantizer itself (weights, biases, zero points, inputs)
uses numpy.rint (ties to even); only QuantizeMultiplier and the ReLU6 bound use TFLite's
round-half-away, because the device-side contract is defined by those TFLite functions. Ties are
measure-zero for real data, so the choice only matters for reproducibility, which rint gives.
"""

from __future__ import annotations

import math

import numpy as np

from harness.floatref import fold_batchnorm, forward_float
from harness.qmodel import ADD_LEFT_SHIFT, QLayer, QModel, QTensor
from harness.requant import (
    quantize_multiplier,
    quantize_multiplier_smaller_than_one_exp,
    quantize_multipliers,
)
from trainers.graph import INPUT, Add, Conv2d, GlobalAvgPool, Linear, Pool, TrainedModel

CALIBRATION_BATCH = 128  # samples per float forward pass: bounds im2col memory on 32x32 inputs
MIN_RANGE = 1e-6  # a tensor that never leaves 0 still needs a nonzero scale
# Floors on the weight scale, relative to the layer's own scales: the effective requantization scale
# never drops below 2^-20 (no flushed multiplier, so a channel's bias always reaches the output) and
# the int32 bias keeps 2^30 of headroom (TFLite likewise widens a weight scale whose bias overflows).
MIN_EFFECTIVE_SCALE = 2.0**-20
BIAS_LIMIT = 2.0**30


def _round_half_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def activation_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale as a float32 value, zero point) of an asymmetric int8 tensor covering [lo, hi] ∪ {0}."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < MIN_RANGE:
        hi = lo + MIN_RANGE
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
    return scale, zero_point


def quantize_input(x: np.ndarray, tensor: QTensor) -> np.ndarray:
    """Float input [N, H, W, C] → int8 with `tensor`'s scale and zero point (rint, saturating)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / float(tensor.scale)) + tensor.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, tensor: QTensor) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) - tensor.zero_point) * float(tensor.scale)


def _act_range(act: str, out: QTensor) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: the fused activation as an int8 clamp."""
    if act == "none":
        return -128, 127
    lo = max(-128, out.zero_point)
    if act == "relu":
        return lo, 127
    six = float(np.float32(6.0) / np.float32(out.scale))
    return lo, min(127, out.zero_point + _round_half_away(six))


def calibrate_ranges(
    model: TrainedModel, folded: dict[str, dict[str, np.ndarray]], calibration: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Min/max of every node's output over the calibration set and over all levels."""
    x = np.asarray(calibration, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"calibration must be a non-empty [N, H, W, C] array, got shape {x.shape}")
    levels: list[int | None] = list(range(len(model.levels))) if model.masks else [None]
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for start in range(0, x.shape[0], CALIBRATION_BATCH):
        batch = x[start : start + CALIBRATION_BATCH]
        for level in levels:
            _, outs = forward_float(
                model.spec, folded, batch, masks_level=level, masks=model.masks or None, record=True
            )
            for name, y in outs.items():
                lo[name] = min(lo.get(name, math.inf), float(y.min()))
                hi[name] = max(hi.get(name, -math.inf), float(y.max()))
    return {name: (lo[name], hi[name]) for name in lo}


def _weight_layer(
    node: Conv2d | Linear,
    folded: dict[str, np.ndarray],
    mask: np.ndarray | None,
    t_in: QTensor,
    t_out: QTensor,
) -> dict[str, object]:
    w = folded["weight"].astype(np.float64)
    if mask is not None:
        w = np.where(mask[0], w, 0.0)  # level 0 is the densest: its weights fix the scales
    b = folded["bias"].astype(np.float64)
    cout = w.shape[0]
    s_in, s_out = float(t_in.scale), float(t_out.scale)
    max_abs = np.abs(w.reshape(cout, -1)).max(axis=1)
    s_w = np.maximum.reduce(
        [max_abs / 127.0, np.full(cout, s_out / s_in * MIN_EFFECTIVE_SCALE), np.abs(b) / (s_in * BIAS_LIMIT)]
    ).astype(np.float32)
    s_w64 = s_w.astype(np.float64)
    q = np.clip(np.rint(w / s_w64.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
    bias = np.rint(b / (s_in * s_w64)).astype(np.int32)
    mult, shift = quantize_multipliers(s_in * s_w64 / s_out)
    masks = None if mask is None else np.asarray(mask, dtype=bool)
    if isinstance(node, Conv2d) and node.depthwise:  # [C, 1, kh, kw] → [kh, kw, C]
        q = np.ascontiguousarray(q[:, 0].transpose(1, 2, 0))
        masks = None if masks is None else np.ascontiguousarray(masks[:, :, 0].transpose(0, 2, 3, 1))
    elif isinstance(node, Conv2d):  # OIHW → OHWI
        q = np.ascontiguousarray(q.transpose(0, 2, 3, 1))
        masks = None if masks is None else np.ascontiguousarray(masks.transpose(0, 1, 3, 4, 2))
    act_min, act_max = _act_range(node.act, t_out)
    return {
        "weight": q,
        "bias": bias,
        "multiplier": mult,
        "shift": shift,
        "masks": masks,
        "weight_scale": s_w,
        "act_min": act_min,
        "act_max": act_max,
    }


def add_params(s_in0: float, s_in1: float, s_out: float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite quantized ADD: (multiplier, shift) arrays for (input 0, input 1, output)."""
    twice_max = 2.0 * max(float(s_in0), float(s_in1))
    m0, sh0 = quantize_multiplier_smaller_than_one_exp(float(s_in0) / twice_max)
    m1, sh1 = quantize_multiplier_smaller_than_one_exp(float(s_in1) / twice_max)
    # < 1 unless the output range is ~2^19 times narrower than the inputs'; the general
    # QuantizeMultiplier then still yields a valid left shift rather than failing.
    mo, sho = quantize_multiplier(twice_max / (float(1 << ADD_LEFT_SHIFT) * float(s_out)))
    return np.array([m0, m1, mo], dtype=np.int32), np.array([sh0, sh1, sho], dtype=np.int32)


def quantize(
    model: TrainedModel, calibration: np.ndarray, input_range: tuple[float, float], *, name: str
) -> QModel:
    """Calibrated post-training int8 quantization (see the module docstring for the rules)."""
    spec = model.spec
    shapes = spec.shapes()
    lo_in, hi_in = (float(v) for v in input_range)
    if not hi_in > lo_in:
        raise ValueError(f"input_range {input_range!r} must satisfy low < high")
    folded = fold_batchnorm(model)
    ranges = calibrate_ranges(model, folded, calibration)

    tensors: list[QTensor] = [QTensor(INPUT, shapes[INPUT], *activation_params(lo_in, hi_in))]
    index = {INPUT: 0}
    layers: list[QLayer] = []
    for node in spec.nodes:
        if isinstance(node, Pool | GlobalAvgPool):
            src = tensors[index[node.input]]
            tensor = QTensor(node.name, shapes[node.name], src.scale, src.zero_point)
        else:
            tensor = QTensor(node.name, shapes[node.name], *activation_params(*ranges[node.name]))
        index[node.name] = len(tensors)
        tensors.append(tensor)
        out = index[node.name]
        if isinstance(node, Conv2d | Linear):
            t_in = tensors[index[node.input]]
            fields = _weight_layer(node, folded[node.name], model.masks.get(node.name), t_in, tensor)
            if isinstance(node, Conv2d):
                layers.append(
                    QLayer(
                        node.name,
                        "dwconv2d" if node.depthwise else "conv2d",
                        (index[node.input],),
                        out,
                        kernel=(node.kernel, node.kernel),
                        stride=(node.stride, node.stride),
                        padding=(node.padding, node.padding),
                        **fields,  # type: ignore[arg-type]
                    )
                )
            else:
                layers.append(QLayer(node.name, "fc", (index[node.input],), out, **fields))  # type: ignore[arg-type]
        elif isinstance(node, Pool):
            layers.append(
                QLayer(
                    node.name,
                    "maxpool" if node.kind == "max" else "avgpool",
                    (index[node.input],),
                    out,
                    kernel=(node.kernel, node.kernel),
                    stride=(node.stride, node.stride),
                    padding=(node.padding, node.padding),
                )
            )
        elif isinstance(node, GlobalAvgPool):
            layers.append(QLayer(node.name, "gap", (index[node.input],), out))
        elif isinstance(node, Add):
            a, b = (index[s] for s in node.inputs)
            mult, shift = add_params(tensors[a].scale, tensors[b].scale, tensor.scale)
            act_min, act_max = _act_range(node.act, tensor)
            layers.append(
                QLayer(
                    node.name,
                    "add",
                    (a, b),
                    out,
                    multiplier=mult,
                    shift=shift,
                    act_min=act_min,
                    act_max=act_max,
                )
            )
    meta = {
        "input_range": [lo_in, hi_in],
        "calibration_samples": int(np.asarray(calibration).shape[0]),
        "activation_ranges": {k: [float(v[0]), float(v[1])] for k, v in sorted(ranges.items())},
        "rounding": "rint (ties to even) for weights, biases, zero points and inputs; "
        "TFLite QuantizeMultiplier (ties away) for multipliers",
    }
    return QModel(
        name=name,
        tensors=tensors,
        layers=layers,
        input=0,
        output=index[spec.nodes[-1].name],
        levels=tuple(model.levels),
        meta=meta,
    )
