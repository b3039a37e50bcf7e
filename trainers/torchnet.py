"""PyTorch execution of a `NetSpec`, and conversion of its parameters to and from graph.py's layouts.

`build_module(spec)` gives a module that takes NHWC float tensors (as datasets hold them) and returns
logits [N, classes]. Inside it runs NCHW (torch's native layout); a linear layer flattens its input
in NHWC order so its [out, in] weight is exactly the one graph.py describes.

Sparse trainers mask weights through `MaskedConv2d` / `MaskedLinear`: each holds an optional `mask`
(set per level by `set_level_masks`) and computes with `weight * mask`, so masked-out weights neither
contribute to the output nor receive gradient. An optional `route` tensor scales the gradient that
reaches each weight without changing the forward value (gradient routing between nested levels,
trainers/joint.py).

Quantization-aware training (trainers/qat.py) hooks in through plain attributes: `qat_weight` on
conv/linear units (a fake-quant of the effective weight; a conv unit then computes with its batch
norm folded into the weight using the running statistics, as the int8 model does), `qat_out` on
every unit (a fake-quant of its output) and `qat_in` on the module (of the network input). All are
None outside QAT and then cost nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.graph import INPUT, Activation, Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Pool, node_inputs

Params = dict[str, dict[str, np.ndarray]]


Transform = Callable[[torch.Tensor], torch.Tensor]


class _RouteGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `route` (elementwise)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(route)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (route,) = ctx.saved_tensors
        return grad * route, None


def route_grad(weight: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """`weight` in the forward pass; its gradient scaled by `route` in the backward pass."""
    out = _RouteGrad.apply(weight, route)
    assert isinstance(out, torch.Tensor)
    return out


class _Maskable:
    """The mask/route state shared by the masked layers."""

    weight: torch.Tensor
    mask: torch.Tensor | None
    route: torch.Tensor | None

    def effective_weight(self) -> torch.Tensor:
        """`weight * mask`, with gradients scaled by `route` when one is set."""
        weight = self.weight if self.route is None else route_grad(self.weight, self.route)
        return weight if self.mask is None else weight * self.mask

    def stacked(self) -> bool:
        """True when `mask` (and `route`) hold one slice per level: the batch is then L equal chunks,
        chunk k computed with level k's weights (all levels in one forward, sharing batch norm)."""
        return self.mask is not None and self.mask.dim() == self.weight.dim() + 1

    def level_weights(self) -> list[torch.Tensor]:
        assert self.mask is not None
        out = []
        for k in range(self.mask.shape[0]):
            weight = self.weight if self.route is None else route_grad(self.weight, self.route[k])
            out.append(weight * self.mask[k])
        return out


class MaskedConv2d(_Maskable, nn.Conv2d):
    """nn.Conv2d computing with `weight * mask` while a mask is set (None: dense)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask = None
        self.route = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked():
            weights = self.level_weights()
            chunks = x.chunk(len(weights))
            return torch.cat(
                [self._conv_forward(c, w, self.bias) for c, w in zip(chunks, weights, strict=True)]
            )
        return self._conv_forward(x, self.effective_weight(), self.bias)


class MaskedLinear(_Maskable, nn.Linear):
    """nn.Linear computing with `weight * mask` while a mask is set (None: dense)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask = None
        self.route = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked():
            weights = self.level_weights()
            chunks = x.chunk(len(weights))
            return torch.cat([F.linear(c, w, self.bias) for c, w in zip(chunks, weights, strict=True)])
        return F.linear(x, self.effective_weight(), self.bias)


def _activation(x: torch.Tensor, act: Activation) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    return x


