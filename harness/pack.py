"""Packing: turn a QModel into the exact arrays the firmware will carry, per layer and format.

A `PackedModel` is plain data: for every layer the arrays to emit (C symbol, C type, 1-D NumPy array,
storage role) plus the layer's storage format. Storage figures are sums over those arrays, so they
are by construction the bytes code generation writes (and the linked ELF holds):

- `weight_bytes`: int8 weight values;
- `index_bytes`: sparse indices (0 for dense);
- `meta_bytes`: biases, multipliers, shifts and per-level tables;
- `model_bytes = weight_bytes + index_bytes + meta_bytes`.

Formats are packer functions in `PACKERS`; "dense" exists today. A sparse format ("csr", "nested")
adds one packer that emits its own arrays (index role for offsets, meta role for end-pointer and
per-level bias tables) and sets `fmt_tables` for codegen; nothing else here changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from harness.qmodel import QLayer, QModel

Role = Literal["weight", "index", "meta"]

# C type of each NumPy dtype an array may have.
CTYPES: dict[str, str] = {
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
}

# nb_layer_t field a symbol prefix feeds; codegen wires `weights`/`bias`/`mult`/`shift` by these keys.
SYMBOL_PREFIX = {"weights": "nb_w_", "bias": "nb_b_", "mult": "nb_m_", "shift": "nb_s_"}


@dataclass(frozen=True)
class PackedArray:
    symbol: str  # C identifier of the const array in model.c
    data: np.ndarray  # 1-D, contiguous; its dtype fixes the C type
    role: Role

    @property
    def ctype(self) -> str:
        return CTYPES[self.data.dtype.name]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class PackedLayer:
    name: str
    index: int  # position in QModel.layers
    op: str
    format: str  # storage format of this layer's weights ("dense" for weightless layers too)
    arrays: dict[str, PackedArray] = field(default_factory=dict)  # keyed by nb_layer_t field
    n_bias_levels: int = 1
    fmt_tables: str | None = None  # symbol of the format-specific table struct; None for dense


@dataclass
class PackedModel:
    name: str
    format: str  # the format requested for the model
    hash: str  # QModel.content_hash() of the model packed
    n_levels: int
    layers: list[PackedLayer]

    def arrays(self) -> list[PackedArray]:
        return [a for lay in self.layers for a in lay.arrays.values()]

    def _bytes(self, role: Role) -> int:
        return sum(a.nbytes for a in self.arrays() if a.role == role)

    @property
    def weight_bytes(self) -> int:
        return self._bytes("weight")

    @property
    def index_bytes(self) -> int:
        return self._bytes("index")

    @property
    def meta_bytes(self) -> int:
        return self._bytes("meta")

    @property
    def model_bytes(self) -> int:
        return self.weight_bytes + self.index_bytes + self.meta_bytes

    def storage(self) -> dict[str, int]:
        return {
            "model_bytes": self.model_bytes,
            "weight_bytes": self.weight_bytes,
            "index_bytes": self.index_bytes,
            "meta_bytes": self.meta_bytes,
        }


def c_names(names: list[str]) -> list[str]:
    """Stable, unique C identifier fragments for layer names (non-identifier characters → '_')."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "layer"
        ident = base if base not in seen else f"{base}_{i}"
        while ident in seen:
            ident += "_"
        seen.add(ident)
        out.append(ident)
    return out


def _meta_arrays(layer: QLayer, ident: str) -> dict[str, PackedArray]:
    arrays: dict[str, PackedArray] = {}
    for key, attr, dtype in (
        ("bias", "bias", np.int32),
        ("mult", "multiplier", np.int32),
        ("shift", "shift", np.int32),
    ):
        value = getattr(layer, attr)
        if value is not None:
            data = np.ascontiguousarray(np.asarray(value).astype(dtype).ravel())
            arrays[key] = PackedArray(SYMBOL_PREFIX[key] + ident, data, "meta")
    return arrays


def _pack_dense(qm: QModel, layer: QLayer, index: int, ident: str) -> PackedLayer:
    packed = PackedLayer(layer.name, index, layer.op, "dense")
    if layer.weight is not None:
        weight = layer.weight_at(0)
        assert weight is not None
        for level in range(1, len(qm.levels)):
            if not np.array_equal(layer.weight_at(level), weight):  # type: ignore[arg-type]
                raise ValueError(
                    f"layer {layer.name!r}: its weights differ between levels 0 and {level}; the dense "
                    "format holds one weight set (pack a multi-level model as 'nested', "
                    "or one model per level)"
                )
        data = np.ascontiguousarray(weight.astype(np.int8).ravel())
        packed.arrays["weights"] = PackedArray(SYMBOL_PREFIX["weights"] + ident, data, "weight")
    packed.arrays.update(_meta_arrays(layer, ident))
    return packed


Packer = Callable[[QModel, QLayer, int, str], PackedLayer]
PACKERS: dict[str, Packer] = {"dense": _pack_dense}
FORMATS = tuple(PACKERS)


def pack(qm: QModel, format: str = "dense") -> PackedModel:
    """Pack every layer of `qm` in `format`; ValueError for an unknown format or an unpackable model."""
    packer = PACKERS.get(format)
    if packer is None:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    idents = c_names([lay.name for lay in qm.layers])
    layers = [packer(qm, lay, i, ident) for i, (lay, ident) in enumerate(zip(qm.layers, idents, strict=True))]
    return PackedModel(qm.name, format, qm.content_hash(), len(qm.levels), layers)
