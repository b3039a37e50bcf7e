"""C code generation: a PackedModel + its QModel → model.c / model.h defining `nb_model` (nb_model.h).

The generated data has stable, greppable symbols so the linked ELF can be checked against the storage
figures: `nb_w_<layer>` (weights; a sparse layer's kept blocks), `nb_b_<layer>` (int32 bias),
`nb_m_<layer>` / `nb_s_<layer>` (multipliers, shifts), and for csr / nested layers `nb_i_` (offsets),
`nb_d_` / `nb_l_` (compact deltas and their position table), `nb_e_` (end pointers), `nb_k_`
(dense-or-sparse kernel per level), `nb_dc_` (dense copies). All are global const data aligned to 4
bytes in section `.rodata.nb_model`, which the linker scripts keep in flash (the F7's weights are
read from flash through the ART / D-cache, never copied). The activation arena `nb_arena` is one
static, 8-byte aligned buffer in section `.bss.nb_arena`, which the F7's linker script puts in the
128 KB DTCM (zero wait states); every tensor lives at a fixed offset chosen by a liveness-based
planner (`plan_arena`): tensors whose lifetimes overlap never share bytes. The kernel scratch of a
sparse layer (its int16 copy of the input) is planned in the same arena, alive only during that
layer. The network input stays live for the whole inference (the device reruns `infer` on an input
loaded once) and so does the output (read back after the run). Output is a pure function of the
inputs: same model → same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.pack import PackedArray, PackedLayer, PackedModel
from harness.qmodel import QModel

ARENA_ALIGN = 8  # arena base alignment in C
# sizeof on the 32-bit targets, for the flash estimate of the descriptors (nb_model.h)
SIZEOF = {"nb_layer_t": 44, "nb_tensor_t": 16, "nb_sparse_t": 56, "nb_model_t": 48}
TENSOR_ALIGN = 4  # every tensor offset: word-aligned loads in the kernels
MODEL_SECTION = ".rodata.nb_model"  # const model data: flash (link.ld)
ARENA_SECTION = ".bss.nb_arena"  # activations and kernel scratch: RAM, DTCM on the F7 (link.ld)
MODEL_DATA_ATTR = f'__attribute__((aligned(4), section("{MODEL_SECTION}")))'
OP_ENUM = {
    "conv2d": "NB_OP_CONV2D",
    "dwconv2d": "NB_OP_DWCONV2D",
    "fc": "NB_OP_FC",
    "maxpool": "NB_OP_MAXPOOL",
    "avgpool": "NB_OP_AVGPOOL",
    "gap": "NB_OP_GAP",
    "add": "NB_OP_ADD",
}
FORMAT_ENUM = {"dense": "NB_FMT_DENSE", "csr": "NB_FMT_CSR", "nested": "NB_FMT_NESTED"}
INDEX_ENUM = {"fast": "NB_INDEX_U16", "compact": "NB_INDEX_U8_DELTA"}


@dataclass(frozen=True)
class ArenaPlan:
    offsets: tuple[int, ...]  # byte offset of each tensor (0 for tensors no layer touches)
    sizes: tuple[int, ...]
    lifetimes: tuple[tuple[int, int] | None, ...]  # [first, last] layer step, inclusive; input at -1
    size: int  # arena bytes
    scratch_offsets: dict[int, int] = field(default_factory=dict)  # layer index → its scratch offset


@dataclass(frozen=True)
class CodegenResult:
    files: tuple[Path, ...]
    arena_bytes: int
    tensor_offsets: tuple[int, ...]
    symbol_sizes: dict[str, int]  # model data symbol → bytes (what the ELF's symbol sizes must show)
    storage: dict[str, int]  # the packed model's record columns: model/weight/index/meta bytes
    scratch_bytes: int = 0  # largest kernel scratch of any layer (inside the arena)
    descriptor_bytes: int = 0  # flash of the tables pointing at the arrays (not model data)


def tensor_lifetimes(qm: QModel) -> list[tuple[int, int] | None]:
    """[first, last] layer step during which each tensor's bytes must hold; None if unused.

    A tensor is born at the step of the layer writing it (the input at -1) and lives through its
    last reader, so a layer's inputs and output always overlap (no kernel works in place) and a
    residual branch stays live until its add. Input and output stay live to the end (step n).
    """
    n = len(qm.layers)
    first: dict[int, int] = {qm.input: -1}
    last: dict[int, int] = {qm.input: n}
    for step, layer in enumerate(qm.layers):
        for t in layer.inputs:
            last[t] = max(last.get(t, step), step)
        first.setdefault(layer.output, step)
        last[layer.output] = max(last.get(layer.output, step), step)
    last[qm.output] = n
    spans: list[tuple[int, int] | None] = []
    for t in range(len(qm.tensors)):
        spans.append((first[t], last[t]) if t in first else None)
    return spans


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def plan_arena(
    sizes: list[int], lifetimes: list[tuple[int, int] | None], align: int = TENSOR_ALIGN
) -> tuple[list[int], int]:
    """Greedy-by-size placement (as TFLite Micro's planner): largest tensors first, each at the
    lowest aligned offset that does not overlap any already-placed tensor alive at the same time.
    Returns (offsets, arena size rounded up to `align`)."""
    order = sorted(
        (t for t, span in enumerate(lifetimes) if span is not None and sizes[t] > 0),
        key=lambda t: (-sizes[t], lifetimes[t][0], t),  # type: ignore[index]
    )
    offsets = [0] * len(sizes)
    placed: list[int] = []
    for t in order:
        lo, hi = lifetimes[t]  # type: ignore[misc]
        busy = sorted(
            (offsets[p], offsets[p] + sizes[p])
            for p in placed
            if lifetimes[p][0] <= hi and lo <= lifetimes[p][1]  # type: ignore[index]
        )
        candidate = 0
        for start, end in busy:
            if candidate + sizes[t] <= start:
                break
            candidate = max(candidate, _align(end, align))
        offsets[t] = candidate
        placed.append(t)
    total = max((offsets[t] + sizes[t] for t in placed), default=0)
    return offsets, _align(max(total, 1), align)


def plan_qmodel_arena(qm: QModel, scratch: dict[int, int] | None = None) -> ArenaPlan:
    """Tensor offsets, plus a region for each layer's kernel scratch (`scratch`: layer index →
    bytes), alive only during that layer's step: it never overlaps the layer's input or output."""
    sizes = [t.size for t in qm.tensors]
    spans = tensor_lifetimes(qm)
    extra = sorted((scratch or {}).items())
    all_sizes = sizes + [nbytes for _, nbytes in extra]
    all_spans: list[tuple[int, int] | None] = [*spans, *((step, step) for step, _ in extra)]
    offsets, size = plan_arena(all_sizes, all_spans)
    scratch_offsets = {step: offsets[len(sizes) + i] for i, (step, _) in enumerate(extra)}
    return ArenaPlan(tuple(offsets[: len(sizes)]), tuple(sizes), tuple(spans), size, scratch_offsets)


def _c_string(text: str) -> str:
    """A C string literal: printable ASCII as is, everything else as 3-digit octal escapes of UTF-8."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':  # '?' too: no trigraphs
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _c_comment(text: str) -> str:
    """Text safe inside a /* */ comment."""
    return (
        "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text).replace("*/", "*?/").replace("/*", "/?*")
    )


def _c_int(value: int) -> str:
    return "(-2147483647 - 1)" if value == -(2**31) else str(value)


def _array_lines(arr: PackedArray) -> list[str]:
    per_line = 16 if arr.data.itemsize == 1 else 8
    values = [_c_int(int(v)) for v in arr.data.tolist()]
    if not values:  # C forbids empty initialisers and zero-size arrays; never emitted in practice
        raise ValueError(f"array {arr.symbol} is empty")
    body = ["    " + ", ".join(values[i : i + per_line]) + "," for i in range(0, len(values), per_line)]
    return [
        f"const {arr.ctype} {arr.symbol}[{arr.data.size}] {MODEL_DATA_ATTR} = {{",
        *body,
        "};",
    ]


def _ref(lay: PackedLayer, key: str) -> str:
    arr = lay.arrays.get(key)
    return arr.symbol if arr is not None else "NULL"


def _sparse_lines(lay: PackedLayer, plan: ArenaPlan) -> list[str]:
    """The layer's nb_sparse_t: pointers to its arrays, geometry, and the arena offset of its
    scratch (a descriptor, like nb_layer_t: not counted as model data)."""
    sp = lay.sparse
    assert sp is not None and lay.fmt_tables is not None
    end = lay.arrays["end"]
    end16 = end.symbol if end.data.dtype == np.uint16 else "NULL"
    end8 = end.symbol if end.data.dtype == np.uint8 else "NULL"
    densities = ", ".join(f"{sp.density(k):.3f}" for k in range(sp.n_levels))
    return [
        f"/* block density per level {densities}; kernel per level (0 sparse, c dense copy c-1):"
        f" {', '.join(map(str, sp.kernel))} */",
        f"static const nb_sparse_t {lay.fmt_tables} = {{",
        f"    .cout = {sp.cout}, .n_levels = {sp.n_levels}, .index_kind = {INDEX_ENUM[sp.index_kind]},"
        f" .n_dense = {sp.n_dense},",
        f"    .end16 = {end16}, .end8 = {end8}, .values = {_ref(lay, 'values')},",
        f"    .index = {_ref(lay, 'index')}, .delta = {_ref(lay, 'delta')}, .lut = {_ref(lay, 'lut')},",
        f"    .kernel = {_ref(lay, 'kernel')}, .dense = {_ref(lay, 'dense')},",
        f"    .scratch_offset = {plan.scratch_offsets[lay.index]}u, .scratch_bytes = {sp.scratch_bytes}u,",
        f"    .cpairs = {sp.cpairs}, .band_rows = {sp.band_rows}, .rows = {sp.rows}, .wq = {sp.wq},",
        "};",
    ]