class ConvUnit(nn.Module):
    """conv (+ batch norm) (+ activation) of one Conv2d node."""

    def __init__(self, node: Conv2d, in_channels: int) -> None:
        super().__init__()
        self.act: Activation = node.act
        self.conv = MaskedConv2d(
            in_channels,
            node.out_channels,
            node.kernel,
            stride=node.stride,
            padding=node.padding,
            groups=in_channels if node.depthwise else 1,
            bias=node.bias,
        )
        self.bn = nn.BatchNorm2d(node.out_channels) if node.batchnorm else None
        self.qat_weight: Transform | None = None
        self.qat_out: Transform | None = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) with batch norm folded in from its running statistics, as the int8 model has."""
        weight, bias = self.conv.effective_weight(), self.conv.bias
        if self.bn is None:
            return weight, bias
        assert self.bn.running_mean is not None and self.bn.running_var is not None
        gain = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * gain
        if bias is not None:
            shift = shift + bias * gain
        return weight * gain.reshape(-1, 1, 1, 1), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qat_weight is not None:
            weight, bias = self.folded()
            y = self.conv._conv_forward(x, self.qat_weight(weight), bias)
        else:
            y = self.conv(x)
            if self.bn is not None:
                y = self.bn(y)
        y = _activation(y, self.act)
        return y if self.qat_out is None else self.qat_out(y)


class LinearUnit(nn.Module):
    """Flatten in NHWC order, then linear (+ activation); the output is kept as [N, F, 1, 1]."""

    def __init__(self, node: Linear, in_features: int) -> None:
        super().__init__()
        self.act: Activation = node.act
        self.fc = MaskedLinear(in_features, node.out_features, bias=node.bias)
        self.qat_weight: Transform | None = None
        self.qat_out: Transform | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        if self.qat_weight is not None:
            y = F.linear(flat, self.qat_weight(self.fc.effective_weight()), self.fc.bias)
        else:
            y = self.fc(flat)
        y = _activation(y, self.act)[:, :, None, None]
        return y if self.qat_out is None else self.qat_out(y)


class PoolUnit(nn.Module):
    def __init__(self, node: Pool) -> None:
        super().__init__()
        # Padding never counts in an average, as in TFLite/CMSIS-NN int8 average pooling.
        self.pool: nn.Module = (
            nn.MaxPool2d(node.kernel, node.stride, node.padding)
            if node.kind == "max"
            else nn.AvgPool2d(node.kernel, node.stride, node.padding, count_include_pad=False)
        )

        self.qat_out: Transform | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        return y if self.qat_out is None else self.qat_out(y)


class GapUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qat_out: Transform | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3), keepdim=True)
        return y if self.qat_out is None else self.qat_out(y)


class AddUnit(nn.Module):
    def __init__(self, node: Add) -> None:
        super().__init__()
        self.act: Activation = node.act
        self.qat_out: Transform | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = _activation(a + b, self.act)
        return y if self.qat_out is None else self.qat_out(y)


class SpecModule(nn.Module):
    """Runs the nodes of a NetSpec in order; input NHWC [N, H, W, C], output logits [N, classes]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        shapes = spec.shapes()
        self.units = nn.ModuleDict()
        for node in spec.nodes:
            src = shapes[node_inputs(node)[0]]
            if isinstance(node, Conv2d):
                self.units[node.name] = ConvUnit(node, src[2])
            elif isinstance(node, Linear):
                self.units[node.name] = LinearUnit(node, src[0] * src[1] * src[2])
            elif isinstance(node, Pool):
                self.units[node.name] = PoolUnit(node)
            elif isinstance(node, GlobalAvgPool):
                self.units[node.name] = GapUnit()
            else:
                self.units[node.name] = AddUnit(node)
        # Free each intermediate after its last reader: keeps big-batch memory close to a chain's.
        last_use: dict[str, int] = {}
        for i, node in enumerate(spec.nodes):
            for src_name in node_inputs(node):
                last_use[src_name] = i
        self._release = [
            [name for name, last in last_use.items() if last == i] for i in range(len(spec.nodes))
        ]
        self.qat_in: Transform | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qat_in is not None:
            x = self.qat_in(x)
        values: dict[str, torch.Tensor] = {INPUT: x.permute(0, 3, 1, 2)}
        for i, node in enumerate(self.spec.nodes):
            unit = self.units[node.name]
            values[node.name] = unit(*(values[s] for s in node_inputs(node)))
            for name in self._release[i]:
                del values[name]
        return values[self.spec.nodes[-1].name].flatten(1)


def build_module(spec: NetSpec) -> SpecModule:
    """A torch module for `spec` (randomly initialised by torch's defaults; seed torch first)."""
    return SpecModule(spec)


