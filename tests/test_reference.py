"""The float forward pass, the fixed-point helpers and the int8 reference.

Also home of the small model builders the other numerics tests import (`all_ops_spec`,
`random_model`): hand-built NetSpecs with random weights, batch norm and nested masks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from harness.floatref import fold_batchnorm, forward_float
from harness.quantize import dequantize, quantize, quantize_input
from harness.reference import run_int8
from harness.requant import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    round_half_away_div,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from trainers.graph import Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Pool, TrainedModel
from trainers.untrained import random_params

# ---------------------------------------------------------------------------------------------
# model builders shared by the numerics tests


def all_ops_spec(h: int = 12, c: int = 3, classes: int = 10) -> NetSpec:
    """Every op the runtime knows: 3x3, strided, 1x1, depthwise, max/avg pool (padded), add, relu6,
    GAP, linear."""
    return NetSpec(
        "all_ops",
        (h, h, c),
        classes,
        (
            Conv2d("conv1", "input", 8, kernel=3, stride=1, padding=1, act="relu6"),
            Conv2d("conv2", "conv1", 16, kernel=3, stride=2, padding=1),
            Conv2d("dw", "conv2", 16, kernel=3, stride=1, padding=1, depthwise=True, act="relu6"),
            Conv2d("pw", "dw", 16, kernel=1, act="none"),
            Add("res", ("conv2", "pw"), act="relu"),
            Pool("maxp", "res", "max", kernel=3, stride=2, padding=1),
            Conv2d("conv3", "maxp", 24, kernel=1, bias=True),
            Pool("avgp", "conv3", "avg", kernel=3, stride=1, padding=1),
            GlobalAvgPool("gap", "avgp"),
            Linear("fc", "gap", classes),
        ),
    )


def flat_spec() -> NetSpec:
    """A quickstart-like net on 8x8x1 with a Linear reading a spatial (flattened HWC) input."""
    return NetSpec(
        "flat",
        (8, 8, 1),
        10,
        (
            Conv2d("c1", "input", 8, kernel=3, padding=1),
            Pool("p1", "c1", "max"),
            Conv2d("c2", "p1", 12, kernel=3, stride=1, padding=0, act="relu6"),
            Pool("p2", "c2", "avg", kernel=2, stride=1),
            Linear("fc1", "p2", 16, act="relu"),
            Linear("fc2", "fc1", 10),
        ),
    )


def random_model(
    spec: NetSpec, seed: int = 0, levels: tuple[float, ...] = (0.0,), zero_channel: bool = False
) -> TrainedModel:
    """Random weights and batch norm (trainers.untrained.random_params) and, for sparse levels, nested
    masks on every weighted layer — first conv and depthwise included, weight by weight — so the
    tests reach combinations trainers never make (level k keeps the weights whose random score beats
    the k-th sparsity quantile)."""
    rng = np.random.default_rng(seed)
    params = random_params(spec, rng)
    masks: dict[str, np.ndarray] = {}
    for name, p in params.items():
        if zero_channel:
            p["weight"][0] = 0.0
        if any(s > 0 for s in levels):
            score = rng.random(p["weight"].shape)
            masks[name] = np.stack([score >= np.quantile(score, s) for s in levels])
    return TrainedModel(spec, params, levels, masks)


def random_inputs(spec: NetSpec, n: int, seed: int = 1, high: float = 1.0) -> np.ndarray:
    """Uniform noise in [0, high) with a random gain per sample and channel, so that samples differ
    in more than noise (a random net's logits otherwise barely move between samples)."""
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.1, 1.0, (n, 1, 1, spec.input_shape[2]))
    return (rng.uniform(0.0, high, (n, *spec.input_shape)) * gain).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# fixed-point helpers on hand-computed cases


