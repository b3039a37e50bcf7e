"""The bit-exact gate: generated model.c + the firmware's portable core + the host HAL, built as a
shared library with host gcc and called through ctypes, must reproduce `run_int8` exactly.

The library is built by the firmware's own helper (tests/fw/hostlib.py, `build_host_lib(model_dir,
out) -> Path`) so this test compiles exactly the sources the firmware ships.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from test_reference import all_ops_spec, flat_spec, random_inputs, random_model

from harness.codegen import generate
from harness.pack import pack
from harness.qmodel import QModel
from harness.quantize import quantize, quantize_input
from harness.reference import run_int8
from trainers.graph import Add, Conv2d, GlobalAvgPool, Linear, NetSpec, Pool

HOSTLIB = Path(__file__).resolve().parent / "fw" / "hostlib.py"


def _hostlib() -> ModuleType:
    if shutil.which("gcc") is None:
        pytest.skip("host gcc is not installed")
    if not HOSTLIB.exists():
        pytest.skip("tests/fw/hostlib.py (the firmware's host build helper) does not exist yet")
    spec = importlib.util.spec_from_file_location("nb_hostlib", HOSTLIB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def odd_spec() -> NetSpec:
    """Non-square input, odd channel counts and strides: exercises kernel tails and edges."""
    return NetSpec(
        "odd",
        (11, 7, 3),
        5,
        (
            Conv2d("c1", "input", 7, kernel=5, stride=2, padding=2, act="relu6"),
            Conv2d("dw", "c1", 7, kernel=3, stride=2, padding=1, depthwise=True),
            Conv2d("pw", "dw", 9, kernel=1, stride=1, act="none"),
            Conv2d("c2", "pw", 9, kernel=3, stride=1, padding=1, act="none"),
            Add("add", ("pw", "c2"), act="relu6"),
            Pool("ap", "add", "avg", kernel=2, stride=1, padding=1),
            Pool("mp", "ap", "max", kernel=3, stride=2, padding=1),
            Linear("fc", "mp", 5),
        ),
    )


def wide_spec() -> NetSpec:
    """A deeper 1x1 / FC path (K >= 256) and GAP over a larger plane: long accumulations."""
    return NetSpec(
        "wide",
        (16, 16, 4),
        10,
        (
            Conv2d("c1", "input", 32, kernel=3, padding=1),
            Conv2d("c2", "c1", 64, kernel=3, stride=2, padding=1),
            Conv2d("pw", "c2", 128, kernel=1, act="relu6"),
            GlobalAvgPool("gap", "pw"),
            Linear("fc1", "gap", 64, act="relu"),
            Linear("fc2", "fc1", 10),
        ),
    )


MODELS = {"all_ops": all_ops_spec, "flat": flat_spec, "odd": odd_spec, "wide": wide_spec}


def _inputs(qm: QModel, spec: NetSpec, n: int, seed: int) -> np.ndarray:
    """Calibration-like inputs, raw random int8 (the whole range) and the two constant extremes."""
    rng = np.random.default_rng(seed)
    shape = (n, *spec.input_shape)
    natural = quantize_input(random_inputs(spec, n, seed=seed), qm.tensors[qm.input])
    raw = rng.integers(-128, 128, shape, dtype=np.int8)
    extremes = np.stack([np.full(spec.input_shape, -128, np.int8), np.full(spec.input_shape, 127, np.int8)])
    return np.concatenate([natural, raw, extremes])


def _first_differing_layer(lib: ctypes.CDLL, qm: QModel, sample: np.ndarray) -> str:
    """Locate a mismatch: run the library layer by layer (nb_host_infer_until) against the
    reference's recorded tensors."""
    until = getattr(lib, "nb_host_infer_until", None)
    if until is None:
        return "no nb_host_infer_until to localise it"
    until.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint32]
    until.restype = ctypes.c_int
    _, tensors = run_int8(qm, sample[None], record=True)
    data = np.ascontiguousarray(sample)
    for i, lay in enumerate(qm.layers):
        ref = tensors[lay.output]
        assert ref is not None
        buf = np.zeros(ref.size, dtype=np.int8)
        size = until(data.ctypes.data, 0, i + 1, buf.ctypes.data, buf.size)
        if size != ref.size or not np.array_equal(buf, ref.ravel()):
            diff = np.flatnonzero(buf != ref.ravel())
            return (
                f"first differing layer {i} {lay.name!r} ({lay.op}): {diff.size} of {ref.size} bytes differ"
            )
    return "every layer output agrees when run layer by layer"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_host_build_matches_reference_bit_for_bit(name: str, tmp_path: Path) -> None:
    hostlib = _hostlib()
    spec = MODELS[name]()
    model = random_model(spec, seed=41, zero_channel=name == "odd")
    qm = quantize(model, random_inputs(spec, 128, seed=42), (0.0, 1.0), name=name)
    model_dir = tmp_path / "model"
    result = generate(pack(qm), qm, model_dir)
    lib_path = hostlib.build_host_lib(model_dir, tmp_path / f"libnb_{name}.so")
    lib = ctypes.CDLL(str(lib_path))
    infer = lib.nb_host_infer
    infer.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    infer.restype = ctypes.c_int

    x = _inputs(qm, spec, 100, seed=43)
    want = run_int8(qm, x)
    got = np.zeros_like(want)
    out = np.zeros(want.shape[1], dtype=np.int8)
    for i in range(x.shape[0]):
        sample = np.ascontiguousarray(x[i])
        status = infer(sample.ctypes.data, out.ctypes.data, 0)
        assert status == 0, f"nb_host_infer returned {status} on sample {i}"
        got[i] = out
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, (
        f"{bad.size}/{x.shape[0]} samples differ (arena {result.arena_bytes} B); first sample {bad[0]}: "
        f"device {got[bad[0]].tolist()} reference {want[bad[0]].tolist()}; "
        + _first_differing_layer(lib, qm, x[bad[0]])
    )
    # a level the model does not serve is refused, not run
    assert infer(np.ascontiguousarray(x[0]).ctypes.data, out.ctypes.data, len(qm.levels)) != 0
