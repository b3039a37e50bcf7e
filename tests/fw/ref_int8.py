"""A small, deliberately plain int8 reference for the firmware tests (TFLite reference semantics).

Written straight from TFLite's reference kernels (gemmlowp SaturatingRoundingDoublingHighMul with its
sign-dependent nudge, RoundingDivideByPOT, average-pool rounding, quantized ADD with left shift 20),
not from the C code, so it checks the firmware's branch-free simplifications. Python integers, loops:
slow but only used on the tiny default model.
"""

from __future__ import annotations

import numpy as np

from harness.qmodel import ADD_LEFT_SHIFT, QLayer, QModel

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
    q = ab + nudge
    return q // (1 << 31) if q >= 0 else -((-q) // (1 << 31))  # C division truncates toward zero


def rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT (half away from zero)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def requantize(acc: int, mult: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rdbpot(srdhm(_wrap32(acc * (1 << left)), mult), right)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def _avg_round(total: int, count: int) -> int:
    """TFLite average pooling: (sum ± count/2) / count with C's truncating division."""
    if total > 0:
        return (total + count // 2) // count
    return -((-total + count // 2) // count)


def _window_ranges(out_i: int, stride: int, pad: int, k: int, size: int) -> range:
    start = out_i * stride - pad
    return range(max(0, -start), min(k, size - start))


def _conv(
    lay: QLayer,
    x: np.ndarray,
    zp_in: int,
    out_shape: tuple[int, int, int],
    zp_out: int,
    level: int,
    depthwise: bool,
) -> np.ndarray:
    h, w, _c_in = x.shape
    oh, ow, c_out = out_shape
    kh, kw = lay.kernel
    sh, sw = lay.stride
    ph, pw = lay.padding
    weight = lay.weight_at(level)
    assert weight is not None and lay.multiplier is not None and lay.shift is not None
    bias = lay.bias if lay.bias is not None else np.zeros(c_out, np.int64)
    out = np.zeros(out_shape, np.int8)
    xs = x.astype(np.int64) - zp_in
    for oy in range(oh):
        for ox in range(ow):
            for co in range(c_out):
                acc = 0
                for ky in _window_ranges(oy, sh, ph, kh, h):
                    for kx in _window_ranges(ox, sw, pw, kw, w):
                        iy, ix = oy * sh - ph + ky, ox * sw - pw + kx
                        if depthwise:
                            acc += int(weight[ky, kx, co]) * int(xs[iy, ix, co])
                        else:
                            acc += int(np.dot(weight[co, ky, kx].astype(np.int64), xs[iy, ix]))
                acc += int(bias[co])
                v = requantize(acc, int(lay.multiplier[co]), int(lay.shift[co])) + zp_out
                out[oy, ox, co] = _clamp(v, lay.act_min, lay.act_max)
    return out


def _fc(lay: QLayer, x: np.ndarray, zp_in: int, c_out: int, zp_out: int, level: int) -> np.ndarray:
    weight = lay.weight_at(level)
    assert weight is not None and lay.multiplier is not None and lay.shift is not None
    xs = x.reshape(-1).astype(np.int64) - zp_in
    out = np.zeros((1, 1, c_out), np.int8)
    for co in range(c_out):
        acc = int(np.dot(weight[co].astype(np.int64), xs))
        acc += int(lay.bias[co]) if lay.bias is not None else 0
        v = requantize(acc, int(lay.multiplier[co]), int(lay.shift[co])) + zp_out
        out[0, 0, co] = _clamp(v, lay.act_min, lay.act_max)
    return out


def _pool(lay: QLayer, x: np.ndarray, out_shape: tuple[int, int, int], kind: str) -> np.ndarray:
    h, w, c = x.shape
    oh, ow, _ = out_shape
    kh, kw = lay.kernel
    sh, sw = lay.stride
    ph, pw = lay.padding
    out = np.zeros(out_shape, np.int8)
    for oy in range(oh):
        for ox in range(ow):
            taps = [
                (oy * sh - ph + ky, ox * sw - pw + kx)
                for ky in _window_ranges(oy, sh, ph, kh, h)
                for kx in _window_ranges(ox, sw, pw, kw, w)
            ]
            for ch in range(c):
                vals = [int(x[iy, ix, ch]) for iy, ix in taps]
                # average: TFLite rounds half away from zero and counts in-bounds taps only
                v = max(vals) if kind == "max" else _avg_round(sum(vals), len(vals))
                out[oy, ox, ch] = _clamp(v, lay.act_min, lay.act_max)
    return out


def _gap(lay: QLayer, x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    out = np.zeros((1, 1, c), np.int8)
    count = h * w
    for ch in range(c):
        total = int(x[:, :, ch].astype(np.int64).sum())
        v = _avg_round(total, count)
        out[0, 0, ch] = _clamp(v, lay.act_min, lay.act_max)
    return out


def _add(lay: QLayer, a: np.ndarray, zp_a: int, b: np.ndarray, zp_b: int, zp_out: int) -> np.ndarray:
    assert lay.multiplier is not None and lay.shift is not None
    m = [int(v) for v in lay.multiplier]
    s = [int(v) for v in lay.shift]
    out = np.zeros(a.shape, np.int8)
    for idx in np.ndindex(a.shape):
        va = (int(a[idx]) - zp_a) * (1 << ADD_LEFT_SHIFT)
        vb = (int(b[idx]) - zp_b) * (1 << ADD_LEFT_SHIFT)
        total = requantize(va, m[0], s[0]) + requantize(vb, m[1], s[1])
        out[idx] = _clamp(requantize(total, m[2], s[2]) + zp_out, lay.act_min, lay.act_max)
    return out


def run_qmodel(qm: QModel, x: np.ndarray, level: int = 0) -> list[np.ndarray]:
    """All tensors of one inference (batch 1, x shaped like the input tensor)."""
    values: list[np.ndarray | None] = [None] * len(qm.tensors)
    values[qm.input] = x.astype(np.int8).reshape(qm.tensors[qm.input].shape)
    for lay in qm.layers:
        t_in = qm.tensors[lay.inputs[0]]
        t_out = qm.tensors[lay.output]
        src = values[lay.inputs[0]]
        assert src is not None, f"{lay.name}: input not computed"
        if lay.op in ("conv2d", "dwconv2d"):
            res = _conv(
                lay,
                src,
                t_in.zero_point,
                t_out.shape,
                t_out.zero_point,
                level,
                depthwise=lay.op == "dwconv2d",
            )
        elif lay.op == "fc":
            res = _fc(lay, src, t_in.zero_point, t_out.shape[2], t_out.zero_point, level)
        elif lay.op in ("maxpool", "avgpool"):
            res = _pool(lay, src, t_out.shape, "max" if lay.op == "maxpool" else "avg")
        elif lay.op == "gap":
            res = _gap(lay, src)
        elif lay.op == "add":
            other = values[lay.inputs[1]]
            assert other is not None
            res = _add(
                lay, src, t_in.zero_point, other, qm.tensors[lay.inputs[1]].zero_point, t_out.zero_point
            )
        else:
            raise ValueError(f"unknown op {lay.op}")
        values[lay.output] = res
    return [v if v is not None else np.zeros(0, np.int8) for v in values]


def run_output(qm: QModel, x: np.ndarray, level: int = 0) -> np.ndarray:
    return run_qmodel(qm, x, level)[qm.output].reshape(-1)