def test_srdhm_hand_cases() -> None:
    cases = [
        # (a, b, expected): (a*b + nudge) / 2^31 truncated toward zero
        (1 << 30, 1 << 30, 1 << 29),  # 0.5 * 0.5 in Q31 = 0.25
        (3, 1 << 30, 2),  # 1.5 → rounds half up to 2
        (-3, 1 << 30, -1),  # -1.5: nudge 1-2^30 then truncation → -1 (ties round up, not away)
        (1, 1 << 30, 1),  # 0.5 → 1
        (-1, 1 << 30, 0),  # -0.5 → 0
        (-7, 1 << 29, -2),  # -1.75 → -2
        (5, 1 << 29, 1),  # 1.25 → 1
        (-5, 1 << 29, -1),  # -1.25 → -1
        (INT32_MIN, INT32_MIN, INT32_MAX),  # the single saturating case
        (INT32_MIN, INT32_MAX, -INT32_MAX),  # -1 * (1 - 2^-31) in Q31
        (INT32_MAX, INT32_MAX, INT32_MAX - 1),
        (0, INT32_MIN, 0),
    ]
    for a, b, want in cases:
        assert int(saturating_rounding_doubling_high_mul(a, b)) == want, (a, b)


def test_rounding_divide_by_pot_hand_cases() -> None:
    cases = [
        (5, 1, 3),  # 2.5 → 3
        (-5, 1, -3),  # -2.5 → -3 (half away from zero)
        (7, 2, 2),  # 1.75 → 2
        (-7, 2, -2),
        (6, 2, 2),  # 1.5 → 2
        (-6, 2, -2),  # -1.5 → -2
        (-2, 2, -1),  # -0.5 → -1
        (-1, 2, 0),  # -0.25 → 0
        (9, 0, 9),
        (INT32_MIN, 31, -1),
        (INT32_MAX, 31, 1),
        (1 << 30, 31, 1),  # exactly 0.5 → 1
        (-(1 << 30), 31, -1),  # exactly -0.5 → -1
    ]
    for x, e, want in cases:
        assert int(rounding_divide_by_pot(x, e)) == want, (x, e)
    with pytest.raises(ValueError):
        rounding_divide_by_pot(1, 32)


def test_multiply_by_quantized_multiplier_shifts() -> None:
    # M = 2^30 is 0.5; shift -2 → x * 0.5 / 4 = x / 8 with double rounding
    assert int(multiply_by_quantized_multiplier(12, 1 << 30, -2)) == 2  # 1.5 → 2
    assert int(multiply_by_quantized_multiplier(-12, 1 << 30, -2)) == -2  # -1.5 → -2
    assert int(multiply_by_quantized_multiplier(100, 1 << 30, -3)) == 6  # 6.25 → 6
    # shift > 0 shifts left first: 5 * 2^3 * 0.5 = 20
    assert int(multiply_by_quantized_multiplier(5, 1 << 30, 3)) == 20
    # 0.75 * 1000 * 2 = 1500
    assert int(multiply_by_quantized_multiplier(1000, 3 << 29, 1)) == 1500
    # double rounding: 1 * 0.5 / 2 is exactly 0.25, but SRDHM rounds 0.5 up to 1 and
    # RoundingDivideByPOT then rounds 0.5 away from zero to 1 (single rounding would give 0) ...
    assert int(multiply_by_quantized_multiplier(1, 1 << 30, -1)) == 1
    # ... while for -1 the first stage rounds -0.5 up to 0: the result is not odd-symmetric
    assert int(multiply_by_quantized_multiplier(-1, 1 << 30, -1)) == 0
    assert int(multiply_by_quantized_multiplier(-3, 1 << 30, -1)) == -1  # -1.5 → -1, then -0.5 → -1
    # vectorised per channel: multipliers and shifts broadcast on the last axis
    got = multiply_by_quantized_multiplier(
        np.array([[8, 8]]), np.array([1 << 30, 1 << 30]), np.array([0, -1])
    )
    assert got.tolist() == [[4, 2]]


