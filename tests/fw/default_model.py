"""The firmware's stand-alone default model (targets/firmware/model_default/model.c), as a QModel.

A small, hand-designed net touching every kernel and its awkward cases: a 3x3 conv with 2 input
channels (element-wise im2col, K % 4 != 0), max pool with padding, a 3x3 conv with 8 input channels
and an odd pixel count (word-wise im2col, SMLAD tiles with a single-pixel tail), ReLU6, a depthwise
conv over 14 channels (groups of 4 plus a tail), a residual add, a strided padded conv with an odd
channel count, a 1x1 conv with 11 input channels, average pool with edge windows, global average
pool and a fully connected layer with 13 inputs and 9 outputs (odd tails on both sides). Weights come
from a fixed xorshift generator and the requantization parameters from TFLite's QuantizeMultiplier
applied to chosen float scales, so the numbers are realistic but need no training.

Regenerate model.c/model.h (when this file or the code generator changes; a test checks they agree):
    cd tests && ../.venv/bin/python -m fw.default_model
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness import codegen, pack
from harness.qmodel import ADD_LEFT_SHIFT, QLayer, QModel, QTensor
from harness.requant import quantize_multiplier

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "targets" / "firmware" / "model_default"
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
# model.c: written by the harness's own packer and code generator, like every model it deploys


def write_model(out_dir: Path) -> None:
    qm = build_qmodel()
    codegen.generate(pack.pack(qm, "dense"), qm, out_dir)


def arena_bytes() -> int:
    return codegen.plan_qmodel_arena(build_qmodel()).size


if __name__ == "__main__":
    write_model(MODEL_DIR)
    print(f"wrote {MODEL_DIR}")
