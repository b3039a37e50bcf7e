"""Float forward pass of a NetSpec in NumPy (NHWC), used for calibration and as the accuracy yardstick.

Semantics match the torch builder the trainers use: convolutions pad symmetrically with zeros, max
pooling pads with -inf, average pooling divides by the in-bounds taps only (count_include_pad=False),
Linear reads its input flattened in HWC order, activations are relu/relu6. Batch norm is folded into
the preceding conv (`fold_batchnorm`), so the forward pass here is the inference graph the int8 model
approximates. Convs run as im2col + one matmul; depthwise convs and pools as a sum over kernel taps.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from trainers.graph import INPUT, Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Node, Pool, TrainedModel


def fold_batchnorm(model: TrainedModel) -> dict[str, dict[str, np.ndarray]]:
    """Per weighted node: {"weight", "bias"} in float32 with batch norm folded into both.

    Conv weights stay OIHW ([C, 1, k, k] for depthwise). Folding scales each output channel by
    gamma / sqrt(var + eps), so a masked (zero) weight stays exactly zero. Nodes without a bias get
    one (zeros, or the folded BN shift).
    """
    folded: dict[str, dict[str, np.ndarray]] = {}
    for node in model.spec.nodes:
        if not isinstance(node, Conv2d | Linear):
            continue
        p = model.params[node.name]
        w = np.asarray(p["weight"], dtype=np.float64)
        cout = w.shape[0]
        b = np.asarray(p["bias"], dtype=np.float64) if "bias" in p else np.zeros(cout)
        if isinstance(node, Conv2d) and node.batchnorm and "bn_weight" in p:
            eps = float(np.asarray(p["bn_eps"]))
            gain = np.asarray(p["bn_weight"], dtype=np.float64) / np.sqrt(
                np.asarray(p["bn_var"], dtype=np.float64) + eps
            )
            w = w * gain.reshape(-1, *([1] * (w.ndim - 1)))
            b = (b - np.asarray(p["bn_mean"], dtype=np.float64)) * gain + np.asarray(
                p["bn_bias"], dtype=np.float64
            )
        folded[node.name] = {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}
    return folded


def _activate(x: np.ndarray, act: str) -> np.ndarray:
    if act == "relu":
        return np.maximum(x, 0)
    if act == "relu6":
        return np.clip(x, 0, 6)
    return x


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """[N, H, W, C] → strided view [N, Ho, Wo, C, k, k] (no copy)."""
    win = sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    return win[:, ::stride, ::stride]


def _pad(x: np.ndarray, padding: int, value: float = 0.0) -> np.ndarray:
    if padding == 0:
        return x
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return np.pad(x, pads, constant_values=value)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, node: Conv2d) -> np.ndarray:
    n = x.shape[0]
    xp = _pad(x, node.padding)
    k, s = node.kernel, node.stride
    if node.depthwise:
        ho = (xp.shape[1] - k) // s + 1
        wo = (xp.shape[2] - k) // s + 1
        out = np.zeros((n, ho, wo, x.shape[3]), dtype=np.float32)
        for ky in range(k):  # one vector multiply-add per kernel tap
            for kx in range(k):
                tap = xp[:, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s, :]
                out += tap * w[:, 0, ky, kx]
        return out + b
    if k == 1:
        cols = xp[:, ::s, ::s, :]
        ho, wo = cols.shape[1], cols.shape[2]
        flat = cols.reshape(-1, x.shape[3])
        wmat = w.reshape(w.shape[0], -1)
    else:
        win = _windows(xp, k, s)  # [N, Ho, Wo, C, k, k]
        ho, wo = win.shape[1], win.shape[2]
        flat = win.reshape(n * ho * wo, -1)  # (C, ky, kx) order: matches OIHW flattened per row
        wmat = w.reshape(w.shape[0], -1)
    out = flat @ wmat.T + b
    return out.reshape(n, ho, wo, -1).astype(np.float32)


def _pool(x: np.ndarray, node: Pool) -> np.ndarray:
    if node.kind == "max":
        xp = _pad(x, node.padding, -np.inf)
        return _windows(xp, node.kernel, node.stride).max(axis=(4, 5))
    xp = _pad(x, node.padding)
    total = _windows(xp, node.kernel, node.stride).sum(axis=(4, 5))
    ones = _pad(np.ones((1, *x.shape[1:3], 1), dtype=np.float32), node.padding)
    count = _windows(ones, node.kernel, node.stride).sum(axis=(4, 5))  # in-bounds taps only
    return (total / count).astype(np.float32)


@overload
def forward_float(
    spec: NetSpec,
    folded_params: dict[str, dict[str, np.ndarray]],
    x: np.ndarray,
    *,
    masks_level: int | None = None,
    masks: dict[str, np.ndarray] | None = None,
    record: Literal[False] = False,
) -> np.ndarray: ...


@overload
def forward_float(
    spec: NetSpec,
    folded_params: dict[str, dict[str, np.ndarray]],
    x: np.ndarray,
    *,
    masks_level: int | None = None,
    masks: dict[str, np.ndarray] | None = None,
    record: Literal[True],
) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


def forward_float(
    spec: NetSpec,
    folded_params: dict[str, dict[str, np.ndarray]],
    x: np.ndarray,
    *,
    masks_level: int | None = None,
    masks: dict[str, np.ndarray] | None = None,
    record: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [N, num_classes] of `spec` on x [N, H, W, C] float32.

    With `masks_level` set, each node's weight is multiplied by `masks[node][masks_level]` (nodes
    without a mask stay dense). With `record`, also returns every node's output (NHWC, after its
    fused activation) keyed by node name, plus the input under "input".
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"input shape {x.shape} does not match [N, {', '.join(map(str, spec.input_shape))}]")
    if masks_level is not None and masks is None:
        raise ValueError("masks_level given without masks")
    outs: dict[str, np.ndarray] = {INPUT: x}
    node: Node
    for node in spec.nodes:
        if isinstance(node, Conv2d | Linear):
            w = folded_params[node.name]["weight"]
            if masks_level is not None and masks is not None and node.name in masks:
                w = np.where(masks[node.name][masks_level], w, 0).astype(np.float32)
            b = folded_params[node.name]["bias"]
            src = outs[node.input]
            if isinstance(node, Conv2d):
                y = _conv(src, w, b, node)
            else:
                y = (src.reshape(src.shape[0], -1) @ w.T + b).reshape(src.shape[0], 1, 1, -1)
            y = _activate(y, node.act)
        elif isinstance(node, Pool):
            y = _pool(outs[node.input], node)
        elif isinstance(node, GlobalAvgPool):
            y = outs[node.input].mean(axis=(1, 2), keepdims=True)
        elif isinstance(node, Add):
            y = _activate(outs[node.inputs[0]] + outs[node.inputs[1]], node.act)
        else:  # pragma: no cover - NetSpec only builds the nodes above
            raise TypeError(f"unknown node {node!r}")
        outs[node.name] = y.astype(np.float32, copy=False)
    logits = outs[spec.nodes[-1].name].reshape(x.shape[0], -1)
    if not record:
        outs.clear()
        return logits
    return logits, outs