def _brute_srdhm(a: int, b: int) -> int:
    """gemmlowp's definition with Python integers."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    v = ab + nudge
    return v // (1 << 31) if v >= 0 else -((-v) // (1 << 31))


def _brute_rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)


def test_helpers_match_integer_definitions_on_random_values() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(INT32_MIN, INT32_MAX, 4000, endpoint=True)
    b = rng.integers(INT32_MIN, INT32_MAX, 4000, endpoint=True)
    a[:4] = [INT32_MIN, INT32_MIN, INT32_MAX, -1]
    b[:4] = [INT32_MIN, INT32_MAX, INT32_MIN, 1]
    e = rng.integers(0, 32, 4000)
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.tolist() == [_brute_srdhm(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    got = rounding_divide_by_pot(a, e)
    assert got.tolist() == [_brute_rdbpot(int(x), int(k)) for x, k in zip(a, e, strict=True)]
    # the first stage equals round-half-up of a*b/2^31 whenever it does not saturate
    half_up = (a.astype(object) * b.astype(object) + (1 << 30)) // (1 << 31)
    ok = ~((a == INT32_MIN) & (b == INT32_MIN))
    assert saturating_rounding_doubling_high_mul(a, b)[ok].tolist() == list(half_up[ok])


def test_average_pool_rounding() -> None:
    assert round_half_away_div(np.array([5, -5, 4, -4, 7, -7, 0]), 2).tolist() == [3, -3, 2, -2, 4, -4, 0]
    assert round_half_away_div(np.array([10, -10, 11, -11]), 4).tolist() == [3, -3, 3, -3]  # 2.5, 2.75


# ---------------------------------------------------------------------------------------------
# float forward pass against torch (the semantics the trainers' builder uses)


def test_forward_float_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spec = all_ops_spec()
    model = random_model(spec, seed=3)
    folded = fold_batchnorm(model)
    x = random_inputs(spec, 5)
    logits, outs = forward_float(spec, folded, x, record=True)

    def t(a: np.ndarray) -> object:
        return torch.from_numpy(np.ascontiguousarray(a))

    def nchw(a: np.ndarray) -> object:
        return t(a.transpose(0, 3, 1, 2))

    def conv(name: str, src: object, groups: int = 1, stride: int = 1, padding: int = 0) -> object:
        p = model.params[name]
        y = F.conv2d(
            src, t(p["weight"]), t(p["bias"]) if "bias" in p else None, stride, padding, groups=groups
        )
        return F.batch_norm(
            y,
            t(p["bn_mean"]),
            t(p["bn_var"]),
            t(p["bn_weight"]),
            t(p["bn_bias"]),
            False,
            0.0,
            float(p["bn_eps"]),
        )

    with torch.no_grad():
        c1 = F.relu6(conv("conv1", nchw(x), padding=1))
        c2 = F.relu(conv("conv2", c1, stride=2, padding=1))
        dw = F.relu6(conv("dw", c2, groups=16, padding=1))
        pw = conv("pw", dw)
        res = F.relu(c2 + pw)
        mp = F.max_pool2d(res, 3, 2, 1)
        c3 = F.relu(conv("conv3", mp))
        ap = F.avg_pool2d(c3, 3, 1, 1, count_include_pad=False)
        gap = ap.mean(dim=(2, 3))
        fc = F.linear(gap, t(model.params["fc"]["weight"]), t(model.params["fc"]["bias"]))
    for name, ref in [("conv1", c1), ("dw", dw), ("res", res), ("maxp", mp), ("avgp", ap)]:
        np.testing.assert_allclose(outs[name], ref.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, fc.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec_fn", [all_ops_spec, flat_spec])
def test_forward_float_matches_the_trainers_torch_module(spec_fn: Callable[[], NetSpec]) -> None:
    """Calibration and accuracy_float rely on floatref computing what the trained module computes."""
    pytest.importorskip("torch")
    from trainers import torchnet

    spec = spec_fn()
    model = random_model(spec, seed=6, levels=(0.0, 0.6))
    module = torchnet.build_module(spec)
    torchnet.load_params(module, spec, model.params)
    x = random_inputs(spec, 16)
    folded = fold_batchnorm(model)
    for level in range(2):
        with torchnet.level_masks(module, model.masks, level):
            want = torchnet.predict(module, x)
        got = forward_float(spec, folded, x, masks_level=level, masks=model.masks)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_forward_float_linear_flattens_hwc_and_applies_masks() -> None:
    spec = flat_spec()
    model = random_model(spec, seed=4, levels=(0.5, 0.8))
    folded = fold_batchnorm(model)
    x = random_inputs(spec, 3)
    _, outs = forward_float(spec, folded, x, masks_level=1, masks=model.masks, record=True)
    w = folded["fc1"]["weight"] * model.masks["fc1"][1]
    want = np.maximum(outs["p2"].reshape(3, -1) @ w.T + folded["fc1"]["bias"], 0)  # NHWC reshape = HWC order
    np.testing.assert_allclose(outs["fc1"].reshape(3, -1), want, rtol=1e-5, atol=1e-5)
    dense = forward_float(spec, folded, x)
    assert not np.allclose(dense, outs["fc2"].reshape(3, -1))  # masks really changed the result


# ---------------------------------------------------------------------------------------------
# the int8 reference


def _brute_conv(
    x: np.ndarray, w: np.ndarray, zp_in: int, k: int, s: int, p: int, depthwise: bool
) -> np.ndarray:
    """TFLite's loop nest, scalar: skip out-of-bounds taps; returns the int accumulator."""
    h, wd, c = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    cout = c if depthwise else w.shape[0]
    acc = np.zeros((ho, wo, cout), dtype=np.int64)
    for oy in range(ho):
        for ox in range(wo):
            for o in range(cout):
                total = 0
                for ky in range(k):
                    for kx in range(k):
                        iy, ix = oy * s - p + ky, ox * s - p + kx
                        if not (0 <= iy < h and 0 <= ix < wd):
                            continue
                        if depthwise:
                            total += int(w[ky, kx, o]) * (int(x[iy, ix, o]) - zp_in)
                        else:
                            for ci in range(c):
                                total += int(w[o, ky, kx, ci]) * (int(x[iy, ix, ci]) - zp_in)
                acc[oy, ox, o] = total
    return acc