def weight_layers(module: SpecModule) -> dict[str, MaskedConv2d | MaskedLinear]:
    """The maskable layer of every conv and linear node, by node name."""
    layers: dict[str, MaskedConv2d | MaskedLinear] = {}
    for name, unit in module.units.items():
        if isinstance(unit, ConvUnit):
            layers[name] = unit.conv
        elif isinstance(unit, LinearUnit):
            layers[name] = unit.fc
    return layers


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def export_params(module: SpecModule, spec: NetSpec) -> Params:
    """Parameters in graph.py's layouts (raw, unmasked weights; masks travel separately)."""
    params: Params = {}
    for node in spec.nodes:
        unit = module.units[node.name]
        if isinstance(unit, ConvUnit):
            entry = {"weight": _np(unit.conv.weight)}
            if unit.conv.bias is not None:
                entry["bias"] = _np(unit.conv.bias)
            if unit.bn is not None:
                assert unit.bn.running_mean is not None and unit.bn.running_var is not None
                entry["bn_weight"] = _np(unit.bn.weight)
                entry["bn_bias"] = _np(unit.bn.bias)
                entry["bn_mean"] = _np(unit.bn.running_mean)
                entry["bn_var"] = _np(unit.bn.running_var)
                # float64 keeps torch's Python-float eps exactly, so a reload computes identically.
                entry["bn_eps"] = np.asarray(unit.bn.eps, dtype=np.float64)
            params[node.name] = entry
        elif isinstance(unit, LinearUnit):
            entry = {"weight": _np(unit.fc.weight)}
            if unit.fc.bias is not None:
                entry["bias"] = _np(unit.fc.bias)
            params[node.name] = entry
    return params


def _copy(dst: torch.Tensor, src: np.ndarray, where: str) -> None:
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"{where}: shape {tuple(src.shape)} does not match the network's {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(torch.as_tensor(np.asarray(src), dtype=dst.dtype))


def load_params(module: SpecModule, spec: NetSpec, params: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Copy graph.py-layout parameters into `module`; ValueError on a missing node/tensor or a shape."""
    for node in spec.nodes:
        unit = module.units[node.name]
        if not isinstance(unit, ConvUnit | LinearUnit):
            continue
        if node.name not in params:
            raise ValueError(f"params: no entry for node {node.name!r}")
        p = params[node.name]

        def get(key: str, node_name: str = node.name, p: Mapping[str, np.ndarray] = p) -> np.ndarray:
            if key not in p:
                raise ValueError(f"params[{node_name!r}]: missing {key!r}")
            return p[key]

        layer = unit.conv if isinstance(unit, ConvUnit) else unit.fc
        _copy(layer.weight, get("weight"), f"params[{node.name!r}]['weight']")
        if layer.bias is not None:
            _copy(layer.bias, get("bias"), f"params[{node.name!r}]['bias']")
        if isinstance(unit, ConvUnit) and unit.bn is not None:
            bn = unit.bn
            assert bn.running_mean is not None and bn.running_var is not None
            for key, dst in (
                ("bn_weight", bn.weight),
                ("bn_bias", bn.bias),
                ("bn_mean", bn.running_mean),
                ("bn_var", bn.running_var),
            ):
                _copy(dst, get(key), f"params[{node.name!r}][{key!r}]")
            bn.eps = float(get("bn_eps"))


def set_level_masks(
    module: SpecModule, masks: Mapping[str, np.ndarray | torch.Tensor], level: int | None
) -> None:
    """Make every masked node compute with `weight * masks[node][level]`; level None clears all masks.

    `masks[node]` has graph.py's shape [levels, *weight.shape]. Nodes absent from `masks` run dense.
    """
    layers = weight_layers(module)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"masks given for {unknown[0]!r}, which is not a conv or linear node")
    for name, layer in layers.items():
        if level is None or name not in masks:
            layer.mask = None
            continue
        mask = torch.as_tensor(masks[name])
        if mask.shape[1:] != layer.weight.shape:
            raise ValueError(
                f"mask of {name!r} has shape {tuple(mask.shape)}, weight {tuple(layer.weight.shape)}"
            )
        layer.mask = mask[level].to(device=layer.weight.device, dtype=layer.weight.dtype)


@contextmanager
def level_masks(
    module: SpecModule, masks: Mapping[str, np.ndarray | torch.Tensor], level: int
) -> Iterator[SpecModule]:
    """Run a block with the masks of `level` applied, then return to dense."""
    set_level_masks(module, masks, level)
    try:
        yield module
    finally:
        set_level_masks(module, {}, None)


def as_tensor(a: np.ndarray, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """A tensor over a (possibly read-only) dataset array, without copying it on CPU.

    Datasets are frozen read-only; torch warns about sharing such memory although training only
    ever reads it, so the warning is silenced here rather than paying for a copy of the whole set.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def predict(module: SpecModule, x: np.ndarray, *, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """Float logits for NHWC inputs, in eval mode, without gradients."""
    was_training = module.training
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(
                np.asarray(x[start : start + batch_size]), dtype=torch.float32, device=device
            )
            out.append(module(xb).to("cpu").numpy())
    module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, module.spec.num_classes), np.float32)
