"""The firmware's stand-alone default model (targets/firmware/model_default/model.c), as a QModel.

A small, hand-designed net touching every kernel and its awkward cases: a 3x3 conv with 2 input
channels (element-wise im2col, K % 4 != 0), max pool with padding, a 3x3 conv with 8 input channels
and an odd pixel count (word-wise im2col, SMLAD tiles with a single-pixel tail), ReLU6, a depthwise
conv over 14 channels (groups of 4 plus a tail), a residual add, a strided padded conv with an odd
channel count, a 1x1 conv with 11 input channels, average pool with edge windows, global average
pool and a fully connected layer with 13 inputs and 9 outputs (odd tails on both sides). Weights come
from a fixed xorshift generator and the requantization parameters from TFLite's QuantizeMultiplier
applied to chosen float scales, so the numbers are realistic but need no training.

Regenerate model.c (only when this file changes; tests check they agree):
    cd tests && ../.venv/bin/python -m fw.default_model
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.qmodel import ADD_LEFT_SHIFT, QLayer, QModel, QTensor

ROOT = Path(__file__).resolve().parents[2]
MODEL_C = ROOT / "targets" / "firmware" / "model_default" / "model.c"
MODEL_HASH = "default-model-v1"  # recognisable: never a real content hash (those are hex)
MODEL_NAME = "default"


class _XorShift:
    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF or 1

    def next(self) -> int:
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def ints(self, lo: int, hi: int, n: int) -> list[int]:
        return [lo + self.next() % (hi - lo + 1) for _ in range(n)]


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = q * 2^(shift - 31), q in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    frac, shift = math.frexp(real)
    q = math.floor(frac * (1 << 31) + 0.5)  # std::round, frac > 0
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


# name, shape, scale, zero point
_TENSORS = [
    ("input", (9, 9, 2), 0.05, -3),
    ("conv0", (9, 9, 8), 0.04, -128),
    ("pool0", (5, 5, 8), 0.04, -128),
    ("conv1", (5, 5, 14), 0.033, -100),
    ("dw", (5, 5, 14), 0.05, 7),
    ("res", (5, 5, 14), 0.06, -2),
    ("conv2", (3, 3, 11), 0.05, -128),
    ("pw", (3, 3, 13), 0.045, -128),
    ("avg", (3, 3, 13), 0.045, -128),
    ("gap", (1, 1, 13), 0.045, -128),
    ("logits", (1, 1, 9), 0.1, 4),
]


def _relu_bounds(t: tuple[str, tuple[int, int, int], float, int], six: bool = False) -> tuple[int, int]:
    _, _, scale, zp = t
    hi = min(127, zp + round(6.0 / scale)) if six else 127
    return zp, hi


def build_qmodel() -> QModel:
    rng = _XorShift(0x5EED1234)
    tensors = [QTensor(n, s, float(np.float32(sc)), zp) for n, s, sc, zp in _TENSORS]

    def weighted(
        name: str,
        op: str,
        src: int,
        dst: int,
        wshape: tuple[int, ...],
        *,
        kernel=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        act=(-128, 127),
    ) -> QLayer:
        cout = tensors[dst].shape[2]
        k_depth = int(np.prod(wshape)) // cout
        weight = np.array(rng.ints(-127, 127, int(np.prod(wshape))), np.int8).reshape(wshape)
        s_in, s_out = tensors[src].scale, tensors[dst].scale
        # per-channel effective scales that map a typical accumulator (sqrt(K) * |w| ~73 * |x - zp| ~40)
        # onto ~±40 output steps; the weight scales follow from them as a quantizer would have it
        target = [1.0 / (math.sqrt(k_depth) * 73.0) * (1 + 0.05 * (c % 7)) for c in range(cout)]
        w_scale = np.array([t * s_out / s_in for t in target], np.float32)
        spread = int(math.sqrt(k_depth) * 73 * 10)  # bias up to a quarter of a typical accumulator
        bias = np.array(rng.ints(-spread, spread, cout), np.int32)
        eff = [float(np.float64(s_in) * np.float64(w_scale[c]) / np.float64(s_out)) for c in range(cout)]
        mults, shifts = zip(*(quantize_multiplier(e) for e in eff), strict=True)
        return QLayer(
            name=name,
            op=op,
            inputs=(src,),
            output=dst,
            kernel=kernel,
            stride=stride,
            padding=padding,
            weight=weight,
            bias=bias,
            multiplier=np.array(mults, np.int32),
            shift=np.array(shifts, np.int32),
            act_min=act[0],
            act_max=act[1],
            weight_scale=w_scale,
        )

    def pool(name: str, op: str, src: int, dst: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0)) -> QLayer:
        return QLayer(
            name=name, op=op, inputs=(src,), output=dst, kernel=kernel, stride=stride, padding=padding
        )

    def add(name: str, a: int, b: int, dst: int) -> QLayer:
        sa, sb, so = tensors[a].scale, tensors[b].scale, tensors[dst].scale
        twice_max = 2 * max(sa, sb)
        m0, s0 = quantize_multiplier(sa / twice_max)
        m1, s1 = quantize_multiplier(sb / twice_max)
        mo, so_ = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so))
        return QLayer(
            name=name,
            op="add",
            inputs=(a, b),
            output=dst,
            multiplier=np.array([m0, m1, mo], np.int32),
            shift=np.array([s0, s1, so_], np.int32),
        )

    layers = [
        weighted(
            "conv0",
            "conv2d",
            0,
            1,
            (8, 3, 3, 2),
            kernel=(3, 3),
            padding=(1, 1),
            act=_relu_bounds(_TENSORS[1]),
        ),
        pool("pool0", "maxpool", 1, 2, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
        weighted(
            "conv1",
            "conv2d",
            2,
            3,
            (14, 3, 3, 8),
            kernel=(3, 3),
            padding=(1, 1),
            act=_relu_bounds(_TENSORS[3], six=True),
        ),
        weighted("dw", "dwconv2d", 3, 4, (3, 3, 14), kernel=(3, 3), padding=(1, 1)),
        add("res", 3, 4, 5),
        weighted(
            "conv2",
            "conv2d",
            5,
            6,
            (11, 3, 3, 14),
            kernel=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            act=_relu_bounds(_TENSORS[6]),
        ),
        weighted("pw", "conv2d", 6, 7, (13, 1, 1, 11), act=_relu_bounds(_TENSORS[7])),
        pool("avg", "avgpool", 7, 8, kernel=(3, 3), padding=(1, 1)),
        pool("gap", "gap", 8, 9),
        weighted("fc", "fc", 9, 10, (9, 13)),
    ]
    return QModel(name=MODEL_NAME, tensors=tensors, layers=layers, input=0, output=10)


# --------------------------------------------------------------------------------------------------
# model.c

_OPS = {
    "conv2d": "NB_OP_CONV2D",
    "dwconv2d": "NB_OP_DWCONV2D",
    "fc": "NB_OP_FC",
    "maxpool": "NB_OP_MAXPOOL",
    "avgpool": "NB_OP_AVGPOOL",
    "gap": "NB_OP_GAP",
    "add": "NB_OP_ADD",
}


def _c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 16) -> str:
    flat = [int(v) for v in values.reshape(-1)]
    rows = [", ".join(str(v) for v in flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(rows)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body},\n}};\n"


def arena_layout(qm: QModel) -> tuple[list[int], int]:
    """No reuse: every tensor its own 4-byte aligned slot (the model is tiny)."""
    offsets, pos = [], 0
    for t in qm.tensors:
        offsets.append(pos)
        pos += (t.size + 3) & ~3
    return offsets, pos


def render_model_c(qm: QModel) -> str:
    offsets, arena = arena_layout(qm)
    out = [
        "/* The firmware's stand-alone default model. GENERATED by tests/fw/default_model.py: edit that\n"
        " * file and regenerate (`cd tests && ../.venv/bin/python -m fw.default_model`), not this one.\n"
        " * The harness builds with its own generated model.c instead (NESTBENCH_MODEL_DIR). */\n",
        '#include "nb_model.h"\n\n#include <stddef.h>\n\n',
        f"static int8_t nb_arena[{arena}] __attribute__((aligned(8)));\n\n",
    ]
    for lay in qm.layers:
        if lay.weight is not None:
            out.append(_c_array("int8_t", f"nb_w_{lay.name}", lay.weight))
        if lay.bias is not None:
            out.append(_c_array("int32_t", f"nb_b_{lay.name}", lay.bias, 8))
        if lay.multiplier is not None and lay.shift is not None:
            out.append(_c_array("int32_t", f"nb_m_{lay.name}", lay.multiplier, 6))
            out.append(_c_array("int32_t", f"nb_s_{lay.name}", lay.shift, 16))
    out.append("\nstatic const nb_tensor_t nb_tensors[] = {\n")
    for t, off in zip(qm.tensors, offsets, strict=True):
        h, w, c = t.shape
        out.append(f"    {{{h}, {w}, {c}, {off}u, {t.zero_point}}}, /* {t.name} */\n")
    out.append("};\n\nstatic const nb_layer_t nb_layers[] = {\n")
    for lay in qm.layers:
        in1 = lay.inputs[1] if len(lay.inputs) > 1 else 0

        def ref(prefix: str, present: bool, name: str = lay.name) -> str:
            return f"nb_{prefix}_{name}" if present else "NULL"

        (kh, kw), (sh, sw), (ph, pw) = lay.kernel, lay.stride, lay.padding
        out.append(
            f"    {{.op = {_OPS[lay.op]}, .format = NB_FMT_DENSE, .kh = {kh}, .kw = {kw},"
            f" .sh = {sh}, .sw = {sw}, .ph = {ph}, .pw = {pw},\n"
            f"     .in0 = {lay.inputs[0]}, .in1 = {in1}, .out = {lay.output},"
            f" .act_min = {lay.act_min}, .act_max = {lay.act_max},\n"
            f"     .weights = {ref('w', lay.weight is not None)}, .bias = {ref('b', lay.bias is not None)},"
            f" .mult = {ref('m', lay.multiplier is not None)}, .shift = {ref('s', lay.shift is not None)},"
            f" .n_bias_levels = 1, .fmt = NULL}},\n"
        )
    names = ", ".join(f'"{lay.name}"' for lay in qm.layers)
    out.append(f"}};\n\nstatic const char *const nb_layer_names[] = {{{names}}};\n\n")
    out.append(
        "const nb_model_t nb_model = {\n"
        "    .abi = NB_MODEL_ABI,\n"
        f'    .name = "{qm.name}",\n'
        f'    .hash = "{MODEL_HASH}",\n'
        f"    .n_levels = {len(qm.levels)},\n"
        f"    .n_tensors = {len(qm.tensors)},\n"
        f"    .n_layers = {len(qm.layers)},\n"
        "    .tensors = nb_tensors,\n"
        "    .layers = nb_layers,\n"
        "    .layer_names = nb_layer_names,\n"
        f"    .input = {qm.input},\n"
        f"    .output = {qm.output},\n"
        "    .arena = nb_arena,\n"
        f"    .arena_size = {arena},\n"
        "};\n"
    )
    return "".join(out)


if __name__ == "__main__":
    MODEL_C.write_text(render_model_c(build_qmodel()))
    print(f"wrote {MODEL_C}")
