"""Packing: turn a QModel into the exact arrays the firmware will carry, per layer and format.

A `PackedModel` is plain data: for every layer the arrays to emit (C symbol, C type, 1-D NumPy array,
storage role) plus the layer's storage format. Storage figures are sums over those arrays, so they
are by construction the bytes code generation writes (and the linked ELF holds):

- `weight_bytes`: int8 weight values (sparse: the kept blocks, plus any dense copy);
- `index_bytes`: sparse indices (offsets, deltas and their position table; 0 for dense);
- `meta_bytes`: biases, multipliers, shifts and the per-level tables (end pointers, kernel choice);
- `model_bytes = weight_bytes + index_bytes + meta_bytes`.
The descriptors that point at the arrays (nb_layer_t, nb_sparse_t) are not model data, as for dense.

Formats (`PACKERS`):

- `dense`: every layer's weights in the op's dense layout; one weight set for all levels.
- `csr`: the standalone baseline, one sparsity level (a one-level QModel; the pipeline builds one
  image per level). Each masked conv2d / fc layer is stored sparse, or dense when its density is
  above the measured crossover (`crossover.json`), where dense is faster and about as small.
- `nested`: one model serving every level. Each masked conv2d / fc layer stores, per output channel,
  its blocks level-major (sparsest level first, then each level's additions) with an end pointer per
  (level, channel), so level k is a prefix and switching level changes only loop bounds.

Sparse layout (nb_sparse_t in targets/firmware/core/nb_model.h): a block is the pair of weights at
input channels (2j, 2j+1) of one kernel tap, which one SMLAD applies to two int16 activations; masks
of 1x2 blocks (the trainers' default) fill blocks exactly, 1x4 blocks make two, and 1x1 masks store a
zero beside a lone weight (a pair whose halves arrive at different levels becomes one block per
level, correct because the kernel sums blocks). Index "fast": one uint16 byte offset into the
kernel's int16 scratch per block; "compact": one uint8 position delta per block, restarting at every
level segment, zero-weight filler blocks bridging gaps over 255, plus a position → offset table per
layer. The zero point is subtracted once when the kernel widens its input into the scratch, so
padding is 0 and one bias row serves every level (no per-level folded bias to store).

Dense-or-sparse per (layer, level) comes from `crossover.json` (measured by
benchmarks/crossover.py): a level whose block density is above its layer kind's crossover runs the
dense kernel on a dense copy of that level's weights (identical copies shared), which the packer
emits only then; every other level runs the sparse kernel. Layers without masks stay dense. The
compact index is chosen to save memory, so by default it makes no dense copies (and keeps csr layers
sparse): every level runs the sparse kernel (`dense_copies=True` opts in, with crossover_compact).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from harness.qmodel import QLayer, QModel

Role = Literal["weight", "index", "meta"]
IndexKind = Literal["fast", "compact"]

# C type of each NumPy dtype an array may have.
CTYPES: dict[str, str] = {
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
}

# nb_layer_t / nb_sparse_t field a symbol prefix feeds; codegen wires the arrays by these keys.
SYMBOL_PREFIX = {
    "weights": "nb_w_",
    "bias": "nb_b_",
    "mult": "nb_m_",
    "shift": "nb_s_",
    "values": "nb_w_",  # a sparse layer's weights take the dense symbol: one weight symbol per layer
    "index": "nb_i_",
    "delta": "nb_d_",
    "lut": "nb_l_",
    "end": "nb_e_",
    "kernel": "nb_k_",
    "dense": "nb_dc_",
}

CROSSOVER_FILE = Path(__file__).with_name("crossover.json")
SCRATCH_BUDGET = 16 * 1024  # default bytes of int16 scratch per sparse layer (bands beyond it)
SCRATCH_LIMIT = 65536  # uint16 byte offsets address at most 64 KiB of scratch
ACC_BYTES = 4 * 64  # NB_SPARSE_ACC_WORDS int32 accumulators after the input band in the scratch
MAX_LEVELS = 16  # NB_SPARSE_MAX_LEVELS
DELTA_MAX = 255  # largest compact delta; bigger gaps get filler blocks
SPARSE_OPS = ("conv2d", "fc")


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


@dataclass(frozen=True)
class SparseInfo:
    """The scalar fields of a layer's nb_sparse_t (codegen adds the arena offset of the scratch)."""

    cout: int
    n_levels: int
    index_kind: IndexKind
    n_dense: int  # dense copies emitted
    cpairs: int
    band_rows: int
    rows: int
    wq: int
    scratch_bytes: int
    blocks: tuple[int, ...]  # blocks executed per level (all channels; compact: fillers included)
    positions: int  # block positions of the layer: cout * cpairs * kh * kw
    kernel: tuple[int, ...]  # per level: 0 sparse, c > 0 dense copy c - 1

    def density(self, level: int) -> float:
        return self.blocks[level] / self.positions


