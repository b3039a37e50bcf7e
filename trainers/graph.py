"""Plain-data description of a network and of a trained model.

This is the contract between trainers and the harness: a trainer returns `TrainedModel`s built from a
`NetSpec`; the harness quantizes, packs and deploys them without ever importing torch. Layouts:

- activations are NHWC; `NetSpec.input_shape` is (H, W, C);
- conv weights are torch's OIHW ([C, 1, k, k] for depthwise); linear weights are [out, in] where `in`
  indexes the input flattened in NHWC order (the torch builder permutes before flattening);
- masks are boolean, one slice per level, True where the weight is kept at that level.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Activation = Literal["none", "relu", "relu6"]
INPUT = "input"  # name of the network input in `inputs` fields


@dataclass(frozen=True)
class Conv2d:
    name: str
    input: str
    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    depthwise: bool = False  # channel multiplier 1: out_channels must equal the input's channels
    bias: bool = False
    batchnorm: bool = True
    act: Activation = "relu"
    op: Literal["conv2d"] = "conv2d"


@dataclass(frozen=True)
class Linear:
    name: str
    input: str
    out_features: int
    bias: bool = True
    act: Activation = "none"
    op: Literal["linear"] = "linear"


@dataclass(frozen=True)
class Pool:
    name: str
    input: str
    kind: Literal["max", "avg"]
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    op: Literal["pool"] = "pool"


@dataclass(frozen=True)
class GlobalAvgPool:
    name: str
    input: str
    op: Literal["gap"] = "gap"


@dataclass(frozen=True)
class Add:
    name: str
    inputs: tuple[str, str]
    act: Activation = "none"
    op: Literal["add"] = "add"


Node = Conv2d | Linear | Pool | GlobalAvgPool | Add
_NODE_TYPES: dict[str, type] = {
    "conv2d": Conv2d,
    "linear": Linear,
    "pool": Pool,
    "gap": GlobalAvgPool,
    "add": Add,
}


def node_inputs(node: Node) -> tuple[str, ...]:
    return node.inputs if isinstance(node, Add) else (node.input,)


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class NetSpec:
    """A network as an ordered list of nodes; the last node produces the logits."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    nodes: tuple[Node, ...]

    def shapes(self) -> dict[str, tuple[int, int, int]]:
        """Output shape (H, W, C) of the input and of every node; raises ValueError on a bad graph."""
        shapes: dict[str, tuple[int, int, int]] = {INPUT: tuple(self.input_shape)}  # type: ignore[dict-item]
        for node in self.nodes:
            if node.name in shapes:
                raise ValueError(f"duplicate node name {node.name!r}")
            for src in node_inputs(node):
                if src not in shapes:
                    raise ValueError(f"node {node.name!r} reads {src!r}, which is not defined before it")
            h, w, c = shapes[node_inputs(node)[0]]
            if isinstance(node, Conv2d):
                if node.depthwise and node.out_channels != c:
                    raise ValueError(f"depthwise node {node.name!r} must keep {c} channels")
                shape = (
                    _out_size(h, node.kernel, node.stride, node.padding),
                    _out_size(w, node.kernel, node.stride, node.padding),
                    node.out_channels,
                )
            elif isinstance(node, Pool):
                shape = (
                    _out_size(h, node.kernel, node.stride, node.padding),
                    _out_size(w, node.kernel, node.stride, node.padding),
                    c,
                )
            elif isinstance(node, GlobalAvgPool):
                shape = (1, 1, c)
            elif isinstance(node, Linear):
                shape = (1, 1, node.out_features)
            else:  # Add
                other = shapes[node.inputs[1]]
                if other != (h, w, c):
                    raise ValueError(f"add node {node.name!r} joins shapes {(h, w, c)} and {other}")
                shape = (h, w, c)
            if min(shape) < 1:
                raise ValueError(f"node {node.name!r} has an empty output {shape}")
            shapes[node.name] = shape
        last = self.nodes[-1].name
        if shapes[last] != (1, 1, self.num_classes):
            raise ValueError(f"last node {last!r} gives {shapes[last]}, expected (1, 1, {self.num_classes})")
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> NetSpec:
        nodes = []
        for raw in data["nodes"]:
            kind = _NODE_TYPES[raw["op"]]
            fields = dict(raw)
            if kind is Add:
                fields["inputs"] = tuple(fields["inputs"])
            nodes.append(kind(**fields))
        return NetSpec(
            name=data["name"],
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            nodes=tuple(nodes),
        )


@dataclass
class TrainedModel:
    """Float weights of one trained network plus one mask per level it serves.

    `params[node]` holds "weight", and when present "bias" and the batch-norm tensors "bn_weight",
    "bn_bias", "bn_mean", "bn_var", "bn_eps" (a 0-d array). `levels` are the sparsities this model
    serves, strictly increasing ((0.0,) for a dense model); `masks[node]` has shape
    [len(levels), *weight.shape] and nests (level k+1 keeps a subset of level k). A node without a
    mask is dense at every level. `meta` is JSON-serialisable (trainer name, options, sparsity
    reached per layer and level, training curves, wall time).
    """

    spec: NetSpec
    params: dict[str, dict[str, np.ndarray]]
    levels: tuple[float, ...] = (0.0,)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def masked_weight(self, node: str, level: int) -> np.ndarray:
        w = self.params[node]["weight"]
        mask = self.masks.get(node)
        return w if mask is None else np.where(mask[level], w, 0).astype(w.dtype)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"p/{n}/{k}": v for n, d in self.params.items() for k, v in d.items()}
        arrays.update({f"m/{n}": v for n, v in self.masks.items()})
        np.savez(folder / "arrays.npz", **arrays)  # type: ignore[arg-type]
        doc = {"spec": self.spec.to_dict(), "levels": list(self.levels), "meta": self.meta}
        (folder / "model.json").write_text(json.dumps(doc, indent=1, sort_keys=True))

    @staticmethod
    def load(folder: Path) -> TrainedModel:
        doc = json.loads((folder / "model.json").read_text())
        params: dict[str, dict[str, np.ndarray]] = {}
        masks: dict[str, np.ndarray] = {}
        with np.load(folder / "arrays.npz") as data:
            for key in data.files:
                kind, _, rest = key.partition("/")
                if kind == "p":
                    node, _, name = rest.rpartition("/")
                    params.setdefault(node, {})[name] = data[key]
                else:
                    masks[rest] = data[key]
        return TrainedModel(
            spec=NetSpec.from_dict(doc["spec"]),
            params=params,
            levels=tuple(doc["levels"]),
            masks=masks,
            meta=doc["meta"],
        )
