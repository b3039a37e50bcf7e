"""Architectures (trainers/archs.py) and their torch execution (trainers/torchnet.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.archs import ARCH_OPTIONS, ARCHS
from trainers.graph import INPUT, Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Pool, TrainedModel
from trainers.torchnet import (
    build_module,
    export_params,
    level_masks,
    load_params,
    predict,
    set_level_masks,
    weight_layers,
)

# (arch, input shape, classes, options): reduced widths keep the big nets quick on 2 cores.
CASES = [
    ("digits_cnn", (8, 8, 1), 10, {}),
    ("layer_zoo", (12, 12, 3), 4, {}),
    ("layer_zoo", (8, 8, 1), 10, {"channels": 4}),
    ("mobilenet_v1", (32, 32, 3), 10, {"width": 0.25}),
    ("resnet8", (32, 32, 3), 10, {}),
    ("resnet9", (32, 32, 3), 100, {"width": 0.125}),
]
IDS = [f"{a}-{'x'.join(map(str, s))}" for a, s, _, _ in CASES]


def _randomize_bn(module: torch.nn.Module, seed: int) -> None:
    """Give batch-norm layers non-trivial statistics so round trips really carry them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_every_registered_arch_is_covered_and_validates_options() -> None:
    assert {a for a, *_ in CASES} == set(ARCHS) == set(ARCH_OPTIONS)
    for name, builder in ARCHS.items():
        shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
        with pytest.raises(ValueError, match="bogus"):
            builder(shape, 10, bogus=1)
    with pytest.raises(ValueError, match="width"):
        ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=-1.0)
    with pytest.raises(ValueError, match="channels"):
        ARCHS["digits_cnn"]((8, 8, 1), 10, channels=(8, 0, 8))
    with pytest.raises(ValueError, match="input_shape"):
        ARCHS["resnet8"]((32, 32), 10)
    with pytest.raises(ValueError, match="at least 8x8"):
        ARCHS["layer_zoo"]((4, 4, 1), 3)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_default_specs_have_consistent_shapes(name: str) -> None:
    shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
    spec = ARCHS[name](shape, 10)
    shapes = spec.shapes()
    assert shapes[spec.nodes[-1].name] == (1, 1, 10)
    assert NetSpec.from_dict(spec.to_dict()) == spec


def test_reference_sizes() -> None:
    """Parameter counts of the published networks: guards against silently changed topologies."""

    def count(spec: NetSpec) -> int:
        return sum(p.numel() for p in build_module(spec).parameters())

    # MobileNetV1 for 10 classes is ~3.2 M parameters; MLPerf Tiny's ResNet-8 ~78 k.
    assert 3.1e6 < count(ARCHS["mobilenet_v1"]((32, 32, 3), 10)) < 3.3e6
    assert 7.5e4 < count(ARCHS["resnet8"]((32, 32, 3), 10)) < 8.0e4
    resnet8 = ARCHS["resnet8"]((32, 32, 3), 10)
    shapes = resnet8.shapes()
    assert [shapes[n] for n in ("stage1_add", "stage2_add", "stage3_add")] == [
        (32, 32, 16),
        (16, 16, 32),
        (8, 8, 64),
    ]
    projections = [n for n in resnet8.nodes if isinstance(n, Conv2d) and n.kernel == 1]
    assert [p.stride for p in projections] == [2, 2]
    # mobilenet on 32x32 keeps a 2x2 map before GAP (CIFAR-style stem stride 1)
    mb = ARCHS["mobilenet_v1"]((32, 32, 3), 10)
    assert mb.shapes()["block13_pw"] == (2, 2, 1024)
    assert ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.5).shapes()["block13_pw"] == (2, 2, 512)


def test_layer_zoo_uses_every_firmware_op() -> None:
    spec = ARCHS["layer_zoo"]((12, 12, 3), 4)
    shapes = spec.shapes()
    convs = [n for n in spec.nodes if isinstance(n, Conv2d)]
    assert any(c.kernel == 3 and c.stride == 1 and not c.depthwise for c in convs)
    assert any(c.stride == 2 for c in convs)
    assert any(c.kernel == 1 for c in convs)
    assert any(c.depthwise for c in convs)
    assert any(c.bias and not c.batchnorm for c in convs)
    assert {p.kind for p in spec.nodes if isinstance(p, Pool)} == {"max", "avg"}
    assert any(isinstance(n, Add) for n in spec.nodes)
    assert any(getattr(n, "act", None) == "relu6" for n in spec.nodes)
    assert any(isinstance(n, GlobalAvgPool) for n in spec.nodes)
    linears = [n for n in spec.nodes if isinstance(n, Linear)]
    # one linear reads a spatial map, so the NHWC flattening order reaches the firmware
    assert any(shapes[n.input][:2] != (1, 1) for n in linears)