@dataclass
class PackedLayer:
    name: str
    index: int  # position in QModel.layers
    op: str
    format: str  # storage format of this layer's weights ("dense" for weightless layers too)
    arrays: dict[str, PackedArray] = field(default_factory=dict)  # keyed by nb_layer_t field
    n_bias_levels: int = 1
    fmt_tables: str | None = None  # symbol of the format-specific table struct; None for dense
    sparse: SparseInfo | None = None  # nb_sparse_t fields of a csr / nested layer
    note: str = ""  # why a masked layer was stored dense, if it was

    @property
    def scratch_bytes(self) -> int:
        return self.sparse.scratch_bytes if self.sparse is not None else 0


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


@dataclass(frozen=True)
class PackOptions:
    index: IndexKind = "fast"
    scratch_budget: int = SCRATCH_BUDGET  # bytes of scratch a sparse layer may use (then bands)
    crossover: dict[str, float] | None = None  # layer kind -> density; None reads crossover.json
    dense_copies: bool = True  # False: every level of a sparse layer runs the sparse kernel


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


# --- crossover ----------------------------------------------------------------------------------


@cache
def _crossover_file(path: Path, key: str) -> dict[str, float]:
    try:
        doc = json.loads(path.read_text())
        table = {str(k): float(v) for k, v in doc[key].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: no usable {key!r} table ({exc}); measure it with "
            "`.venv/bin/python benchmarks/crossover.py`"
        ) from exc
    return table


def load_crossover(path: Path = CROSSOVER_FILE, index: IndexKind = "fast") -> dict[str, float]:
    """Layer kind ("conv", "conv1x1", "fc") → block density above which the dense kernel is faster
    than the sparse one with that index encoding (1.0 when the sparse kernel wins even fully
    dense: the layer never runs dense)."""
    return dict(_crossover_file(path, "crossover" if index == "fast" else "crossover_compact"))


def layer_kind(layer: QLayer) -> str:
    if layer.op == "fc":
        return "fc"
    return "conv1x1" if tuple(layer.kernel) == (1, 1) else "conv"


# --- dense --------------------------------------------------------------------------------------


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


def _pack_dense(qm: QModel, layer: QLayer, index: int, ident: str, options: PackOptions) -> PackedLayer:
    del options  # dense has none
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


# --- sparse -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    kh: int
    kw: int
    sw: int
    cpairs: int
    band_rows: int
    rows: int
    wq: int

    @property
    def plane(self) -> int:  # scratch words per channel pair
        return self.rows * self.sw * self.wq

    @property
    def band_bytes(self) -> int:  # the int16 input band (what the uint16 offsets address)
        return 4 * self.cpairs * self.plane

    @property
    def scratch_bytes(self) -> int:
        return self.band_bytes + ACC_BYTES

    def offsets(self) -> np.ndarray:
        """Byte offset in the scratch of every block position (pair, ky, kx), flattened in
        position order pair * kh * kw + ky * kw + kx."""
        pair = np.arange(self.cpairs)[:, None, None]
        ky = np.arange(self.kh)[None, :, None]
        kx = np.arange(self.kw)[None, None, :]
        word = pair * self.plane + ky * self.sw * self.wq + (kx % self.sw) * self.wq + kx // self.sw
        return (4 * word).reshape(-1)


