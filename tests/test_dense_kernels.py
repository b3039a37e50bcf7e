"""The dense int8 kernels' M7 paths (targets/firmware/core/nb_kernels_dense.c, nb_requant.h).

- The fast requantization of nb_requant.h, compiled with host gcc, equals the harness's reference
  MultiplyByQuantizedMultiplier (+ zero point) on random, boundary and rounding-tie inputs, and
  claims only the multipliers and accumulators it is exact for.
- In QEMU (the DSP build), chains of layers whose shapes reach every path of the tuned kernels
  (im2col fills for Cin % 4 == 0 and other channel counts, reduction tails, odd channel and pixel
  counts, strides, border windows, the unrolled 3x3 depthwise, 4-row fully connected, the
  reference-requantization fallback and the plain-C fallbacks) give exactly `run_int8`'s outputs
  for several inputs, with instruction counts that do not depend on the input values.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from fw import fwbuild

from harness.backends.qemu import QemuBackend
from harness.codegen import generate
from harness.pack import pack
from harness.protocol import DeviceClient
from harness.qmodel import QLayer, QModel, QTensor
from harness.reference import run_int8
from harness.requant import multiply_by_quantized_multiplier, quantize_multiplier

CORE = fwbuild.ROOT / "targets" / "firmware" / "core"

# ---------------------------------------------------------------------------------------------
# nb_requant.h on the host

_RQ_SOURCE = r"""
#include "nb_requant.h"
/* out[i] = fast form + zp, or INT32_MIN where the fast form does not apply */
void rq_fast(const int32_t *acc, const int32_t *mult, const int32_t *shift, const int32_t *zp,
             int32_t *out, int n)
{
    for (int i = 0; i < n; i++) {
        if (!nb_rq_fast_ok(mult[i], shift[i]) || !nb_rq_fast_acc_ok(acc[i], 0)) {
            out[i] = INT32_MIN;
            continue;
        }
        const nb_rq_fast_t q = nb_rq_fast_params(mult[i], shift[i], zp[i]);
        out[i] = nb_requantize_fast(acc[i], q.m2, q.hz, q.e);
    }
}
int acc_ok(int32_t bias, int32_t depth) { return nb_rq_fast_acc_ok(bias, depth); }
"""


@pytest.fixture(scope="module")
def rq_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("host gcc is not installed")
    folder = tmp_path_factory.mktemp("rq")
    (folder / "rq.c").write_text(_RQ_SOURCE)
    lib = folder / "librq.so"
    flags = ["-shared", "-fPIC", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([gcc, *flags, f"-I{CORE}", "-o", str(lib), str(folder / "rq.c")], check=True)
    return ctypes.CDLL(str(lib))


def _fast(
    lib: ctypes.CDLL, acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, zp: np.ndarray
) -> np.ndarray:
    arrays = [np.ascontiguousarray(a, np.int32) for a in (acc, mult, shift, zp)]
    out = np.zeros(acc.size, np.int32)
    ptr = ctypes.c_void_p
    lib.rq_fast(*(ptr(a.ctypes.data) for a in arrays), ptr(out.ctypes.data), ctypes.c_int(acc.size))
    return out


def test_fast_requantization_equals_the_reference(rq_lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(11)
    n = 300_000
    q = n // 4
    shift = -rng.integers(1, 22, n)
    mult = rng.integers(1 << 30, 1 << 31, n)
    zp = rng.integers(-128, 128, n)
    e = -shift
    acc = rng.integers(-(1 << 30) + 1, 1 << 30, n)
    # magnitudes spread over every scale
    acc[:q] = rng.integers(-(1 << 15), 1 << 15, q) << rng.integers(0, 15, q)
    # exact ties of the first rounding: acc * M = 2^30 (mod 2^31) with M = 2^20 * odd
    mult[q : 2 * q] = (1 << 30) + (rng.integers(0, 1 << 9, q) * 2 + 1) * (1 << 20)
    acc[q : 2 * q] = (rng.integers(-(1 << 18), 1 << 18, q) * 2 + 1) * (1 << 10)
    # exact ties of the second: M = 2^30 makes y = floor((acc + 1) / 2); y = (t + 1/2) 2^e
    mult[2 * q : 3 * q] = 1 << 30
    y = (rng.integers(-(1 << 8), 1 << 8, q) * 2 + 1) << (e[2 * q : 3 * q] - 1)
    acc[2 * q : 3 * q] = 2 * y - rng.integers(0, 2, q)
    acc[-4:] = [(1 << 30) - 1, -(1 << 30) + 1, 0, -1]
    assert np.all(np.abs(acc) < 1 << 30)
    want = multiply_by_quantized_multiplier(acc, mult, shift) + zp
    got = _fast(rq_lib, acc, mult, shift, zp)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {n} differ"
    # the tie cases are ties, of both signs
    first = acc[q : 2 * q] * mult[q : 2 * q] % (1 << 31) == 1 << 30
    y_ref = (acc[2 * q : 3 * q] + 1) // 2
    second = y_ref % (1 << e[2 * q : 3 * q]) == 1 << (e[2 * q : 3 * q] - 1)
    assert first.all() and second.mean() > 0.4
    assert (acc[q : 2 * q] < 0).any() and (y_ref[second] < 0).any()


def test_fast_requantization_claims_only_what_it_is_exact_for(rq_lib: ctypes.CDLL) -> None:
    m, s = quantize_multiplier(0.3)  # a usual scale: right shift 1
    assert s == -1
    cases = [
        (m, 0),  # shift 0: no rounding division, reference form
        (m, 2),  # a left shift
        (m, -22),  # beyond the checked shift range
        ((1 << 30) - 1, -3),  # not a QuantizeMultiplier significand
        (0, 0),
    ]
    for mult, shift in cases:
        one = np.ones(1, np.int64)
        out = _fast(rq_lib, one * 1000, one * mult, one * shift, one * 0)
        assert out[0] == np.iinfo(np.int32).min, (mult, shift)
    assert _fast(rq_lib, np.array([1000]), np.array([m]), np.array([s]), np.array([3]))[0] == (
        multiply_by_quantized_multiplier(1000, m, s) + 3
    )
    # |bias| + depth * 128 * 255 must stay below 2^30
    assert rq_lib.acc_ok(0, 32_000) == 1
    assert rq_lib.acc_ok(0, 33_000) == 0
    limit = (1 << 30) - 1 - 9 * 128 * 255
    assert rq_lib.acc_ok(limit, 9) == 1 and rq_lib.acc_ok(limit + 1, 9) == 0
    assert rq_lib.acc_ok(-limit, 9) == 1 and rq_lib.acc_ok(-limit - 1, 9) == 0


# ---------------------------------------------------------------------------------------------
# the kernels in QEMU


class _Chain:
    """A QModel under construction: each layer reads the previous layer's output."""

    def __init__(self, name: str, shape: tuple[int, int, int], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.tensors = [QTensor("input", shape, 0.05, int(self.rng.integers(-20, 20)))]
        self.layers: list[QLayer] = []
        self.calib = self.rng.integers(-128, 128, (4, *shape)).astype(np.int8)

    def _add(self, layer: QLayer, shape: tuple[int, int, int]) -> None:
        self.tensors.append(QTensor(layer.name, shape, 0.05, int(self.rng.integers(-30, 30))))
        self.layers.append(layer)

    def _spread(self) -> float:
        """Standard deviation of (x - zp) of the chain's current output on the calibration inputs."""
        x = self.calib
        if self.layers:
            _, values = run_int8(self.model(), self.calib, record=True)
            x = values[len(self.tensors) - 1]  # type: ignore[assignment]
        return float(np.std(x.astype(np.float64) - self.tensors[-1].zero_point)) + 1.0

    def _requant(self, weight: np.ndarray, depth: int, scale: float | None) -> dict[str, np.ndarray]:
        """Bias and multipliers that keep the outputs spread over int8 (std ~ 30, few clamped), so
        that a wrong value anywhere changes the chain's output. `scale` fixes the real multipliers
        instead (>= 1/2 selects the reference requantization)."""
        cout = weight.shape[-1] if weight.ndim == 3 else weight.shape[0]
        acc_std = self._spread() * np.sqrt(depth) * float(np.std(weight.astype(np.float64)))
        reals = self.rng.uniform(0.7, 1.3, cout) * (scale if scale else 30.0 / acc_std)
        pairs = [quantize_multiplier(float(r)) for r in reals]
        bias_range = 30.0 / float(reals.mean())
        return {
            "multiplier": np.array([p[0] for p in pairs], np.int32),
            "shift": np.array([p[1] for p in pairs], np.int32),
            "bias": self.rng.integers(-bias_range, bias_range + 1, cout).astype(np.int32),
        }

    def conv(
        self,
        cout: int,
        k: int,
        stride: int = 1,
        pad: int = 0,
        *,
        depthwise: bool = False,
        act: tuple[int, int] = (-128, 127),
        wmax: int = 127,
        scale: float | None = None,
    ) -> _Chain:
        h, w, cin = self.tensors[-1].shape
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if depthwise:
            cout, wshape, depth, op = cin, (k, k, cin), k * k, "dwconv2d"
        else:
            wshape, depth, op = (cout, k, k, cin), k * k * cin, "conv2d"
        weight = self.rng.integers(-wmax, wmax + 1, wshape).astype(np.int8)
        layer = QLayer(
            f"l{len(self.layers)}",
            op,  # type: ignore[arg-type]
            (len(self.tensors) - 1,),
            len(self.tensors),
            kernel=(k, k),
            stride=(stride, stride),
            padding=(pad, pad),
            weight=weight,
            act_min=act[0],
            act_max=act[1],
            **self._requant(weight, depth, scale),  # type: ignore[arg-type]
        )
        self._add(layer, (ho, wo, cout))
        return self

    def fc(self, cout: int, *, wmax: int = 127, scale: float | None = None) -> _Chain:
        cin = self.tensors[-1].size
        weight = self.rng.integers(-wmax, wmax + 1, (cout, cin)).astype(np.int8)
        layer = QLayer(
            f"l{len(self.layers)}",
            "fc",
            (len(self.tensors) - 1,),
            len(self.tensors),
            weight=weight,
            **self._requant(weight, cin, scale),  # type: ignore[arg-type]
        )
        self._add(layer, (1, 1, cout))
        return self

    def model(self) -> QModel:
        return QModel(self.name, self.tensors, self.layers, 0, len(self.tensors) - 1)


def _chains() -> list[QModel]:
    relu6 = (-20, 100)
    return [
        # im2col paths: Cin = 3 (raw patch, K = 27: tail group), Cin % 4 == 0 with odd Cout and an odd
        # pixel count, 5x5 stride 2 on Cin = 6 (K = 150), 1x1, a clamped activation, a layer whose
        # scale >= 1/2 (reference requantization), K < 4 and K > NB_IM2COL_MAX_K (plain C)
        _Chain("conv_paths", (9, 11, 3), seed=1)
        .conv(8, 3, 1, 1, act=relu6)
        .conv(7, 3, 2, 1)
        .conv(6, 1)
        .conv(10, 5, 2, 2)
        .conv(5, 3, 1, 1, wmax=2, scale=0.6)
        .model(),
        _Chain("conv_fallbacks", (6, 5, 1), seed=2).conv(3, 1).conv(136, 3, 1, 1).conv(9, 3, 1, 1).model(),
        # depthwise: 3x3 inside windows and borders at strides 1 and 2, C % 4 != 0, 5x5, a 2x2 map
        # (no inside window), then fully connected with K % 4 != 0, Cout % 4 != 0, a reference-form
        # layer and K < 4
        _Chain("dw_fc", (10, 9, 6), seed=3)
        .conv(6, 3, 1, 1, depthwise=True, act=relu6)
        .conv(6, 3, 2, 1, depthwise=True)
        .conv(6, 5, 1, 2, depthwise=True)
        .conv(8, 1)
        .conv(8, 3, 2, 0, depthwise=True)
        .conv(8, 3, 1, 1, depthwise=True)
        .fc(13)
        .fc(9, wmax=3, scale=0.7)
        .fc(3)
        .fc(6)
        .model(),
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("qm", _chains(), ids=lambda qm: qm.name)
def test_kernel_paths_are_bit_exact_in_qemu(qm: QModel, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    generate(pack(qm, "dense"), qm, model_dir)
    build = fwbuild.built("qemu_mps2_an500", model_dir=model_dir)
    assert build.returncode == 0, build.output[-3000:]
    rng = np.random.default_rng(5)
    xs = rng.integers(-128, 128, (3, *qm.tensors[qm.input].shape)).astype(np.int8)
    want = run_int8(qm, xs)
    assert len(np.unique(want, axis=0)) == len(xs)  # the chain keeps the inputs apart
    counts = []
    with QemuBackend(fwbuild.qemu_args(), timeout_s=30).session(build.elf) as link:
        client = DeviceClient(link.port, timeout=30)
        client.hello()
        for x, expected in zip(xs, want, strict=True):
            client.load_input(x.tobytes())
            client.infer(1, 0, zlib.crc32(x.tobytes()))
            got = np.frombuffer(client.read_output(), np.int8)
            assert np.array_equal(got, expected), f"outputs differ at {np.flatnonzero(got != expected)}"
            counts.append(client.layer_cycles())
    assert counts[0] == counts[1] == counts[2]  # shapes decide the instruction counts, not values


# ---------------------------------------------------------------------------------------------
# saturation at the edge of int32


@pytest.mark.parametrize("fmt", ["dense", "nested"])
def test_a_saturated_requantization_clamps_instead_of_wrapping(fmt: str, tmp_path: Path) -> None:
    """bias 2^30 with a multiplier just under 1 and a left shift saturates the requantized value at
    INT32_MAX; adding the output zero point must then clamp to 127 (the reference's wide arithmetic),
    not wrap round to -128."""
    from fw import hostlib

    rng = np.random.default_rng(7)
    cout, cin = 8, 4
    weight = rng.integers(-3, 4, (cout, 1, 1, cin)).astype(np.int8)
    masks = np.stack(
        [np.ones(weight.shape, bool), np.repeat(rng.random((cout, 1, 1, cin // 2)) < 0.5, 2, -1)]
    )
    bias = np.where(np.arange(cout) % 2 == 0, 1 << 30, -(1 << 30)).astype(np.int32)
    layer = QLayer(
        "edge", "conv2d", (0,), 1, weight=weight, bias=bias,
        multiplier=np.full(cout, (1 << 31) - 1, np.int32), shift=np.ones(cout, np.int32),
        masks=masks if fmt == "nested" else None,
    )  # fmt: skip
    levels = (0.0, 0.5) if fmt == "nested" else (0.0,)
    qm = QModel("edge", [QTensor("in", (2, 2, cin), 0.05, 3), QTensor("out", (2, 2, cout), 0.05, 100)],
                [layer], 0, 1, levels)  # fmt: skip
    generate(pack(qm, fmt), qm, tmp_path / "model")
    lib = hostlib.HostModel(hostlib.build_host_lib(tmp_path / "model", tmp_path / f"libedge_{fmt}.so"))
    x = rng.integers(-128, 128, (2, 2, cin)).astype(np.int8)
    for level in range(len(levels)):
        want = run_int8(qm, x[None], level=level)[0]
        assert set(np.unique(want)) <= {-128, 127} and 127 in want
        assert np.array_equal(lib.infer(x, level).reshape(-1), want.reshape(-1)), level
