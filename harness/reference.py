"""The host integer reference: runs a QModel exactly as the firmware must, bit for bit.

Kernel semantics are TFLite's reference integer kernels (tensorflow/lite/kernels/internal/reference/
integer_ops/{conv,depthwise_conv,fully_connected,pooling,add}.h), which CMSIS-NN matches:

- conv / depthwise / fc: acc = Σ w·(x − zp_in) over in-bounds taps (out-of-bounds taps are skipped,
  the same as padding with zp_in) + bias[c]; out = MultiplyByQuantizedMultiplier(acc, M[c], shift[c])
  + zp_out, clamped to [act_min, act_max].
- max pool: the max over in-bounds taps, clamped to the activation range.
- average pool: the sum of the raw int8 values of the in-bounds taps divided by their count, rounded
  half away from zero (`sum > 0 ? (sum + n/2)/n : (sum − n/2)/n`), clamped. GAP is the same rule
  over the whole plane (n = H·W); both keep the input's scale and zero point.
- add: TFLite quantized ADD with left_shift 20 (see `_add`).

Accumulations use float64 matrix products: every operand is an integer with |w·x| ≤ 127·255, so all
partial sums stay far below 2^53 and the result is exact whatever the summation order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, overload

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harness.qmodel import ADD_LEFT_SHIFT, QLayer, QModel
from harness.requant import multiply_by_quantized_multiplier, round_half_away_div, wrap_int32

BATCH = 256  # samples per pass: bounds the im2col buffers


def _requant(acc: np.ndarray, layer: QLayer, zp_out: int) -> np.ndarray:
    """acc (int64, channels last) + bias → int8 output through the per-channel multiplier."""
    assert layer.bias is not None and layer.multiplier is not None and layer.shift is not None
    acc = wrap_int32(acc + layer.bias.astype(np.int64))
    out = multiply_by_quantized_multiplier(
        acc, layer.multiplier.astype(np.int64), layer.shift.astype(np.int64)
    )
    return np.clip(out + zp_out, layer.act_min, layer.act_max).astype(np.int8)


def _pad(x: np.ndarray, ph: int, pw: int, value: float) -> np.ndarray:
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=value)


def _out_hw(h: int, w: int, layer: QLayer) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _taps(xp: np.ndarray, layer: QLayer, ho: int, wo: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (ky, kx, strided view [N, Ho, Wo, C]) for every kernel tap of a padded input."""
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    for ky in range(kh):
        for kx in range(kw):
            yield ky, kx, xp[:, ky : ky + sh * (ho - 1) + 1 : sh, kx : kx + sw * (wo - 1) + 1 : sw, :]


def _conv(x: np.ndarray, layer: QLayer, w: np.ndarray, zp_in: int) -> np.ndarray:
    """Regular conv, weights OHWI; returns the int64 accumulator [N, Ho, Wo, Cout] without bias."""
    n, h, wd, c = x.shape
    ho, wo = _out_hw(h, wd, layer)
    xo = _pad(x.astype(np.float64) - zp_in, *layer.padding, 0.0)  # padding with zp_in contributes 0
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    win = sliding_window_view(xo, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]  # [N,Ho,Wo,C,kh,kw]
    cols = win.reshape(n * ho * wo, c * kh * kw)
    wmat = w.astype(np.float64).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)  # (C, ky, kx) order
    return np.rint(cols @ wmat.T).astype(np.int64).reshape(n, ho, wo, -1)


def _dwconv(x: np.ndarray, layer: QLayer, w: np.ndarray, zp_in: int) -> np.ndarray:
    """Depthwise conv (multiplier 1), weights [kh, kw, C]."""
    n, h, wd, c = x.shape
    ho, wo = _out_hw(h, wd, layer)
    xo = _pad(x.astype(np.int64) - zp_in, *layer.padding, 0)
    acc = np.zeros((n, ho, wo, c), dtype=np.int64)
    for ky, kx, tap in _taps(xo, layer, ho, wo):
        acc += tap * w[ky, kx].astype(np.int64)
    return acc


def _maxpool(x: np.ndarray, layer: QLayer) -> np.ndarray:
    n, h, wd, c = x.shape
    ho, wo = _out_hw(h, wd, layer)
    xp = _pad(x.astype(np.int16), *layer.padding, -32768)  # below any int8: out-of-bounds never wins
    out = np.full((n, ho, wo, c), -32768, dtype=np.int16)
    for _, _, tap in _taps(xp, layer, ho, wo):
        np.maximum(out, tap, out=out)
    return np.clip(out, layer.act_min, layer.act_max).astype(np.int8)


def _avgpool(x: np.ndarray, layer: QLayer) -> np.ndarray:
    n, h, wd, c = x.shape
    ho, wo = _out_hw(h, wd, layer)
    xp = _pad(x.astype(np.int64), *layer.padding, 0)
    inside = _pad(np.ones((1, h, wd, 1), dtype=np.int64), *layer.padding, 0)
    total = np.zeros((n, ho, wo, c), dtype=np.int64)
    count = np.zeros((1, ho, wo, 1), dtype=np.int64)
    for (_, _, tap), (_, _, ones) in zip(_taps(xp, layer, ho, wo), _taps(inside, layer, ho, wo), strict=True):
        total += tap
        count += ones
    return np.clip(round_half_away_div(total, count), layer.act_min, layer.act_max).astype(np.int8)


