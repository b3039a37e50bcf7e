"""Export an int8 QModel as a TensorFlow Lite flatbuffer (.tflite), without TensorFlow.

The file is written with the `flatbuffers` runtime and the TFLite schema's generated builders (the
`tflite` package), so users can cross-check the firmware in TFLite Micro, the TFLite interpreter or a
vendor tool. One level is exported per file: a sparse model's level k becomes its masked weights,
densified with zeros (the oracle kernels.md §4 recommends).

Mapping (TFLite int8 semantics are the QModel's own, see harness/qmodel.py):
- conv2d → CONV_2D, weights [Cout, kh, kw, Cin]; dwconv2d → DEPTHWISE_CONV_2D, weights
  [1, kh, kw, C] with depth multiplier 1; fc → FULLY_CONNECTED, weights [Cout, Cin] (the input is
  flattened in HWC order, as TFLite does). Weights are int8 with per-output-channel scales
  (`QLayer.weight_scale`, zero points 0), biases int32 with scale s_in·s_w[c].
- maxpool / avgpool → MAX_POOL_2D / AVERAGE_POOL_2D; gap → AVERAGE_POOL_2D over the whole map;
  add → ADD. The clamp (act_min, act_max) becomes the fused activation (NONE, RELU or RELU6) whose
  TFLite range it equals.
- TFLite pads SAME or VALID only. Symmetric padding that coincides with one of them uses it;
  otherwise a PAD op (padding with the input zero point, which contributes 0 to a convolution) or,
  for max pooling, a PADV2 with -128 feeds a VALID op. Average pooling divides by the in-bounds
  tap count, which no padded form reproduces: such a layer is refused.
- A fully connected output is [1, N]; a RESHAPE to [1, 1, 1, N] is added where a 4-D consumer
  needs it.

TFLite recomputes every requantization multiplier from the float32 scales in the file; the export
checks that this gives exactly the QModel's (multiplier, shift) pairs, so a model that would not
run bit-exactly in TFLite is refused with a ValueError naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np
import tflite as tfl

from harness.qmodel import QLayer, QModel, QTensor
from harness.quantize import _act_range as act_range  # TFLite's fused-activation clamp rule
from harness.quantize import add_params
from harness.requant import quantize_multipliers

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
_ACTIVATIONS = (
    ("none", tfl.ActivationFunctionType.NONE),
    ("relu", tfl.ActivationFunctionType.RELU),
    ("relu6", tfl.ActivationFunctionType.RELU6),
)


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int  # tfl.TensorType
    buffer: int = 0  # 0: no data (activations)
    scales: list[float] | None = None
    zero_points: list[int] | None = None
    quantized_dimension: int = 0


@dataclass
class _Op:
    code: int  # tfl.BuiltinOperator
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0  # tfl.BuiltinOptions; 0 = none
    options: dict[str, int] = field(default_factory=dict)


class _Graph:
    """The tensors, constant buffers and operators of one subgraph, in TFLite's terms."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel
        self.ops: list[_Op] = []

    def tensor(self, t: _Tensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(
        self,
        name: str,
        data: np.ndarray,
        dtype: int,
        scales: list[float] | None = None,
        zero_points: list[int] | None = None,
        quantized_dimension: int = 0,
    ) -> int:
        self.buffers.append(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
        buffer = len(self.buffers) - 1
        return self.tensor(
            _Tensor(name, tuple(data.shape), dtype, buffer, scales, zero_points, quantized_dimension)
        )

    def activation(self, name: str, shape: tuple[int, ...], t: QTensor) -> int:
        return self.tensor(_Tensor(name, shape, tfl.TensorType.INT8, 0, [float(t.scale)], [t.zero_point]))


# ------------------------------------------------------------------------------------------------
# the QModel → graph translation


def _fail(layer: QLayer, message: str) -> ValueError:
    return ValueError(f"layer {layer.name!r} ({layer.op}): {message}")


def _fused_activation(layer: QLayer, out: QTensor) -> int:
    """The fused activation whose TFLite int8 range is exactly the layer's clamp."""
    for act, code in _ACTIVATIONS:
        if act_range(act, out) == (layer.act_min, layer.act_max):
            return int(code)
    raise _fail(
        layer,
        f"clamp [{layer.act_min}, {layer.act_max}] is none of TFLite's NONE/RELU/RELU6 ranges for "
        f"output scale {out.scale} and zero point {out.zero_point}",
    )


def _axis_paddings(size: int, k: int, s: int, pad: int) -> set[int]:
    """The TFLite paddings that place the windows of one axis exactly as symmetric `pad` does
    (same output size, same first window; out-of-bounds taps are skipped either way)."""
    out = (size + 2 * pad - k) // s + 1
    found = {int(tfl.Padding.VALID)} if pad == 0 else set()
    same_out = -(-size // s)
    if same_out == out and max((same_out - 1) * s + k - size, 0) // 2 == pad:
        found.add(int(tfl.Padding.SAME))
    return found


def _padding(qm: QModel, layer: QLayer) -> int | None:
    """SAME or VALID when one of them equals the layer's padding on both axes, else None."""
    h, w, _ = qm.tensors[layer.inputs[0]].shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    both = _axis_paddings(h, kh, sh, ph) & _axis_paddings(w, kw, sw, pw)
    return min(both) if both else None


def _check_multipliers(layer: QLayer, real: np.ndarray) -> None:
    """TFLite derives (multiplier, shift) from the float32 scales: they must be the QModel's."""
    assert layer.multiplier is not None and layer.shift is not None
    mult, shift = quantize_multipliers(real)
    if not (np.array_equal(mult, layer.multiplier) and np.array_equal(shift, layer.shift)):
        raise _fail(
            layer,
            "its requantization multipliers differ from those TFLite computes from the scales; "
            "re-quantize the model with harness.quantize",
        )


class _Exporter:
    def __init__(self, qm: QModel, level: int) -> None:
        if not 0 <= level < len(qm.levels):
            raise ValueError(f"level {level} out of range: the model serves {len(qm.levels)} level(s)")
        self.qm = qm
        self.level = level
        self.g = _Graph()
        self.ids: dict[tuple[int, int], int] = {}  # (QModel tensor, rank) → graph tensor

    def _name(self, index: int) -> str:
        return self.qm.tensors[index].name

    def _shape4(self, index: int) -> tuple[int, int, int, int]:
        h, w, c = self.qm.tensors[index].shape
        return (1, h, w, c)

    def _get(self, index: int, rank: int) -> int:
        """Graph tensor of QModel tensor `index` as rank 4 ([1, H, W, C]) or 2 ([1, N])."""
        key = (index, rank)
        if key in self.ids:
            return self.ids[key]
        other = self.ids.get((index, 6 - rank))  # the same tensor in the other rank (4 ↔ 2)
        if other is None:
            raise ValueError(f"tensor {self._name(index)!r} is read before any layer writes it")
        t = self.qm.tensors[index]
        shape = self._shape4(index) if rank == 4 else (1, t.size)
        new = self.g.activation(f"{t.name}/reshape{rank}d", shape, t)
        target = self.g.const(f"{t.name}/shape{rank}d", np.array(shape, np.int32), tfl.TensorType.INT32)
        self.g.ops.append(_Op(tfl.BuiltinOperator.RESHAPE, [other, target], [new]))
        self.ids[key] = new
        return new

    def _out(self, layer: QLayer, rank: int = 4) -> int:
        t = self.qm.tensors[layer.output]
        shape = self._shape4(layer.output) if rank == 4 else (1, t.size)
        gid = self.g.activation(t.name, shape, t)
        self.ids[(layer.output, rank)] = gid
        return gid

    def _padded_input(self, layer: QLayer, value: int | None) -> int:
        """The layer's input behind a PAD (value None: the input zero point) or PADV2 op."""
        src = layer.inputs[0]
        t = self.qm.tensors[src]
        ph, pw = layer.padding
        _, h, w, c = self._shape4(src)
        padded = self.g.activation(f"{layer.name}/padded", (1, h + 2 * ph, w + 2 * pw, c), t)
        paddings = np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32)
        pads = self.g.const(f"{layer.name}/paddings", paddings, tfl.TensorType.INT32)
        inputs = [self._get(src, 4), pads]
        code = tfl.BuiltinOperator.PAD
        if value is not None:
            code = tfl.BuiltinOperator.PADV2
            inputs.append(
                self.g.const(
                    f"{layer.name}/pad_value",
                    np.array([value], np.int8),
                    tfl.TensorType.INT8,
                    scales=[float(t.scale)],
                    zero_points=[t.zero_point],
                )
            )
        self.g.ops.append(_Op(code, inputs, [padded]))
        return padded

    def _weights(self, layer: QLayer, shape: tuple[int, ...], qdim: int) -> tuple[int, int]:
        """(weight tensor, bias tensor) with per-channel scales, after checking the multipliers."""
        w = layer.weight_at(self.level)
        if w is None or layer.bias is None or layer.multiplier is None:
            raise _fail(layer, "has no weights, bias or multipliers")
        if layer.weight_scale is None:
            raise _fail(layer, "has no weight_scale (per-channel float32 scales) to export")
        s_w = np.asarray(layer.weight_scale, np.float32)
        s_in = float(self.qm.tensors[layer.inputs[0]].scale)
        s_out = float(self.qm.tensors[layer.output].scale)
        _check_multipliers(layer, s_in * s_w.astype(np.float64) / s_out)
        n = s_w.size
        wid = self.g.const(
            f"{layer.name}/weights",
            np.asarray(w, np.int8).reshape(shape),
            tfl.TensorType.INT8,
            scales=[float(v) for v in s_w],
            zero_points=[0] * n,
            quantized_dimension=qdim,
        )
        bias_scales = [float(np.float32(s_in * float(v))) for v in s_w]
        bid = self.g.const(
            f"{layer.name}/bias",
            np.asarray(layer.bias, np.int32),
            tfl.TensorType.INT32,
            scales=bias_scales,
            zero_points=[0] * n,
        )
        return wid, bid

    def _conv(self, layer: QLayer) -> None:
        out = self.qm.tensors[layer.output]
        act = _fused_activation(layer, out)
        padding = _padding(self.qm, layer)
        src = self._get(layer.inputs[0], 4) if padding is not None else self._padded_input(layer, None)
        if padding is None:
            padding = int(tfl.Padding.VALID)
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        assert layer.weight is not None
        if layer.op == "conv2d":
            wid, bid = self._weights(layer, layer.weight.shape, 0)
            code, otype = tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOptions.Conv2DOptions
            options = {"padding": padding, "stride_w": sw, "stride_h": sh, "act": act}
        else:
            c = layer.weight.shape[2]
            wid, bid = self._weights(layer, (1, kh, kw, c), 3)
            code, otype = tfl.BuiltinOperator.DEPTHWISE_CONV_2D, tfl.BuiltinOptions.DepthwiseConv2DOptions
            options = {"padding": padding, "stride_w": sw, "stride_h": sh, "act": act, "multiplier": 1}
        self.g.ops.append(_Op(code, [src, wid, bid], [self._out(layer)], otype, options))

    def _fc(self, layer: QLayer) -> None:
        act = _fused_activation(layer, self.qm.tensors[layer.output])
        assert layer.weight is not None
        wid, bid = self._weights(layer, layer.weight.shape, 0)
        src = layer.inputs[0]
        # a 2-D producer is used as it is; a 4-D one is flattened by FULLY_CONNECTED itself
        sid = self.ids.get((src, 2))
        sid = sid if sid is not None else self._get(src, 4)
        self.g.ops.append(
            _Op(
                tfl.BuiltinOperator.FULLY_CONNECTED,
                [sid, wid, bid],
                [self._out(layer, rank=2)],
                tfl.BuiltinOptions.FullyConnectedOptions,
                {"act": act},
            )
        )

    def _pool(self, layer: QLayer) -> None:
        out = self.qm.tensors[layer.output]
        act = _fused_activation(layer, out)
        if layer.op == "gap":
            _, h, w, _ = self._shape4(layer.inputs[0])
            kernel, stride, padding, src = (
                (h, w),
                (1, 1),
                int(tfl.Padding.VALID),
                self._get(layer.inputs[0], 4),
            )
        else:
            kernel, stride = layer.kernel, layer.stride
            pad = _padding(self.qm, layer)
            if pad is None and layer.op == "avgpool":
                raise _fail(
                    layer,
                    f"padding {layer.padding} is neither TFLite's SAME nor VALID, and average pooling "
                    "over padded inputs has no TFLite equivalent",
                )
            src = self._get(layer.inputs[0], 4) if pad is not None else self._padded_input(layer, -128)
            padding = pad if pad is not None else int(tfl.Padding.VALID)
        code = (
            tfl.BuiltinOperator.MAX_POOL_2D if layer.op == "maxpool" else tfl.BuiltinOperator.AVERAGE_POOL_2D
        )
        options = {
            "padding": padding,
            "stride_w": stride[1],
            "stride_h": stride[0],
            "filter_w": kernel[1],
            "filter_h": kernel[0],
            "act": act,
        }
        self.g.ops.append(_Op(code, [src], [self._out(layer)], tfl.BuiltinOptions.Pool2DOptions, options))

    def _add(self, layer: QLayer) -> None:
        a, b = layer.inputs
        ta, tb, out = self.qm.tensors[a], self.qm.tensors[b], self.qm.tensors[layer.output]
        mult, shift = add_params(ta.scale, tb.scale, out.scale)
        if layer.multiplier is None or layer.shift is None:
            raise _fail(layer, "has no multipliers")
        if not (np.array_equal(mult, layer.multiplier) and np.array_equal(shift, layer.shift)):
            raise _fail(layer, "its multipliers differ from those TFLite computes from the scales")
        act = _fused_activation(layer, out)
        rank = 2 if (a, 2) in self.ids and (b, 2) in self.ids else 4
        self.g.ops.append(
            _Op(
                tfl.BuiltinOperator.ADD,
                [self._get(a, rank), self._get(b, rank)],
                [self._out(layer, rank)],
                tfl.BuiltinOptions.AddOptions,
                {"act": act},
            )
        )

    def run(self) -> _Graph:
        qm = self.qm
        t_in = qm.tensors[qm.input]
        self.ids[(qm.input, 4)] = self.g.activation(t_in.name, self._shape4(qm.input), t_in)
        for layer in qm.layers:
            if layer.op in ("conv2d", "dwconv2d"):
                self._conv(layer)
            elif layer.op == "fc":
                self._fc(layer)
            elif layer.op in ("maxpool", "avgpool", "gap"):
                self._pool(layer)
            elif layer.op == "add":
                self._add(layer)
            else:
                raise _fail(layer, "op has no TFLite export")
        return self.g

    def output_id(self) -> int:
        out = self.qm.output
        gid = self.ids.get((out, 2))
        return gid if gid is not None else self._get(out, 4)


# ------------------------------------------------------------------------------------------------
# serialization


def _int_vector(b: flatbuffers.Builder, values: list[int], width: int = 4) -> int:
    dtype = {4: np.int32, 8: np.int64}[width]
    return b.CreateNumpyVector(np.asarray(values, dtype))


def _options(b: flatbuffers.Builder, op: _Op) -> int:
    o = op.options
    t = op.options_type
    if t == tfl.BuiltinOptions.Conv2DOptions:
        tfl.Conv2DOptionsStart(b)
        tfl.Conv2DOptionsAddPadding(b, o["padding"])
        tfl.Conv2DOptionsAddStrideW(b, o["stride_w"])
        tfl.Conv2DOptionsAddStrideH(b, o["stride_h"])
        tfl.Conv2DOptionsAddDilationWFactor(b, 1)
        tfl.Conv2DOptionsAddDilationHFactor(b, 1)
        tfl.Conv2DOptionsAddFusedActivationFunction(b, o["act"])
        return int(tfl.Conv2DOptionsEnd(b))
    if t == tfl.BuiltinOptions.DepthwiseConv2DOptions:
        tfl.DepthwiseConv2DOptionsStart(b)
        tfl.DepthwiseConv2DOptionsAddPadding(b, o["padding"])
        tfl.DepthwiseConv2DOptionsAddStrideW(b, o["stride_w"])
        tfl.DepthwiseConv2DOptionsAddStrideH(b, o["stride_h"])
        tfl.DepthwiseConv2DOptionsAddDepthMultiplier(b, o["multiplier"])
        tfl.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
        tfl.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
        tfl.DepthwiseConv2DOptionsAddFusedActivationFunction(b, o["act"])
        return int(tfl.DepthwiseConv2DOptionsEnd(b))
    if t == tfl.BuiltinOptions.Pool2DOptions:
        tfl.Pool2DOptionsStart(b)
        tfl.Pool2DOptionsAddPadding(b, o["padding"])
        tfl.Pool2DOptionsAddStrideW(b, o["stride_w"])
        tfl.Pool2DOptionsAddStrideH(b, o["stride_h"])
        tfl.Pool2DOptionsAddFilterWidth(b, o["filter_w"])
        tfl.Pool2DOptionsAddFilterHeight(b, o["filter_h"])
        tfl.Pool2DOptionsAddFusedActivationFunction(b, o["act"])
        return int(tfl.Pool2DOptionsEnd(b))
    if t == tfl.BuiltinOptions.FullyConnectedOptions:
        tfl.FullyConnectedOptionsStart(b)
        tfl.FullyConnectedOptionsAddFusedActivationFunction(b, o["act"])
        return int(tfl.FullyConnectedOptionsEnd(b))
    if t == tfl.BuiltinOptions.AddOptions:
        tfl.AddOptionsStart(b)
        tfl.AddOptionsAddFusedActivationFunction(b, o["act"])
        return int(tfl.AddOptionsEnd(b))
    raise AssertionError(f"no options writer for type {t}")


def _serialize(g: _Graph, inputs: list[int], outputs: list[int], description: str) -> bytes:
    b = flatbuffers.Builder(1 << 16)

    buffer_offsets = []
    for data in g.buffers:
        data_vec = None
        if data:
            # 16-byte aligned payloads: TFLite Micro reads int32 biases in place
            b.StartVector(1, len(data), 16)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            data_vec = b.EndVector()
        tfl.BufferStart(b)
        if data_vec is not None:
            tfl.BufferAddData(b, data_vec)
        buffer_offsets.append(tfl.BufferEnd(b))

    tensor_offsets = []
    for t in g.tensors:
        name = b.CreateString(t.name)
        shape = _int_vector(b, list(t.shape))
        quant = None
        if t.scales is not None:
            scale = b.CreateNumpyVector(np.asarray(t.scales, np.float32))
            zps = _int_vector(b, list(t.zero_points or []), 8)
            tfl.QuantizationParametersStart(b)
            tfl.QuantizationParametersAddScale(b, scale)
            tfl.QuantizationParametersAddZeroPoint(b, zps)
            tfl.QuantizationParametersAddQuantizedDimension(b, t.quantized_dimension)
            quant = tfl.QuantizationParametersEnd(b)
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        tfl.TensorAddType(b, t.dtype)
        tfl.TensorAddBuffer(b, t.buffer)
        tfl.TensorAddName(b, name)
        if quant is not None:
            tfl.TensorAddQuantization(b, quant)
        tensor_offsets.append(tfl.TensorEnd(b))

    codes = sorted({int(op.code) for op in g.ops})
    op_offsets = []
    for op in g.ops:
        ins = _int_vector(b, op.inputs)
        outs = _int_vector(b, op.outputs)
        opts = _options(b, op) if op.options_type else None
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, codes.index(int(op.code)))
        tfl.OperatorAddInputs(b, ins)
        tfl.OperatorAddOutputs(b, outs)
        if opts is not None:
            tfl.OperatorAddBuiltinOptionsType(b, op.options_type)
            tfl.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(tfl.OperatorEnd(b))

    def table_vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return int(b.EndVector())

    tensors_vec = table_vector(tensor_offsets)
    ops_vec = table_vector(op_offsets)
    in_vec, out_vec = _int_vector(b, inputs), _int_vector(b, outputs)
    sg_name = b.CreateString("main")
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, tensors_vec)
    tfl.SubGraphAddInputs(b, in_vec)
    tfl.SubGraphAddOutputs(b, out_vec)
    tfl.SubGraphAddOperators(b, ops_vec)
    tfl.SubGraphAddName(b, sg_name)
    subgraph = tfl.SubGraphEnd(b)

    code_offsets = []
    for code in codes:
        tfl.OperatorCodeStart(b)
        # TFLite readers take max(deprecated_builtin_code, builtin_code); old ones only the first
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tfl.OperatorCodeEnd(b))

    codes_vec = table_vector(code_offsets)
    subgraphs_vec = table_vector([subgraph])
    buffers_vec = table_vector(buffer_offsets)
    desc = b.CreateString(description)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, SCHEMA_VERSION)
    tfl.ModelAddOperatorCodes(b, codes_vec)
    tfl.ModelAddSubgraphs(b, subgraphs_vec)
    tfl.ModelAddDescription(b, desc)
    tfl.ModelAddBuffers(b, buffers_vec)
    model = tfl.ModelEnd(b)
    b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def export_tflite(qm: QModel, level: int = 0) -> bytes:
    """The .tflite flatbuffer of `qm` at `level` (batch 1, int8 input and output).

    ValueError names the layer when something has no exact TFLite form (see the module docstring).
    """
    exporter = _Exporter(qm, level)
    graph = exporter.run()
    inputs = [exporter.ids[(qm.input, 4)]]
    outputs = [exporter.output_id()]
    desc = f"nestbench {qm.name} level {level} (sparsity {qm.levels[level]:g}) {qm.content_hash()[:16]}"
    return _serialize(graph, inputs, outputs, desc)


def write_tflite(qm: QModel, path: Path, level: int = 0) -> Path:
    """Write `export_tflite(qm, level)` to `path` (parents created); returns the path."""
    data = export_tflite(qm, level)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
