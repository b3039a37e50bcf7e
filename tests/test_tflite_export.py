"""The .tflite export (harness/tflite_export.py), checked by TensorFlow Lite Micro itself.

The `tflite-micro` PyPI package (dev extra) runs the exported flatbuffer with TFLM's reference kernels on the
host; its int8 outputs must equal `reference.run_int8` bit for bit, for a model covering every op the
firmware runs (with every padding form: SAME, VALID, PAD and PADV2), for a sparse model's levels and
for a trained digits model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tflite as tfl
from test_reference import all_ops_spec, flat_spec, random_inputs, random_model

# the dev extra's tflite-micro (TFLM's interpreter, host build): a missing package is an error here,
# not a skip, so that the cross-check cannot silently stop running
from tflite_micro.python.tflite_micro import runtime

from harness.qmodel import QLayer, QModel
from harness.quantize import quantize, quantize_input
from harness.reference import run_int8
from harness.tflite_export import export_tflite, write_tflite
from trainers.archs import ARCHS
from trainers.base import TrainRequest
from trainers.datasets import load_dataset
from trainers.dense import DenseOptions, DenseTrainer
from trainers.graph import Conv2d, GlobalAvgPool, Linear, NetSpec, Pool


def _tflm_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    interp = runtime.Interpreter.from_bytes(data)
    outs = []
    for sample in x:
        interp.set_input(sample[None], 0)
        interp.invoke()
        outs.append(np.asarray(interp.get_output(0)).reshape(-1))
    return np.stack(outs)


def _quantized(spec: NetSpec, seed: int = 0, levels: tuple[float, ...] = (0.0,)) -> QModel:
    trained = random_model(spec, seed=seed, levels=levels)
    return quantize(trained, random_inputs(spec, 64, seed=seed + 1), (0.0, 1.0), name=spec.name)


def _inputs(qm: QModel, spec: NetSpec, n: int, seed: int) -> np.ndarray:
    return quantize_input(random_inputs(spec, n, seed=seed), qm.tensors[qm.input])


def _layer_zoo() -> NetSpec:
    return ARCHS["layer_zoo"]((14, 14, 3), 10)


@pytest.mark.parametrize(
    "spec_fn", [all_ops_spec, flat_spec, _layer_zoo], ids=["all_ops", "flat", "layer_zoo"]
)
def test_tflite_micro_matches_the_reference_bit_for_bit(spec_fn: Callable[[], NetSpec]) -> None:
    spec = spec_fn()
    qm = _quantized(spec, seed=3)
    x = _inputs(qm, spec, 24, seed=5)
    want = run_int8(qm, x)
    got = _tflm_outputs(export_tflite(qm), x)
    assert got.dtype == np.int8
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {want.size} outputs differ"
    assert len(np.unique(want, axis=0)) > 1  # the inputs exercise the model


def test_the_export_uses_every_padding_form_and_per_channel_weights() -> None:
    qm = _quantized(all_ops_spec(), seed=3)
    model = tfl.Model.GetRootAsModel(export_tflite(qm), 0)
    assert tfl.Model.ModelBufferHasIdentifier(export_tflite(qm), 0)
    codes = {model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())}
    B = tfl.BuiltinOperator
    # conv2 (3x3 stride 2 on 12x12, pad 1) and the padded max pool need PAD / PADV2
    assert codes == {
        B.CONV_2D,
        B.DEPTHWISE_CONV_2D,
        B.FULLY_CONNECTED,
        B.MAX_POOL_2D,
        B.AVERAGE_POOL_2D,
        B.ADD,
        B.PAD,
        B.PADV2,
    }
    graph = model.Subgraphs(0)
    tensors = {graph.Tensors(i).Name().decode(): graph.Tensors(i) for i in range(graph.TensorsLength())}
    w = tensors["conv1/weights"]
    assert w.Type() == tfl.TensorType.INT8 and w.ShapeAsNumpy().tolist() == [8, 3, 3, 3]
    layer = next(lay for lay in qm.layers if lay.name == "conv1")
    assert layer.weight_scale is not None
    assert np.array_equal(w.Quantization().ScaleAsNumpy(), layer.weight_scale)
    bias = tensors["conv1/bias"]
    assert bias.Type() == tfl.TensorType.INT32
    assert np.array_equal(model.Buffers(bias.Buffer()).DataAsNumpy().view("<i4"), layer.bias)
    dw = tensors["dw/weights"]
    assert dw.ShapeAsNumpy().tolist() == [1, 3, 3, 16] and dw.Quantization().QuantizedDimension() == 3


def test_each_level_of_a_sparse_model_exports_its_masked_weights(tmp_path: Path) -> None:
    spec = flat_spec()
    qm = _quantized(spec, seed=7, levels=(0.5, 0.9))
    x = _inputs(qm, spec, 16, seed=2)
    outs = []
    for level in (0, 1):
        path = write_tflite(qm, tmp_path / f"level{level}.tflite", level=level)
        got = _tflm_outputs(path.read_bytes(), x)
        assert np.array_equal(got, run_int8(qm, x, level=level))
        outs.append(got)
    assert not np.array_equal(outs[0], outs[1])


def test_a_trained_digits_model_runs_bit_exactly_in_tflite_micro() -> None:

    ds = load_dataset("digits")
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes)
    (trained,) = DenseTrainer().train(TrainRequest(ds, spec, (0.0,), 0, "cpu", DenseOptions(epochs=3)))
    qm = quantize(trained, ds.x_train[:256], ds.input_range, name="digits")
    x = quantize_input(ds.x_test[:120], qm.tensors[qm.input])
    want = run_int8(qm, x)
    got = _tflm_outputs(export_tflite(qm), x)
    assert np.array_equal(got, want)
    assert (want.argmax(axis=1) == ds.y_test[:120]).mean() > 0.5  # a trained model, not noise


def _one_layer(layer: QLayer, qm: QModel) -> QModel:
    return QModel(qm.name, qm.tensors, [layer], qm.input, layer.output, qm.levels)


def test_layers_without_an_exact_tflite_form_are_refused() -> None:
    # average pooling whose padding is neither SAME nor VALID
    spec = NetSpec(
        "pads",
        (6, 6, 2),
        3,
        (
            Conv2d("c", "input", 4, kernel=3, padding=1),
            Pool("ap", "c", "avg", kernel=2, stride=1, padding=1),
            GlobalAvgPool("g", "ap"),
            Linear("fc", "g", 3),
        ),
    )
    qm = _quantized(spec)
    with pytest.raises(ValueError, match=r"'ap' \(avgpool\).*neither TFLite's SAME nor VALID"):
        export_tflite(qm)
    conv = qm.layers[0]
    # no float scales to write
    with pytest.raises(ValueError, match=r"'c' \(conv2d\).*no weight_scale"):
        export_tflite(_one_layer(QLayer(**{**conv.__dict__, "weight_scale": None}), qm))
    # multipliers TFLite would not recompute from the scales
    assert conv.multiplier is not None
    bumped = conv.multiplier.copy()
    bumped[0] += 1
    with pytest.raises(ValueError, match=r"'c' \(conv2d\).*multipliers differ"):
        export_tflite(_one_layer(QLayer(**{**conv.__dict__, "multiplier": bumped}), qm))
    # a clamp that is no fused activation
    with pytest.raises(ValueError, match=r"clamp \[-100, 127\]"):
        export_tflite(_one_layer(QLayer(**{**conv.__dict__, "act_min": -100}), qm))
    with pytest.raises(ValueError, match="level 1 out of range"):
        export_tflite(qm, level=1)