def test_reference_layers_match_scalar_loops() -> None:
    """The vectorised kernels against straightforward scalar loops, layer by layer, on recorded tensors."""
    spec = all_ops_spec(h=7)
    model = random_model(spec, seed=5, levels=(0.3, 0.6))
    qm = quantize(model, random_inputs(spec, 32), (0.0, 1.0), name="loops")
    xq = quantize_input(random_inputs(spec, 2, seed=9), qm.tensors[0])
    for level in range(2):
        _, tensors = run_int8(qm, xq, level, record=True)
        for lay in qm.layers:
            src = tensors[lay.inputs[0]]
            got = tensors[lay.output]
            assert src is not None and got is not None
            zp_in, zp_out = qm.tensors[lay.inputs[0]].zero_point, qm.tensors[lay.output].zero_point
            for n in range(src.shape[0]):
                if lay.op in ("conv2d", "dwconv2d"):
                    w = lay.weight_at(level)
                    acc = _brute_conv(
                        src[n], w, zp_in, lay.kernel[0], lay.stride[0], lay.padding[0], lay.op == "dwconv2d"
                    )
                elif lay.op == "fc":
                    w = lay.weight_at(level).astype(np.int64)
                    acc = (w @ (src[n].reshape(-1).astype(np.int64) - zp_in)).reshape(1, 1, -1)
                else:
                    continue
                out = multiply_by_quantized_multiplier(acc + lay.bias, lay.multiplier, lay.shift) + zp_out
                want = np.clip(out, lay.act_min, lay.act_max)
                assert np.array_equal(got[n], want), (lay.name, level)
                if lay.op == "conv2d" and lay.name == "conv3":
                    assert lay.act_min == zp_out  # fused relu is an int8 clamp
        # pools and add, scalar
        by_name = {lay.name: lay for lay in qm.layers}
        maxp, avgp, res = by_name["maxp"], by_name["avgp"], by_name["res"]
        src = tensors[maxp.inputs[0]].astype(int)
        h = src.shape[1]
        for oy in range(tensors[maxp.output].shape[1]):
            for ox in range(tensors[maxp.output].shape[2]):
                ys = [y for y in range(oy * 2 - 1, oy * 2 + 2) if 0 <= y < h]
                xs = [x for x in range(ox * 2 - 1, ox * 2 + 2) if 0 <= x < h]
                want = src[:, ys][:, :, xs].max(axis=(1, 2))
                assert np.array_equal(tensors[maxp.output][:, oy, ox], want)
        src = tensors[avgp.inputs[0]].astype(int)
        h = src.shape[1]
        for oy in range(h):
            for ox in range(h):
                ys = [y for y in range(oy - 1, oy + 2) if 0 <= y < h]
                xs = [x for x in range(ox - 1, ox + 2) if 0 <= x < h]
                total = src[:, ys][:, :, xs].sum(axis=(1, 2))
                cnt = len(ys) * len(xs)
                want = [(t + cnt // 2) // cnt if t > 0 else -((-t + cnt // 2) // cnt) for t in total.ravel()]
                assert tensors[avgp.output][:, oy, ox].ravel().tolist() == want
        a, b = (tensors[i].astype(np.int64) for i in res.inputs)
        za, zb = (qm.tensors[i].zero_point for i in res.inputs)
        m, s = res.multiplier, res.shift
        sa = multiply_by_quantized_multiplier((a - za) * (1 << 20), m[0], s[0])
        sb = multiply_by_quantized_multiplier((b - zb) * (1 << 20), m[1], s[1])
        want = multiply_by_quantized_multiplier(sa + sb, m[2], s[2]) + qm.tensors[res.output].zero_point
        assert np.array_equal(tensors[res.output], np.clip(want, res.act_min, res.act_max))


@pytest.mark.parametrize("spec_fn", [all_ops_spec, flat_spec])
def test_int8_reference_tracks_float_forward(spec_fn: Callable[[], NetSpec]) -> None:
    spec = spec_fn()
    levels = (0.0, 0.5, 0.75)
    model = random_model(spec, seed=11, levels=levels)
    calib = random_inputs(spec, 256, seed=12)
    qm = quantize(model, calib, (0.0, 1.0), name=spec.name)
    x = random_inputs(spec, 200, seed=13)
    xq = quantize_input(x, qm.tensors[0])
    folded = fold_batchnorm(model)
    for level in range(len(levels)):
        f = forward_float(spec, folded, x, masks_level=level, masks=model.masks)
        q = run_int8(qm, xq, level)
        assert q.dtype == np.int8 and q.shape == (200, spec.num_classes)
        out = qm.tensors[qm.output]
        dq = dequantize(q, out)
        lsb = float(out.scale)
        # well under one output step on average: the error of a faithful int8 pipeline
        assert np.abs(dq - f).mean() < 1.0 * lsb, level
        assert np.corrcoef(dq.ravel(), f.ravel())[0, 1] > 0.99, level
        agree = dq.argmax(axis=1) == f.argmax(axis=1)
        top2 = np.sort(f, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * lsb  # samples not decided by rounding
        if clear.any():  # a heavily masked random net may have no clearly decided sample
            assert agree[clear].mean() >= 0.97, level
        if level == 0:  # the densest level has well-separated logits: agreement on nearly all
            assert clear.mean() > 0.8 and agree.mean() >= 0.9


def test_run_int8_levels_differ_and_inputs_are_checked() -> None:
    spec = flat_spec()
    model = random_model(spec, seed=2, levels=(0.0, 0.9))
    qm = quantize(model, random_inputs(spec, 64), (0.0, 1.0), name="lv")
    xq = quantize_input(random_inputs(spec, 50), qm.tensors[0])
    assert not np.array_equal(run_int8(qm, xq, 0), run_int8(qm, xq, 1))
    with pytest.raises(ValueError, match="level"):
        run_int8(qm, xq, 2)
    with pytest.raises(ValueError, match="int8"):
        run_int8(qm, xq.astype(np.int16))
    # batching does not change results
    assert np.array_equal(run_int8(qm, xq[:7], 1), run_int8(qm, xq, 1)[:7])