def _check_ranges(qm: QModel, plan: ArenaPlan) -> None:
    """The C description has narrow fields; refuse models that would be truncated silently."""
    if len(qm.tensors) > 0xFFFF or len(qm.layers) > 0xFFFF:
        raise ValueError("more than 65535 tensors or layers")
    if plan.size > 0xFFFFFFFF:
        raise ValueError(f"arena of {plan.size} bytes does not fit uint32")
    for t in qm.tensors:
        if max(t.shape) > 0xFFFF:
            raise ValueError(f"tensor {t.name!r} shape {t.shape} exceeds uint16 dimensions")
    for lay in qm.layers:
        if max(*lay.kernel, *lay.stride, *lay.padding) > 255:
            raise ValueError(f"layer {lay.name!r}: kernel/stride/padding exceed uint8")


def _model_h(packed: PackedModel, qm: QModel, plan: ArenaPlan) -> str:
    guard = "NB_GENERATED_MODEL_H"
    t_in, t_out = qm.tensors[qm.input], qm.tensors[qm.output]
    lines = [
        f"/* Generated by nestbench harness/codegen.py from the int8 model {_c_comment(qm.name)}.",
        f" * Content hash {packed.hash}. Do not edit: regenerate. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        '#include "nb_model.h"',
        "",
        f"#define NB_MODEL_INPUT_BYTES {t_in.size}u",
        f"#define NB_MODEL_OUTPUT_BYTES {t_out.size}u",
        f"#define NB_MODEL_ARENA_BYTES {plan.size}u",
        f"#define NB_MODEL_N_LEVELS {packed.n_levels}u",
        f"#define NB_MODEL_N_LAYERS {len(qm.layers)}u",
        "",
        "/* Storage of the packed model (bytes): "
        f"weights {packed.weight_bytes}, index {packed.index_bytes}, meta {packed.meta_bytes}, "
        f"total {packed.model_bytes}. */",
    ]
    for arr in packed.arrays():
        lines.append(f"extern const {arr.ctype} {arr.symbol}[{arr.data.size}];")
    lines += [f"extern int8_t nb_arena[{plan.size}];", "", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _model_c(packed: PackedModel, qm: QModel, plan: ArenaPlan) -> str:
    lines = [
        f"/* Generated by nestbench harness/codegen.py from the int8 model {_c_comment(qm.name)}.",
        f" * Content hash {packed.hash}. Format {packed.format}. Do not edit: regenerate. */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        '#include "model.h"',
    ]
    sparse = any(lay.sparse is not None for lay in packed.layers)
    if sparse:  # the sparse kernels are linked only into models that use them
        lines.append('#include "nb_kernels_sparse.h"')
    lines.append("")
    for lay in packed.layers:
        q = qm.layers[lay.index]
        shape = "x".join(str(d) for d in q.weight.shape) if q.weight is not None else "-"
        lines.append(
            f"/* layer {lay.index} {_c_comment(lay.name)}: {lay.op}, {lay.format}, weights {shape} */"
        )
        for arr in lay.arrays.values():
            lines += _array_lines(arr)
        if lay.sparse is not None:
            lines += _sparse_lines(lay, plan)
        lines.append("")
    lines += [
        "/* Activation arena (RAM; DTCM on the F7): tensor offsets below come from a liveness-based",
        " * planner; sparse layers' scratch lives here too, only while the layer runs. */",
        f'int8_t nb_arena[{plan.size}] __attribute__((aligned({ARENA_ALIGN}), section("{ARENA_SECTION}")));',
        "",
        f"static const nb_tensor_t nb_tensor_table[{len(qm.tensors)}] = {{",
    ]
    for i, t in enumerate(qm.tensors):
        h, w, c = t.shape
        lines.append(
            f"    {{.h = {h}, .w = {w}, .c = {c}, .offset = {plan.offsets[i]}u,"
            f" .zero_point = {t.zero_point}}}, /* {i} {_c_comment(t.name)} */"
        )
    lines += ["};", "", f"static const nb_layer_t nb_layer_table[{len(qm.layers)}] = {{"]
    for lay in packed.layers:
        q = qm.layers[lay.index]
        in1 = q.inputs[1] if len(q.inputs) > 1 else 0
        fmt = f"&{lay.fmt_tables}" if lay.fmt_tables else "NULL"
        lines += [
            "    {",
            f"        .op = {OP_ENUM[q.op]}, .format = {FORMAT_ENUM[lay.format]},",
            f"        .kh = {q.kernel[0]}, .kw = {q.kernel[1]}, .sh = {q.stride[0]}, .sw = {q.stride[1]},"
            f" .ph = {q.padding[0]}, .pw = {q.padding[1]},",
            f"        .in0 = {q.inputs[0]}, .in1 = {in1}, .out = {q.output},"
            f" .act_min = {q.act_min}, .act_max = {q.act_max},",
            f"        .weights = {_ref(lay, 'weights')}, .bias = {_ref(lay, 'bias')},"
            f" .mult = {_ref(lay, 'mult')}, .shift = {_ref(lay, 'shift')},",
            f"        .n_bias_levels = {lay.n_bias_levels}, .fmt = {fmt},",
            f"    }}, /* {lay.index} {_c_comment(lay.name)} */",
        ]
    lines += ["};", "", f"static const char *const nb_layer_name_table[{len(qm.layers)}] = {{"]
    lines += [f"    {_c_string(lay.name)}," for lay in qm.layers]
    lines += [
        "};",
        "",
        "const nb_model_t nb_model = {",
        "    .abi = NB_MODEL_ABI,",
        f"    .name = {_c_string(qm.name)},",
        f"    .hash = {_c_string(packed.hash)},",
        f"    .n_levels = {packed.n_levels},",
        f"    .n_tensors = {len(qm.tensors)},",
        f"    .n_layers = {len(qm.layers)},",
        "    .tensors = nb_tensor_table,",
        "    .layers = nb_layer_table,",
        "    .layer_names = nb_layer_name_table,",
        f"    .input = {qm.input},",
        f"    .output = {qm.output},",
        "    .arena = nb_arena,",
        f"    .arena_size = {plan.size}u,",
        f"    .sparse = {'&nb_sparse_ops' if sparse else 'NULL'},",
        "};",
        "",
    ]
    return "\n".join(lines)


def generate(packed: PackedModel, qm: QModel, out_dir: Path) -> CodegenResult:
    """Write model.h and model.c for `packed` (which must come from `qm`) into `out_dir`."""
    if packed.hash != qm.content_hash():
        raise ValueError(
            "packed model and QModel differ (content hashes do not match): pack this QModel again"
        )
    if len(packed.layers) != len(qm.layers):
        raise ValueError("packed model has a different layer count than the QModel")
    if not 1 <= packed.n_levels <= 255:
        raise ValueError(f"{packed.n_levels} levels do not fit nb_model_t.n_levels (uint8)")
    for lay in packed.layers:
        if lay.format not in FORMAT_ENUM:
            raise ValueError(f"layer {lay.name!r}: format {lay.format!r} has no C encoding yet")
    scratch = {lay.index: lay.scratch_bytes for lay in packed.layers if lay.scratch_bytes > 0}
    plan = plan_qmodel_arena(qm, scratch)
    _check_ranges(qm, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = out_dir / "model.h"
    source = out_dir / "model.c"
    header.write_text(_model_h(packed, qm, plan))
    source.write_text(_model_c(packed, qm, plan))
    symbol_sizes = {a.symbol: a.nbytes for a in packed.arrays()}
    return CodegenResult(
        files=(source, header),
        arena_bytes=plan.size,
        tensor_offsets=plan.offsets,
        symbol_sizes=symbol_sizes,
        storage=packed.storage(),
        scratch_bytes=max(scratch.values(), default=0),
        descriptor_bytes=descriptor_bytes(packed, qm),
    )


def descriptor_bytes(packed: PackedModel, qm: QModel) -> int:
    """Flash of nb_model, its layer / tensor / sparse tables and the name and hash strings."""
    names = sum(len(lay.name.encode()) + 1 + 4 for lay in qm.layers)  # string + pointer
    sparse = sum(1 for lay in packed.layers if lay.sparse is not None)
    return (
        SIZEOF["nb_model_t"]
        + SIZEOF["nb_layer_t"] * len(qm.layers)
        + SIZEOF["nb_tensor_t"] * len(qm.tensors)
        + SIZEOF["nb_sparse_t"] * sparse
        + names
        + len(qm.name.encode())
        + 1
        + len(packed.hash)
        + 1
    )


def storage_from_symbols(symbol_sizes: dict[str, int], packed: PackedModel) -> dict[str, int]:
    """Storage figures recomputed from an ELF's symbol sizes (name → st_size) for `packed`'s arrays,
    to cross-check the figures against what was really linked. Missing symbols count as 0."""
    by_role = {"weight_bytes": 0, "index_bytes": 0, "meta_bytes": 0}
    for arr in packed.arrays():
        by_role[f"{arr.role}_bytes"] += int(symbol_sizes.get(arr.symbol, 0))
    by_role["model_bytes"] = sum(by_role.values())
    return by_role


__all__ = [
    "ArenaPlan",
    "CodegenResult",
    "generate",
    "plan_arena",
    "plan_qmodel_arena",
    "storage_from_symbols",
    "tensor_lifetimes",
]