def _geometry(qm: QModel, layer: QLayer, budget: int) -> _Geometry | None:
    """Scratch geometry with the tallest band that fits `budget` (and uint16 offsets); None when
    not even one output row fits."""
    src = qm.tensors[layer.inputs[0]]
    if layer.op == "fc":
        geo = _Geometry(1, 1, 1, (src.size + 1) // 2, 1, 1, 1)
        return geo if geo.band_bytes <= min(budget, SCRATCH_LIMIT) else None
    _, w, c = src.shape
    (kh, kw), (sh, sw), (_, pw) = layer.kernel, layer.stride, layer.padding
    oh = qm.tensors[layer.output].shape[0]
    wq = -(-(w + 2 * pw) // sw)
    best = None
    for band in range(1, oh + 1):
        geo = _Geometry(kh, kw, sw, (c + 1) // 2, band, (band - 1) * sh + kh, wq)
        if geo.band_bytes > min(budget, SCRATCH_LIMIT):
            break
        best = geo
    return best


def _pairs(weight: np.ndarray, op: str) -> np.ndarray:
    """Weights as [cout, pairs, kh, kw, 2] (conv OHWI, fc [cout, cin] as kh = kw = 1), the input
    channels padded to an even count with zeros: block position order is (pair, ky, kx)."""
    w4 = weight[:, None, None, :] if op == "fc" else weight  # [cout, kh, kw, cin]
    cout, kh, kw, cin = w4.shape
    if cin % 2:
        w4 = np.concatenate([w4, np.zeros((cout, kh, kw, 1), w4.dtype)], axis=3)
    return w4.reshape(cout, kh, kw, -1, 2).transpose(0, 3, 1, 2, 4)


def _check_masks(layer: QLayer, n_levels: int) -> np.ndarray:
    masks = layer.masks
    assert masks is not None and layer.weight is not None
    if masks.shape != (n_levels, *layer.weight.shape):
        raise ValueError(
            f"layer {layer.name!r}: masks have shape {masks.shape}, expected "
            f"{(n_levels, *layer.weight.shape)} (levels × weight shape)"
        )
    masks = masks.astype(bool)
    for k in range(n_levels - 1):
        if np.any(masks[k + 1] & ~masks[k]):
            raise ValueError(
                f"layer {layer.name!r}: the masks are not nested "
                f"(level {k + 1} keeps weights that level {k} drops)"
            )
    return masks


def _segments(masks: np.ndarray, weight: np.ndarray, op: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level j (sparsest first in the returned list order L-1 .. 0): the weights level j adds
    (kept at j, not at j + 1) as pair blocks [cout, positions, 2] and a bool [cout, positions] of the
    blocks that hold any of them."""
    n_levels = masks.shape[0]
    out = []
    for j in range(n_levels - 1, -1, -1):
        added = masks[j] & ~masks[j + 1] if j + 1 < n_levels else masks[j]
        pairs = _pairs(np.where(added, weight, 0).astype(np.int8), op)
        has = _pairs(added, op).any(axis=-1)
        cout = pairs.shape[0]
        out.append((pairs.reshape(cout, -1, 2), has.reshape(cout, -1)))
    return out


def _value_words(blocks: np.ndarray) -> np.ndarray:
    """[n, 2] int8 blocks → bytes, blocks 2i and 2i+1 interleaved as [lo_a, lo_b, hi_a, hi_b]."""
    if len(blocks) % 2:
        blocks = np.concatenate([blocks, np.zeros((1, 2), np.int8)])
    pairs = blocks.reshape(-1, 2, 2)  # [word, block a/b, lo/hi]
    return pairs.transpose(0, 2, 1).reshape(-1)  # [word, lo/hi, block a/b]


def _compact(positions: np.ndarray) -> tuple[list[int], list[bool]]:
    """Deltas of ascending positions from 0, with fillers (flag True) where a gap exceeds 255."""
    deltas: list[int] = []
    filler: list[bool] = []
    pos = 0
    for p in positions.tolist():
        gap = p - pos
        while gap > DELTA_MAX:
            deltas.append(DELTA_MAX)
            filler.append(True)
            gap -= DELTA_MAX
        deltas.append(gap)
        filler.append(False)
        pos = p
    return deltas, filler


def _pack_sparse_layer(
    qm: QModel, layer: QLayer, index: int, ident: str, options: PackOptions, fmt: str
) -> PackedLayer:
    assert layer.weight is not None
    n_levels = len(qm.levels)
    masks = _check_masks(layer, n_levels)
    geo = _geometry(qm, layer, options.scratch_budget)
    if geo is None:
        if any(not np.array_equal(masks[k], masks[0]) for k in range(1, n_levels)):
            raise ValueError(
                f"layer {layer.name!r}: the sparse kernel's scratch for one output row exceeds "
                f"{min(options.scratch_budget, SCRATCH_LIMIT)} bytes and its levels differ, so it "
                "cannot be stored dense either (raise the scratch budget, at most 64 KiB)"
            )
        packed = _pack_dense(qm, _single_weight(layer, masks), index, ident, options)
        packed.note = "sparse scratch for one output row exceeds the budget: stored dense"
        return packed
    offsets = geo.offsets()
    n_pos = len(offsets)
    cout = layer.weight.shape[0]
    segments = _segments(masks, layer.weight, layer.op)

    values: list[np.ndarray] = []
    index_words: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    ends = np.zeros((n_levels, cout), np.int64)
    for o in range(cout):
        blocks: list[np.ndarray] = []
        idx: list[np.ndarray] = []
        seg_sizes: list[int] = []
        for seg_vals, seg_has in segments:  # sparsest level first
            pos = np.flatnonzero(seg_has[o])
            if options.index == "fast":
                pos = pos[np.argsort(offsets[pos], kind="stable")]  # walk the scratch forward
                blocks.append(seg_vals[o, pos])
                idx.append(offsets[pos])
                seg_sizes.append(len(pos))
            else:
                d, fill = _compact(pos)
                fill_mask = np.array(fill, bool)
                seg = np.zeros((len(d), 2), np.int8)
                seg[~fill_mask] = seg_vals[o, pos]
                blocks.append(seg)
                idx.append(np.array(d, np.int64))
                seg_sizes.append(len(d))
        # ends[k] = blocks of segments L-1 .. k
        ends[:, o] = np.cumsum(seg_sizes)[::-1]
        chan = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int8)
        values.append(_value_words(chan.astype(np.int8)))
        flat_idx = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        if options.index == "fast":
            if len(flat_idx) % 2:
                flat_idx = np.concatenate([flat_idx, [0]])
            index_words.append(flat_idx)
        else:
            deltas.append(flat_idx)

    blocks_per_level = tuple(int(ends[k].sum()) for k in range(n_levels))
    kernel, copies = _dense_choice(layer, masks, blocks_per_level, cout * n_pos, options)
    if fmt == "csr" and kernel[0] > 0:
        # one level above the crossover: a plain dense layer is as fast and no bigger
        packed = _pack_dense(qm, _single_weight(layer, masks), index, ident, options)
        packed.note = "density above the crossover: stored dense"
        return packed

    packed = PackedLayer(layer.name, index, layer.op, fmt)
    sym = {key: prefix + ident for key, prefix in SYMBOL_PREFIX.items()}
    arrays = packed.arrays
    all_values = np.concatenate(values) if values else np.zeros(0, np.int8)
    arrays["values"] = PackedArray(sym["values"], _nonempty(all_values.astype(np.int8)), "weight")
    if options.index == "fast":
        arrays["index"] = PackedArray(
            sym["index"], _nonempty(np.concatenate(index_words).astype(np.uint16)), "index"
        )
    else:
        arrays["delta"] = PackedArray(
            sym["delta"], _nonempty(np.concatenate(deltas).astype(np.uint8)), "index"
        )
        arrays["lut"] = PackedArray(sym["lut"], offsets.astype(np.uint16), "index")
    # the scratch's 64 KiB bound keeps block positions (and so counts) under 2^14
    assert ends.max(initial=0) <= 0xFFFF
    end_dtype = np.uint8 if ends.max(initial=0) <= 0xFF else np.uint16
    arrays["end"] = PackedArray(sym["end"], ends.astype(end_dtype).ravel(), "meta")
    arrays["kernel"] = PackedArray(sym["kernel"], np.array(kernel, np.uint8), "meta")
    if copies:
        arrays["dense"] = PackedArray(sym["dense"], np.concatenate(copies).astype(np.int8), "weight")
    arrays.update(_meta_arrays(layer, ident))
    packed.fmt_tables = "nb_sp_" + ident
    packed.sparse = SparseInfo(
        cout=cout,
        n_levels=n_levels,
        index_kind=options.index,
        n_dense=len(copies),
        cpairs=geo.cpairs,
        band_rows=geo.band_rows,
        rows=geo.rows,
        wq=geo.wq,
        # compact: plus one channel's decoded index words (the kernel decodes a channel at a time)
        scratch_bytes=geo.scratch_bytes
        + (4 * int((ends[0].max(initial=0) + 1) // 2) if options.index == "compact" else 0),
        blocks=blocks_per_level,
        positions=cout * n_pos,
        kernel=tuple(kernel),
    )
    return packed


def _nonempty(data: np.ndarray) -> np.ndarray:
    """C has no empty arrays: an all-pruned layer still emits one zero element."""
    return data if data.size else np.zeros(1, data.dtype)


def _single_weight(layer: QLayer, masks: np.ndarray) -> QLayer:
    """The layer with its level-0 weights and no masks (for a one-level model stored dense)."""
    assert layer.weight is not None
    weight = np.where(masks[0], layer.weight, 0).astype(np.int8)
    return QLayer(**{**layer.__dict__, "weight": weight, "masks": None})


def _dense_choice(
    layer: QLayer, masks: np.ndarray, blocks: tuple[int, ...], positions: int, options: PackOptions
) -> tuple[list[int], list[np.ndarray]]:
    """Per level 0 (sparse kernel) or 1 + index of the dense copy to run; the copies to emit."""
    assert layer.weight is not None
    crossover = options.crossover if options.crossover is not None else load_crossover(index=options.index)
    kind = layer_kind(layer)
    if kind not in crossover:
        raise ValueError(f"crossover table has no entry for {kind!r} layers (has {sorted(crossover)})")
    threshold = crossover[kind]
    kernel: list[int] = []
    copies: list[np.ndarray] = []
    for k, n in enumerate(blocks):
        if not options.dense_copies or positions == 0 or n / positions <= threshold:
            kernel.append(0)
            continue
        dense = np.where(masks[k], layer.weight, 0).astype(np.int8).ravel()
        same = next((i for i, c in enumerate(copies) if np.array_equal(c, dense)), None)
        if same is None:
            copies.append(dense)
            same = len(copies) - 1
        kernel.append(same + 1)
    return kernel, copies


def _pack_sparse(fmt: str) -> Callable[[QModel, QLayer, int, str, PackOptions], PackedLayer]:
    def packer(qm: QModel, layer: QLayer, index: int, ident: str, options: PackOptions) -> PackedLayer:
        if fmt == "csr" and len(qm.levels) != 1:
            raise ValueError(
                f"the csr format packs one level, the model serves {len(qm.levels)}: pack one "
                "single-level model per level (the standalone baseline), or use 'nested'"
            )
        if len(qm.levels) > MAX_LEVELS:
            raise ValueError(f"{len(qm.levels)} levels: the sparse kernels handle at most {MAX_LEVELS}")
        if layer.masks is None or layer.weight is None:
            return _pack_dense(qm, layer, index, ident, options)
        if layer.op not in SPARSE_OPS:
            if len(qm.levels) == 1:
                return _pack_dense(qm, _single_weight(layer, layer.masks.astype(bool)), index, ident, options)
            raise ValueError(
                f"layer {layer.name!r}: masks on a {layer.op} layer; the sparse formats cover conv2d "
                "and fc (depthwise layers stay dense)"
            )
        return _pack_sparse_layer(qm, layer, index, ident, options, fmt)

    return packer


Packer = Callable[[QModel, QLayer, int, str, PackOptions], PackedLayer]
PACKERS: dict[str, Packer] = {
    "dense": _pack_dense,
    "csr": _pack_sparse("csr"),
    "nested": _pack_sparse("nested"),
}
FORMATS = tuple(PACKERS)


def pack(
    qm: QModel,
    format: str = "dense",
    *,
    index: IndexKind = "fast",
    scratch_budget: int = SCRATCH_BUDGET,
    crossover: dict[str, float] | None = None,
    dense_copies: bool | None = None,
) -> PackedModel:
    """Pack every layer of `qm` in `format`; ValueError for an unknown format or an unpackable model.

    Sparse formats only: `index` "fast" (uint16 offsets) or "compact" (uint8 deltas); the scratch
    budget per layer in bytes; a crossover table overriding crossover.json; `dense_copies`: whether
    levels above the crossover run dense (a dense copy in nested, a dense layer in csr). The default
    is yes for the fast index (speed first) and no for the compact one, which is chosen to save
    memory: a dense copy would cost more flash than the compact blocks save."""
    packer = PACKERS.get(format)
    if packer is None:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if index not in ("fast", "compact"):
        raise ValueError(f"unknown index encoding {index!r}: 'fast' or 'compact'")
    copies = dense_copies if dense_copies is not None else index == "fast"
    options = PackOptions(index, scratch_budget, crossover, copies)
    idents = c_names([lay.name for lay in qm.layers])
    layers = [
        packer(qm, lay, i, ident, options)
        for i, (lay, ident) in enumerate(zip(qm.layers, idents, strict=True))
    ]
    return PackedModel(qm.name, format, qm.content_hash(), len(qm.levels), layers)
