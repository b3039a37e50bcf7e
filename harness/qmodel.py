"""The int8 model: plain data produced by quantization and consumed by the reference, packing and codegen.

Semantics are TFLite/CMSIS-NN int8: real = scale * (q - zero_point); weights symmetric per output
channel (zero point 0, values in [-127, 127]); activations asymmetric per tensor; int32 bias with
scale input_scale * weight_scale[c]; requantization by (multiplier, shift) pairs computed with
TFLite's QuantizeMultiplier (Q31 multiplier, shift > 0 means shift left) and applied with double
rounding (SaturatingRoundingDoublingHighMul then RoundingDivideByPOT).

Layouts (activations NHWC, batch 1):
- conv2d weight [Cout, kh, kw, Cin] (OHWI); dwconv2d weight [kh, kw, C]; fc weight [Cout, Cin] with
  Cin indexing the input flattened in HWC order;
- add: `multiplier`/`shift` are [3] = (input 0, input 1, output) as in TFLite's quantized ADD with
  left_shift 20;
- maxpool/avgpool/gap keep the input's scale and zero point on their output.
A model serves `levels` (sparsities, increasing). `masks` on a layer is bool [len(levels), *weight.shape];
level k uses weight * masks[k]. Layers without masks are dense at every level.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Op = Literal["conv2d", "dwconv2d", "fc", "maxpool", "avgpool", "gap", "add"]
ADD_LEFT_SHIFT = 20  # TFLite's fixed headroom shift for quantized ADD


@dataclass
class QTensor:
    name: str
    shape: tuple[int, int, int]  # H, W, C
    scale: float  # a float32 value
    zero_point: int

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


@dataclass
class QLayer:
    name: str
    op: Op
    inputs: tuple[int, ...]  # tensor indices
    output: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # symmetric (top=bottom, left=right)
    weight: np.ndarray | None = None  # int8
    bias: np.ndarray | None = None  # int32 [Cout]
    multiplier: np.ndarray | None = None  # int32
    shift: np.ndarray | None = None  # int32
    act_min: int = -128
    act_max: int = 127
    masks: np.ndarray | None = None  # bool [levels, *weight.shape]
    weight_scale: np.ndarray | None = None  # float32 [Cout], kept for export and provenance

    def weight_at(self, level: int) -> np.ndarray | None:
        if self.weight is None or self.masks is None:
            return self.weight
        return np.where(self.masks[level], self.weight, 0).astype(np.int8)


_ARRAYS = ("weight", "bias", "multiplier", "shift", "masks", "weight_scale")


@dataclass
class QModel:
    name: str
    tensors: list[QTensor]
    layers: list[QLayer]
    input: int
    output: int
    levels: tuple[float, ...] = (0.0,)
    meta: dict[str, Any] = field(default_factory=dict)

    def _doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "levels": list(self.levels),
            "input": self.input,
            "output": self.output,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "scale": t.scale, "zero_point": t.zero_point}
                for t in self.tensors
            ],
            "layers": [
                {
                    "name": lay.name,
                    "op": lay.op,
                    "inputs": list(lay.inputs),
                    "output": lay.output,
                    "kernel": list(lay.kernel),
                    "stride": list(lay.stride),
                    "padding": list(lay.padding),
                    "act_min": lay.act_min,
                    "act_max": lay.act_max,
                }
                for lay in self.layers
            ],
        }

    def content_hash(self) -> str:
        """sha256 over the structure and every array: the model's identity on host and device."""
        h = hashlib.sha256(json.dumps(self._doc(), sort_keys=True).encode())
        for lay in self.layers:
            for key in _ARRAYS:
                arr = getattr(lay, key)
                if arr is not None:
                    h.update(f"{lay.name}/{key}/{arr.dtype.str}/{arr.shape}".encode())
                    h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"{i}/{key}": getattr(lay, key)
            for i, lay in enumerate(self.layers)
            for key in _ARRAYS
            if getattr(lay, key) is not None
        }
        np.savez(folder / "arrays.npz", **arrays)
        doc = self._doc() | {"meta": self.meta}
        (folder / "qmodel.json").write_text(json.dumps(doc, indent=1, sort_keys=True))

    @staticmethod
    def load(folder: Path) -> QModel:
        doc = json.loads((folder / "qmodel.json").read_text())
        with np.load(folder / "arrays.npz") as data:
            arrays = {k: data[k] for k in data.files}
        layers = []
        for i, raw in enumerate(doc["layers"]):
            extra = {key: arrays.get(f"{i}/{key}") for key in _ARRAYS}
            layers.append(
                QLayer(
                    name=raw["name"],
                    op=raw["op"],
                    inputs=tuple(raw["inputs"]),
                    output=raw["output"],
                    kernel=tuple(raw["kernel"]),
                    stride=tuple(raw["stride"]),
                    padding=tuple(raw["padding"]),
                    act_min=raw["act_min"],
                    act_max=raw["act_max"],
                    **extra,
                )
            )
        tensors = [QTensor(t["name"], tuple(t["shape"]), t["scale"], t["zero_point"]) for t in doc["tensors"]]
        return QModel(
            name=doc["name"],
            tensors=tensors,
            layers=layers,
            input=doc["input"],
            output=doc["output"],
            levels=tuple(doc["levels"]),
            meta=doc.get("meta", {}),
        )