@pytest.mark.parametrize(("name", "shape", "classes", "options"), CASES, ids=IDS)
def test_module_output_and_param_round_trip(
    name: str, shape: tuple[int, int, int], classes: int, options: dict[str, object]
) -> None:
    spec = ARCHS[name](shape, classes, **options)
    torch.manual_seed(0)
    a = build_module(spec)
    _randomize_bn(a, 0)
    x = np.random.default_rng(0).uniform(0, 1, size=(3, *shape)).astype(np.float32)
    out_a = predict(a, x)
    assert out_a.shape == (3, classes)
    assert np.all(np.isfinite(out_a))

    params = export_params(a, spec)
    for node in spec.nodes:
        if isinstance(node, Conv2d):
            in_c = 1 if node.depthwise else spec.shapes()[node.input][2]
            assert params[node.name]["weight"].shape == (node.out_channels, in_c, node.kernel, node.kernel)
            assert ("bn_mean" in params[node.name]) == node.batchnorm
            assert ("bias" in params[node.name]) == node.bias

    torch.manual_seed(1)
    b = build_module(spec)
    assert not np.array_equal(predict(b, x), out_a)
    load_params(b, spec, params)
    np.testing.assert_array_equal(predict(b, x), out_a)


def test_round_trip_through_trained_model_files(tmp_path: object) -> None:
    from pathlib import Path

    spec = ARCHS["layer_zoo"]((12, 12, 3), 4)
    torch.manual_seed(3)
    a = build_module(spec)
    _randomize_bn(a, 3)
    TrainedModel(spec=spec, params=export_params(a, spec)).save(Path(str(tmp_path)))
    loaded = TrainedModel.load(Path(str(tmp_path)))
    b = build_module(loaded.spec)
    load_params(b, loaded.spec, loaded.params)
    x = np.random.default_rng(3).uniform(0, 1, size=(2, 12, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(predict(b, x), predict(a, x))


def test_load_params_rejects_wrong_shapes_and_missing_nodes() -> None:
    spec = ARCHS["digits_cnn"]((8, 8, 1), 10)
    module = build_module(spec)
    params = export_params(module, spec)
    bad = {k: dict(v) for k, v in params.items()}
    bad["conv2"]["weight"] = bad["conv2"]["weight"][:, :3]
    with pytest.raises(ValueError, match=r"conv2.*weight"):
        load_params(module, spec, bad)
    missing = {k: v for k, v in params.items() if k != "fc"}
    with pytest.raises(ValueError, match="fc"):
        load_params(module, spec, missing)


def test_linear_weight_indexes_the_hwc_flattened_input() -> None:
    """graph.py's contract: a linear weight column k reads element k of the input flattened as HWC."""
    spec = NetSpec("flat", (2, 3, 2), 3, (Linear("fc", INPUT, 3),))
    module = build_module(spec)
    w = np.zeros((3, 12), np.float32)
    hwc = (1, 2, 0)  # row 1, column 2, channel 0
    w[0, (hwc[0] * 3 + hwc[1]) * 2 + hwc[2]] = 1.0
    w[1, 1] = 2.0  # (0, 0, 1): channel 1 of the first pixel
    w[2, 2] = -1.0  # (0, 1, 0): channel 0 of the second pixel along the row
    load_params(module, spec, {"fc": {"weight": w, "bias": np.zeros(3, np.float32)}})
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 2)).astype(np.float32)
    out = predict(module, x)
    np.testing.assert_allclose(out[:, 0], x[:, 1, 2, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], 2 * x[:, 0, 0, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, 2], -x[:, 0, 1, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, x.reshape(4, -1) @ w.T, rtol=0, atol=1e-5)


# A plain NumPy forward pass written from graph.py's documented semantics (not from torch), used to
# check that the torch module implements exactly the contract the harness quantizes against.


def _np_conv(x: np.ndarray, p: dict[str, np.ndarray], node: Conv2d) -> np.ndarray:
    n, h, w, _ = x.shape
    k, s, pad = node.kernel, node.stride, node.padding
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    weight = p["weight"]  # OIHW
    out = np.zeros((n, oh, ow, node.out_channels), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * s : i * s + k, j * s : j * s + k, :]  # [n, k, k, c]
            if node.depthwise:
                out[:, i, j, :] = np.einsum("nhwc,chw->nc", patch, weight[:, 0])
            else:
                out[:, i, j, :] = np.einsum("nhwc,ochw->no", patch, weight)
    if "bias" in p:
        out += p["bias"]
    if node.batchnorm:
        out = (out - p["bn_mean"]) / np.sqrt(p["bn_var"] + p["bn_eps"]) * p["bn_weight"] + p["bn_bias"]
    return out


def _np_act(x: np.ndarray, act: str) -> np.ndarray:
    return np.maximum(x, 0) if act == "relu" else np.clip(x, 0, 6) if act == "relu6" else x


def _np_pool(x: np.ndarray, node: Pool) -> np.ndarray:
    n, h, w, c = x.shape
    k, s = node.kernel, node.stride
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            win = x[:, i * s : i * s + k, j * s : j * s + k, :]
            out[:, i, j, :] = win.max(axis=(1, 2)) if node.kind == "max" else win.mean(axis=(1, 2))
    return out


def _np_forward(spec: NetSpec, params: dict[str, dict[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
    v: dict[str, np.ndarray] = {INPUT: x.astype(np.float64)}
    for node in spec.nodes:
        if isinstance(node, Conv2d):
            v[node.name] = _np_act(_np_conv(v[node.input], params[node.name], node), node.act)
        elif isinstance(node, Linear):
            flat = v[node.input].reshape(len(x), -1)
            y = flat @ params[node.name]["weight"].T + params[node.name].get("bias", 0.0)
            v[node.name] = _np_act(y, node.act)[:, None, None, :]
        elif isinstance(node, Pool):
            v[node.name] = _np_pool(v[node.input], node)
        elif isinstance(node, GlobalAvgPool):
            v[node.name] = v[node.input].mean(axis=(1, 2), keepdims=True)
        else:
            v[node.name] = _np_act(v[node.inputs[0]] + v[node.inputs[1]], node.act)
    return v[spec.nodes[-1].name].reshape(len(x), -1)


@pytest.mark.parametrize(("name", "shape", "classes", "options"), CASES[:3], ids=IDS[:3])
def test_torch_module_matches_graph_semantics(
    name: str, shape: tuple[int, int, int], classes: int, options: dict[str, object]
) -> None:
    spec = ARCHS[name](shape, classes, **options)
    torch.manual_seed(5)
    module = build_module(spec)
    _randomize_bn(module, 5)
    x = np.random.default_rng(5).uniform(0, 1, size=(4, *shape)).astype(np.float32)
    expected = _np_forward(spec, export_params(module, spec), x)
    np.testing.assert_allclose(predict(module, x), expected, rtol=1e-4, atol=1e-4)


def test_level_masks_zero_weights_and_their_gradients() -> None:
    spec = ARCHS["layer_zoo"]((12, 12, 3), 4)
    torch.manual_seed(7)
    module = build_module(spec)
    _randomize_bn(module, 7)
    params = export_params(module, spec)
    rng = np.random.default_rng(7)
    # Two nested levels on every conv/linear: level 1 keeps a subset of level 0.
    masks = {}
    for name in weight_layers(module):
        w = params[name]["weight"]
        keep0 = rng.uniform(size=w.shape) < 0.6
        keep1 = keep0 & (rng.uniform(size=w.shape) < 0.5)
        masks[name] = np.stack([keep0, keep1])
    x = rng.uniform(0, 1, size=(3, 12, 12, 3)).astype(np.float32)
    dense_out = predict(module, x)

    for level in (0, 1):
        zeroed = {n: dict(d) for n, d in params.items()}
        for name, m in masks.items():
            zeroed[name]["weight"] = np.where(m[level], params[name]["weight"], 0).astype(np.float32)
        reference = build_module(spec)
        load_params(reference, spec, zeroed)
        with level_masks(module, masks, level):
            np.testing.assert_allclose(predict(module, x), predict(reference, x), rtol=1e-5, atol=1e-6)
            module.eval()  # eval: batch-norm statistics stay as they are for the dense check below
            module.zero_grad()
            module(torch.as_tensor(x)).sum().backward()
            for name, layer in weight_layers(module).items():
                assert layer.weight.grad is not None
                assert torch.all(layer.weight.grad[~torch.as_tensor(masks[name][level])] == 0)
    # leaving the context restores the dense network
    np.testing.assert_array_equal(predict(module, x), dense_out)
    with pytest.raises(ValueError, match="not a conv or linear"):
        set_level_masks(module, {"gap": masks["stem"]}, 0)


def test_padded_pools_ignore_the_padding() -> None:
    """Average pooling divides by the real pixels only and max pooling never sees a padded zero,
    as TFLite/CMSIS-NN int8 pooling does."""
    nodes = (
        Pool("avg", INPUT, "avg", kernel=3, stride=1, padding=1),
        Pool("max", INPUT, "max", kernel=3, stride=1, padding=1),
        Add("sum", ("avg", "max")),
        GlobalAvgPool("gap", "sum"),
    )
    spec = NetSpec("pools", (3, 3, 1), 1, nodes)
    module = build_module(spec)
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # all negative: padded zeros would win a max
    captured: dict[str, torch.Tensor] = {}
    for name in ("avg", "max"):
        module.units[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
    predict(module, x)
    corner_avg = float(captured["avg"][0, 0, 0, 0])
    corner_max = float(captured["max"][0, 0, 0, 0])
    assert corner_avg == pytest.approx(np.mean([-1, -2, -4, -5]))
    assert corner_max == -1.0