def _gap(x: np.ndarray, layer: QLayer) -> np.ndarray:
    h, wd = x.shape[1], x.shape[2]
    total = x.astype(np.int64).sum(axis=(1, 2), keepdims=True)
    return np.clip(round_half_away_div(total, h * wd), layer.act_min, layer.act_max).astype(np.int8)


def _add(a: np.ndarray, b: np.ndarray, layer: QLayer, zp_a: int, zp_b: int, zp_out: int) -> np.ndarray:
    """TFLite integer_ops AddElementwise: rescale both inputs to a common 2^20-headroom scale, add,
    rescale to the output; multiplier/shift = (input 0, input 1, output)."""
    assert layer.multiplier is not None and layer.shift is not None
    m = layer.multiplier.astype(np.int64)
    s = layer.shift.astype(np.int64)
    va = (a.astype(np.int64) - zp_a) << ADD_LEFT_SHIFT
    vb = (b.astype(np.int64) - zp_b) << ADD_LEFT_SHIFT
    sa = multiply_by_quantized_multiplier(va, m[0], s[0])
    sb = multiply_by_quantized_multiplier(vb, m[1], s[1])
    raw = multiply_by_quantized_multiplier(wrap_int32(sa + sb), m[2], s[2]) + zp_out
    return np.clip(raw, layer.act_min, layer.act_max).astype(np.int8)


def _run_batch(qm: QModel, x: np.ndarray, level: int) -> list[np.ndarray | None]:
    values: list[np.ndarray | None] = [None] * len(qm.tensors)
    values[qm.input] = x
    for layer in qm.layers:
        srcs = [values[i] for i in layer.inputs]
        if any(s is None for s in srcs):
            raise ValueError(f"layer {layer.name!r} reads a tensor no earlier layer produced")
        src = srcs[0]
        assert src is not None
        zp_in = qm.tensors[layer.inputs[0]].zero_point
        zp_out = qm.tensors[layer.output].zero_point
        w = layer.weight_at(level)
        if layer.op == "conv2d":
            assert w is not None
            y = _requant(_conv(src, layer, w, zp_in), layer, zp_out)
        elif layer.op == "dwconv2d":
            assert w is not None
            y = _requant(_dwconv(src, layer, w, zp_in), layer, zp_out)
        elif layer.op == "fc":
            assert w is not None
            flat = src.reshape(src.shape[0], -1).astype(np.float64) - zp_in  # HWC order
            acc = np.rint(flat @ w.astype(np.float64).T).astype(np.int64)
            y = _requant(acc, layer, zp_out).reshape(src.shape[0], 1, 1, -1)
        elif layer.op == "maxpool":
            y = _maxpool(src, layer)
        elif layer.op == "avgpool":
            y = _avgpool(src, layer)
        elif layer.op == "gap":
            y = _gap(src, layer)
        elif layer.op == "add":
            other = srcs[1]
            assert other is not None
            zp_b = qm.tensors[layer.inputs[1]].zero_point
            y = _add(src, other, layer, zp_in, zp_b, zp_out)
        else:
            raise ValueError(f"layer {layer.name!r}: unknown op {layer.op!r}")
        expected = (x.shape[0], *qm.tensors[layer.output].shape)
        if y.shape != expected:
            raise ValueError(f"layer {layer.name!r} produced {y.shape}, its tensor says {expected}")
        values[layer.output] = y
    return values


@overload
def run_int8(qm: QModel, x: np.ndarray, level: int = 0, *, record: Literal[False] = False) -> np.ndarray: ...


@overload
def run_int8(
    qm: QModel, x: np.ndarray, level: int = 0, *, record: Literal[True]
) -> tuple[np.ndarray, list[np.ndarray | None]]: ...


def run_int8(
    qm: QModel, x: np.ndarray, level: int = 0, *, record: bool = False
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray | None]]:
    """Outputs [N, num_outputs] int8 of `qm` at run-time `level` for inputs x [N, H, W, C] int8.

    With `record`, also returns every tensor (by tensor index) as int8 [N, H, W, C].
    """
    x = np.asarray(x)
    want = tuple(qm.tensors[qm.input].shape)
    if x.dtype != np.int8 or x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"input must be int8 [N, {', '.join(map(str, want))}], got {x.dtype} {x.shape}")
    if not 0 <= level < len(qm.levels):
        raise ValueError(f"level {level} out of range: the model serves {len(qm.levels)} level(s)")
    outs: list[np.ndarray] = []
    records: list[list[np.ndarray | None]] = []
    for start in range(0, max(x.shape[0], 1), BATCH):
        values = _run_batch(qm, x[start : start + BATCH], level)
        out = values[qm.output]
        assert out is not None
        outs.append(out.reshape(out.shape[0], -1))
        if record:
            records.append(values)
    result = np.concatenate(outs, axis=0)
    if not record:
        return result
    tensors: list[np.ndarray | None] = []
    for i in range(len(qm.tensors)):
        parts = [r[i] for r in records]
        tensors.append(None if any(p is None for p in parts) else np.concatenate(parts, axis=0))  # type: ignore[arg-type]
    return result, tensors
