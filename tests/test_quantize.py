"""Quantization invariants: masks, scales, multipliers, biases, zero points, ADD and input params."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_reference import all_ops_spec, flat_spec, random_inputs, random_model

from harness.floatref import fold_batchnorm, forward_float
from harness.qmodel import QLayer, QModel
from harness.quantize import activation_params, add_params, quantize, quantize_input
from harness.requant import quantize_multiplier, quantize_multiplier_smaller_than_one_exp
from trainers.graph import TrainedModel

LEVELS = (0.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def nested() -> tuple[TrainedModel, QModel]:
    spec = all_ops_spec()
    model = random_model(spec, seed=21, levels=LEVELS)
    return model, quantize(model, random_inputs(spec, 128, seed=22), (0.0, 1.0), name="nested")


def _weighted(qm: QModel) -> list[QLayer]:
    return [lay for lay in qm.layers if lay.weight is not None]


def test_quantize_multiplier_hand_cases() -> None:
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(0.1) == (round(0.8 * 2**31), -3)  # 0.1 = 0.8 * 2^-3
    assert quantize_multiplier(3.0) == (3 << 29, 2)
    # q * 2^31 rounds up to 2^31: halve it and bump the shift
    assert quantize_multiplier(1.0 - 2.0**-40) == (1 << 30, 1)
    # below 2^-32 every bit would be shifted out: TFLite flushes to zero
    assert quantize_multiplier(2.0**-40) == (0, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier_smaller_than_one_exp(0.25) == (1 << 30, -1)
    with pytest.raises(ValueError):
        quantize_multiplier_smaller_than_one_exp(1.0)
    for real in np.random.default_rng(0).uniform(1e-6, 4.0, 200):
        m, s = quantize_multiplier(float(real))
        assert 1 << 30 <= m < 1 << 31
        assert math.isclose(m * 2.0 ** (s - 31), real, rel_tol=2.0**-30)


def test_masked_weights_are_exactly_zero_at_every_level(nested: tuple[TrainedModel, QModel]) -> None:
    _, qm = nested
    assert qm.levels == LEVELS
    for lay in _weighted(qm):
        assert lay.masks is not None and lay.masks.shape == (len(LEVELS), *lay.weight.shape)
        for k in range(len(LEVELS)):
            w = lay.weight_at(k)
            assert not np.any(w[~lay.masks[k]]), (lay.name, k)
            density = np.count_nonzero(w) / w.size
            assert density <= 1.0 - LEVELS[k] + 0.02  # really sparse at the advertised level
            if k:
                assert not np.any(lay.masks[k] & ~lay.masks[k - 1])  # nested: level k ⊂ level k-1
        # the stored weight is the level-0 one: zero wherever level 0 masks it
        assert not np.any(lay.weight[~lay.masks[0]])


def test_weight_layout_scale_and_rounding(nested: tuple[TrainedModel, QModel]) -> None:
    model, qm = nested
    folded = fold_batchnorm(model)
    for lay in _weighted(qm):
        w = folded[lay.name]["weight"] * model.masks[lay.name][0]
        if lay.op == "conv2d":
            w = w.transpose(0, 2, 3, 1)  # OIHW → OHWI
        elif lay.op == "dwconv2d":
            w = w[:, 0].transpose(1, 2, 0)  # [C,1,kh,kw] → [kh,kw,C]
        assert lay.weight.shape == w.shape and lay.weight.dtype == np.int8
        s = lay.weight_scale
        assert s.dtype == np.float32 and s.shape == (w.shape[-1] if lay.op == "dwconv2d" else w.shape[0],)
        axis = -1 if lay.op == "dwconv2d" else 0
        shape = [1] * w.ndim
        shape[axis] = -1
        s_b = s.astype(np.float64).reshape(shape)
        assert np.all(np.abs(lay.weight.astype(np.float64) * s_b - w) <= 0.5 * s_b + 1e-12)
        assert lay.weight.min() >= -127 and lay.weight.max() <= 127
        # every channel reaches ±127: scale = max|w| / 127
        flat = np.moveaxis(np.abs(lay.weight.astype(int)), axis, 0).reshape(len(s), -1)
        assert np.all(flat.max(axis=1) == 127)


def test_bias_multiplier_and_shift(nested: tuple[TrainedModel, QModel]) -> None:
    model, qm = nested
    folded = fold_batchnorm(model)
    for lay in _weighted(qm):
        s_in = float(qm.tensors[lay.inputs[0]].scale)
        s_out = float(qm.tensors[lay.output].scale)
        s_w = lay.weight_scale.astype(np.float64)
        b = folded[lay.name]["bias"].astype(np.float64)
        assert lay.bias.dtype == np.int32
        assert np.all(np.abs(lay.bias - b / (s_in * s_w)) <= 0.5 + 1e-6)
        assert lay.multiplier.dtype == np.int32 and lay.shift.dtype == np.int32
        assert np.all((lay.multiplier >= 1 << 30) & (lay.multiplier.astype(np.int64) < 1 << 31))
        effective = s_in * s_w / s_out
        np.testing.assert_allclose(
            lay.multiplier * 2.0 ** (lay.shift.astype(float) - 31), effective, rtol=2.0**-30
        )
        assert np.all(lay.shift <= 0)  # conv/fc effective scales are below 1 here


def test_activation_zero_points_and_ranges(nested: tuple[TrainedModel, QModel]) -> None:
    model, qm = nested
    spec = model.spec
    by_name = {t.name: t for t in qm.tensors}
    for t in qm.tensors:
        assert -128 <= t.zero_point <= 127
        assert t.scale > 0 and float(np.float32(t.scale)) == t.scale
        assert (
            (-128 - t.zero_point) * t.scale <= 1e-9 <= (127 - t.zero_point) * t.scale + 1e-9
        )  # 0 representable
    # ReLU outputs start at 0: zero point -128, and the fused activation clamps at it
    for name in ("conv2", "res", "conv3"):
        assert by_name[name].zero_point == -128
    lay = {lay.name: lay for lay in qm.layers}
    assert lay["conv1"].act_min == by_name["conv1"].zero_point
    assert lay["pw"].act_min == -128 and lay["pw"].act_max == 127
    # pools and GAP keep their input's quantization
    for pool, src in (("maxp", "res"), ("avgp", "conv3"), ("gap", "avgp")):
        assert (by_name[pool].scale, by_name[pool].zero_point) == (
            by_name[src].scale,
            by_name[src].zero_point,
        )
    # union over levels: every level's float activations fit every tensor's range (up to rounding)
    folded = fold_batchnorm(model)
    calib = random_inputs(spec, 128, seed=22)
    for k in range(len(LEVELS)):
        _, outs = forward_float(spec, folded, calib, masks_level=k, masks=model.masks, record=True)
        for name, y in outs.items():
            if name == "input":
                continue
            t = by_name[name]
            assert y.min() >= (-128 - t.zero_point) * t.scale - t.scale
            assert y.max() <= (127 - t.zero_point) * t.scale + t.scale


def test_union_of_level_ranges_is_wider_than_one_level() -> None:
    spec = flat_spec()
    model = random_model(spec, seed=5, levels=(0.0, 0.9))
    calib = random_inputs(spec, 64)
    both = quantize(model, calib, (0.0, 1.0), name="both")
    ranges = both.meta["activation_ranges"]  # raw calibrated min/max per node, before widening to 0
    folded = fold_batchnorm(model)
    per_level = [
        forward_float(spec, folded, calib, masks_level=k, masks=model.masks, record=True)[1] for k in range(2)
    ]
    for name, (lo, hi) in ranges.items():
        assert lo == min(float(outs[name].min()) for outs in per_level)
        assert hi == max(float(outs[name].max()) for outs in per_level)
    # the levels really differ, so the union is wider than either level alone somewhere
    assert any(
        max(float(o[name].max()) for o in per_level) > min(float(o[name].max()) for o in per_level)
        for name in ranges
        if name != "input"
    )
    t = {t.name: t for t in both.tensors}["fc2"]
    assert (t.scale, t.zero_point) == activation_params(*ranges["fc2"])


def test_relu6_bound() -> None:
    spec = all_ops_spec()
    model = random_model(spec, seed=8)
    # inputs up to 30 drive conv1 into its ReLU6 ceiling
    qm = quantize(model, random_inputs(spec, 64, high=30.0), (0.0, 30.0), name="r6")
    t = next(t for t in qm.tensors if t.name == "conv1")
    lay = next(lay for lay in qm.layers if lay.name == "conv1")
    assert lay.act_max == min(127, t.zero_point + round(6.0 / t.scale))
    assert (lay.act_max - t.zero_point) * t.scale == pytest.approx(6.0, abs=t.scale)


def test_input_quantization_comes_from_input_range() -> None:
    spec = flat_spec()
    model = random_model(spec, seed=1)
    calib = random_inputs(spec, 32, high=4.0)  # calibration never reaches 16
    qm = quantize(model, calib, (0.0, 16.0), name="in")
    t = qm.tensors[qm.input]
    assert t.scale == float(np.float32(16.0 / 255.0)) and t.zero_point == -128
    x = np.array([0.0, 16.0, 8.0, -3.0, 99.0], dtype=np.float32).reshape(1, 1, 1, 5)
    assert quantize_input(x, t).ravel().tolist() == [-128, 127, round(8.0 / t.scale) - 128, -128, 127]
    # a range that excludes 0 is widened to include it (0 must be exactly representable)
    scale, zp = activation_params(2.0, 4.0)
    assert zp == -128 and scale == pytest.approx(4.0 / 255.0)
    scale, zp = activation_params(-1.0, 3.0)
    assert zp == -64 and scale == pytest.approx(4.0 / 255.0)  # rint(-128 + 63.75)
    with pytest.raises(ValueError, match="input_range"):
        quantize(model, calib, (1.0, 1.0), name="bad")


def test_add_params_follow_tflite() -> None:
    mult, shift = add_params(0.5, 0.25, 1.0)
    # twice_max = 1: input 0 at 0.5, input 1 at 0.25, output 1 / 2^20
    assert mult.tolist() == [1 << 30, 1 << 30, 1 << 30]
    assert shift.tolist() == [0, -1, -19]
    mult, shift = add_params(0.02, 0.03, 0.04)
    real = [0.02 / 0.06, 0.03 / 0.06, 0.06 / (2**20 * 0.04)]
    for m, s, r in zip(mult.tolist(), shift.tolist(), real, strict=True):
        assert s <= 0 and math.isclose(m * 2.0 ** (s - 31), r, rel_tol=2.0**-30)


def test_all_zero_channel_keeps_its_bias() -> None:
    spec = flat_spec()
    model = random_model(spec, seed=3, zero_channel=True)
    qm = quantize(model, random_inputs(spec, 64), (0.0, 1.0), name="zero")
    folded = fold_batchnorm(model)
    for lay in _weighted(qm):
        assert not np.any(lay.weight[0]) if lay.op != "dwconv2d" else True
        assert lay.multiplier[0] >= 1 << 30  # not flushed: the bias still reaches the output
        s_in = float(qm.tensors[lay.inputs[0]].scale)
        real_bias = lay.bias[0] * s_in * float(lay.weight_scale[0])
        assert real_bias == pytest.approx(float(folded[lay.name]["bias"][0]), abs=1e-4)
