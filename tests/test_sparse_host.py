"""The sparse kernels (csr, nested; fast and compact index) compiled for the host, bit for bit against
the NumPy integer reference on hundreds of random layers.

Each random model fans out: up to 16 conv2d / fc layers all read one input tensor (random shape,
odd sizes, random zero point), with random kernel size (1, 3), stride (1, 2), padding, channel
counts (odd too), mask block (1, 2, 4), per-level densities (empty and full included), levels (1-4),
activation clamps, extreme biases and requantization shifts on both sides of the kernels' fast
path. Every layer's output at every level is read back through nb_host_infer_until and compared
with `reference.run_int8`. The firmware's core sources are compiled once per session; each model
then only compiles model.c and links.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fw.hostlib import CFLAGS, CORE, HOST_BOARD, host_sources

from harness import codegen, pack, reference
from harness.qmodel import QLayer, QModel, QTensor
from harness.requant import quantize_multiplier

GROUPS = 12  # random models; each is packed 3 ways (nested fast, nested compact, csr)
NEVER_DENSE = {"conv": 9.0, "conv1x1": 9.0, "fc": 9.0}


# --- building ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def core_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The firmware core + host board compiled once (the same sources and flags as fw.hostlib)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("host gcc is not installed")
    out = tmp_path_factory.mktemp("sparse-core")
    flags = [f for f in CFLAGS if f != "-shared"]
    objs = []
    for src in host_sources(out):  # `out` holds no .c: the core and board sources only
        obj = out / (src.parent.name + "_" + src.stem + ".o")
        cmd = [gcc, *flags, f"-I{CORE}", f"-I{HOST_BOARD}", f"-I{out}", "-c", str(src), "-o", str(obj)]
        # the core includes model.h only from model.c, so any folder serves as the model include dir
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        objs.append(obj)
    return objs


class Lib:
    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.nb_host_infer_until.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_uint32,
        ]
        self.lib.nb_host_infer_until.restype = ctypes.c_int

    def layer_output(self, x: np.ndarray, level: int, n_layers: int, size: int) -> np.ndarray:
        data = np.ascontiguousarray(x, dtype=np.int8)
        out = np.zeros(size, np.int8)
        got = self.lib.nb_host_infer_until(data.ctypes.data, level, n_layers, out.ctypes.data, size)
        assert got == size, f"nb_host_infer_until returned {got}"
        return out


def build(qm: QModel, packed: pack.PackedModel, folder: Path, objs: list[Path], generate: bool = True) -> Lib:
    if generate:
        codegen.generate(packed, qm, folder)
    flags = [f for f in CFLAGS if f != "-shared"]
    model_o = folder / "model.o"
    cmd = ["gcc", *flags, f"-I{CORE}", f"-I{HOST_BOARD}", f"-I{folder}", "-c", str(folder / "model.c")]
    proc = subprocess.run([*cmd, "-o", str(model_o)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lib = folder / "lib.so"
    proc = subprocess.run(
        ["gcc", "-shared", "-o", str(lib), *map(str, objs), str(model_o)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return Lib(lib)


# --- random models -------------------------------------------------------------------------------


def nested_masks(
    shape: tuple[int, ...], densities: list[float], block: int, rng: np.random.Generator
) -> np.ndarray:
    """Nested masks [levels, *shape], constant over `block` consecutive inputs along the last axis,
    keeping about densities[k] of the blocks at level k (densities decreasing)."""
    n_blocks = int(np.prod(shape)) // block
    rank = rng.permutation(n_blocks)
    masks = [np.repeat(rank < round(n_blocks * d), block).reshape(shape) for d in densities]
    return np.stack(masks)


def requant(cout: int, depth: int, rng: np.random.Generator, wild: bool) -> tuple[np.ndarray, np.ndarray]:
    """Realistic multipliers; `wild` mixes in scales > 1 (left shifts), tiny ones (shifts beyond the
    fast path) and unnormalised multipliers."""
    scales = rng.uniform(0.3, 1.0, cout) / (np.sqrt(depth) * 40)
    pairs = [quantize_multiplier(float(s)) for s in scales]
    mult = np.array([m for m, _ in pairs], np.int64)
    shift = np.array([s for _, s in pairs], np.int64)
    if wild:
        for c in range(cout):
            kind = rng.integers(0, 5)
            if kind == 0:
                mult[c], shift[c] = quantize_multiplier(float(rng.uniform(1.0, 6.0)))
            elif kind == 1:
                mult[c], shift[c] = quantize_multiplier(float(rng.uniform(1e-9, 1e-7)))
            elif kind == 2:
                mult[c] = int(rng.integers(1, 2**30))  # below the normalised range
            elif kind == 3:
                mult[c] = 0
    return mult.astype(np.int32), shift.astype(np.int32)


def random_group(rng: np.random.Generator, seed: int) -> QModel:
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    cin = int(rng.integers(1, 14))
    n_levels = int(rng.integers(1, 5))
    levels = tuple(sorted(rng.choice(np.arange(5, 96), n_levels, replace=False) / 100.0))
    tensors = [QTensor("input", (h, w, cin), 0.05, int(rng.integers(-128, 128)))]
    layers: list[QLayer] = []
    for i in range(int(rng.integers(6, 17))):
        fc = rng.random() < 0.25
        if fc:
            k, stride, pad = 1, 1, 0
            cout = int(rng.integers(1, 12))
            shape: tuple[int, ...] = (cout, h * w * cin)
            out_hw = (1, 1)
            depth = h * w * cin
        else:
            k = int(rng.choice([1, 3])) if min(h, w) >= 3 else 1
            stride = int(rng.choice([1, 2]))
            pad = int(rng.integers(0, k // 2 + 1))
            cout = int(rng.integers(1, 10))
            shape = (cout, k, k, cin)
            out_hw = ((h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
            depth = k * k * cin
        weight = rng.integers(-127, 128, shape, dtype=np.int8)
        last = shape[-1]
        block = int(rng.choice([b for b in (1, 2, 4) if last % b == 0]))
        dens = sorted(rng.uniform(0.0, 1.0, n_levels), reverse=True)
        if rng.random() < 0.2:
            dens[-1] = 0.0  # everything pruned at the sparsest level
        if rng.random() < 0.2:
            dens[0] = 1.0  # nothing pruned at the densest level
        masks = None if rng.random() < 0.1 else nested_masks(shape, dens, block, rng)
        wild = rng.random() < 0.3
        mult, shift = requant(cout, depth, rng, wild)
        bias = rng.integers(-3000, 3000, cout).astype(np.int32)
        if wild:  # accumulators near and beyond 2^30 and int32 wrap-around
            bias[rng.random(cout) < 0.5] = rng.integers(-(2**31), 2**31 - 1, dtype=np.int64)
        zp_out = int(rng.integers(-128, 128))
        act = rng.integers(0, 3)
        clamps = {0: (-128, 127), 1: (zp_out, 127), 2: (zp_out, min(zp_out + 40, 127))}  # none, ReLU, ReLU6
        lo, hi = clamps[int(act)]
        tensors.append(QTensor(f"t{i}", (*out_hw, cout), 0.05, zp_out))
        layers.append(
            QLayer(
                name=f"l{i}",
                op="fc" if fc else "conv2d",
                inputs=(0,),
                output=len(tensors) - 1,
                kernel=(k, k),
                stride=(stride, stride),
                padding=(pad, pad),
                weight=weight,
                bias=bias,
                multiplier=mult,
                shift=shift,
                act_min=lo,
                act_max=hi,
                masks=masks,
            )
        )
    return QModel(f"group{seed}", tensors, layers, 0, len(tensors) - 1, levels)


def single_level(qm: QModel, level: int) -> QModel:
    layers = [
        QLayer(**{**lay.__dict__, "masks": None if lay.masks is None else lay.masks[level : level + 1]})
        for lay in qm.layers
    ]
    return QModel(qm.name, qm.tensors, layers, qm.input, qm.output, (qm.levels[level],))


def check(lib: Lib, qm: QModel, xs: np.ndarray, what: str) -> int:
    """Every layer at every level equals the reference; returns the number of (layer, level) cases."""
    cases = 0
    for level in range(len(qm.levels)):
        for x in xs:
            _, tensors = reference.run_int8(qm, x[None], level=level, record=True)
            for i, lay in enumerate(qm.layers):
                want = tensors[lay.output]
                assert want is not None
                got = lib.layer_output(x, level, i + 1, want.size)
                if not np.array_equal(got, want.ravel()):
                    bad = np.flatnonzero(got != want.ravel())
                    pytest.fail(
                        f"{what}: layer {i} ({lay.op} k{lay.kernel[0]} s{lay.stride[0]} p{lay.padding[0]} "
                        f"in {qm.tensors[0].shape} out {qm.tensors[lay.output].shape}) level {level}: "
                        f"{bad.size}/{want.size} bytes differ, e.g. device {got[bad[:4]].tolist()} "
                        f"reference {want.ravel()[bad[:4]].tolist()}"
                    )
            cases += len(qm.layers)
    return cases


def make_case(seed: int) -> tuple[QModel, np.ndarray, list[tuple[str, QModel, pack.PackedModel]]]:
    """A random model, two inputs, and its three packings."""
    rng = np.random.default_rng(1000 + seed)
    qm = random_group(rng, seed)
    xs = rng.integers(-128, 128, (2, *qm.tensors[0].shape), dtype=np.int8)
    xs[1, ...] = rng.choice([-128, 127])  # a constant extreme input
    budget = int(rng.integers(40, 400)) if rng.random() < 0.6 else 1 << 20  # small: several bands
    # dense copies for some levels (random crossovers), sparse only elsewhere
    crossover = {k: float(rng.uniform(0.3, 1.2)) for k in ("conv", "conv1x1", "fc")}
    variants = [
        ("nested fast", qm, pack.pack(qm, "nested", scratch_budget=budget, crossover=crossover)),
        ("nested compact", qm, pack.pack(qm, "nested", index="compact", crossover=NEVER_DENSE)),
    ]
    one = single_level(qm, int(rng.integers(0, len(qm.levels))))
    variants.append(("csr", one, pack.pack(one, "csr", scratch_budget=budget, crossover=crossover)))
    return qm, xs, variants


@pytest.mark.parametrize("seed", range(GROUPS))
def test_random_layers_bit_exact(seed: int, core_objects: list[Path], tmp_path: Path) -> None:
    _, xs, variants = make_case(seed)
    cases = 0
    for i, (what, model, packed) in enumerate(variants):
        lib = build(model, packed, tmp_path / f"v{i}", core_objects)
        cases += check(lib, model, xs, what)
    assert cases > 0


def test_random_cases_reach_every_path() -> None:
    """The random models above really reach the paths they are meant to: the sparse kernel and
    dense copies, several bands, odd block counts, empty prefixes, stored-dense fallbacks."""
    seen = {"sparse": 0, "dense copy": 0, "bands": 0, "empty level": 0, "odd blocks": 0, "dense": 0}
    for seed in range(GROUPS):
        _, _, variants = make_case(seed)
        for _, model, packed in variants:
            for lay in packed.layers:
                sp = lay.sparse
                if sp is None:
                    seen["dense"] += model.layers[lay.index].masks is not None
                    continue
                out_h = model.tensors[model.layers[lay.index].output].shape[0]
                seen["sparse"] += 1
                seen["dense copy"] += sp.n_dense > 0
                seen["bands"] += sp.band_rows < out_h
                seen["empty level"] += min(sp.blocks) == 0
                seen["odd blocks"] += any(b % 2 for b in sp.blocks)
    assert all(v > 0 for v in seen.values()), seen


def fc_model(cin: int, cout: int, levels: tuple[float, ...], seed: int = 0, block: int = 2) -> QModel:
    rng = np.random.default_rng(seed)
    weight = rng.integers(-127, 128, (cout, cin), dtype=np.int8)
    mult, shift = requant(cout, cin, rng, False)
    dens = [1.0 - s for s in levels]
    layer = QLayer(
        name="fc",
        op="fc",
        inputs=(0,),
        output=1,
        weight=weight,
        bias=rng.integers(-2000, 2000, cout).astype(np.int32),
        multiplier=mult,
        shift=shift,
        masks=nested_masks(weight.shape, dens, block, rng),
    )
    tensors = [QTensor("in", (1, 1, cin), 0.05, 3), QTensor("out", (1, 1, cout), 0.05, -2)]
    return QModel("fc", tensors, [layer], 0, 1, levels)


def filler_count(qm: QModel) -> int:
    """Filler blocks of the compact encoding: compact blocks minus fast blocks at level 0."""
    fast = pack.pack(qm, "nested", crossover=NEVER_DENSE).layers[0].sparse
    compact = pack.pack(qm, "nested", index="compact", crossover=NEVER_DENSE).layers[0].sparse
    assert fast is not None and compact is not None
    return compact.blocks[0] - fast.blocks[0]


def test_compact_fillers_bit_exact(core_objects: list[Path], tmp_path: Path) -> None:
    """Gaps over 255 positions (a 1600-input fc at 99 % sparsity) are bridged by zero fillers."""
    qm = fc_model(1600, 5, levels=(0.9, 0.99), seed=3)
    assert filler_count(qm) > 0
    lib = build(qm, pack.pack(qm, "nested", index="compact", crossover=NEVER_DENSE), tmp_path, core_objects)
    xs = np.random.default_rng(4).integers(-128, 128, (3, 1, 1, 1600), dtype=np.int8)
    assert check(lib, qm, xs, "compact with fillers") > 0


def test_requantization_edges_bit_exact(core_objects: list[Path], tmp_path: Path) -> None:
    """Accumulators at the edges of the kernels' fast requantization (|acc| around 2^30 and 2^31,
    shifts -1 / -20 / -21, multipliers 0, 2^30, 2^31 - 1, below 2^30, left shifts): an fc layer
    whose kept weights are zero, so every output is requantize(bias), against the reference."""
    rng = np.random.default_rng(77)
    edges = [0, 1, -1, 2**30 - 1, 2**30, 2**30 + 1, -(2**30) + 1, -(2**30), -(2**30) - 1]
    edges += [2**31 - 1, -(2**31), 2**31 - 2**20, -(2**31) + 2**20, 12345, -12345]
    mults = [0, 2**30, 2**31 - 1, 1518500250, 2**29, 3]
    shifts = [-1, -2, -7, -20, -21, -31, 0, 1, 5]
    combos = [(b, m, s) for b in edges for m in mults for s in shifts]
    extra = [
        (int(rng.integers(-(2**31), 2**31)), int(rng.choice(mults)), int(rng.integers(-31, 8)))
        for _ in range(200)
    ]
    bias, mult, shift = (np.array(col, np.int64) for col in zip(*(combos + extra), strict=True))
    cout = bias.size
    layer = QLayer(
        name="fc",
        op="fc",
        inputs=(0,),
        output=1,
        weight=np.zeros((cout, 2), np.int8),
        bias=bias.astype(np.int32),
        multiplier=mult.astype(np.int32),
        shift=shift.astype(np.int32),
        masks=np.ones((1, cout, 2), bool),
    )
    for act_min, act_max in ((-128, 127), (-5, 127), (-20, 30)):
        layer.act_min, layer.act_max = act_min, act_max
        tensors = [QTensor("in", (1, 1, 2), 0.05, 3), QTensor("out", (1, 1, cout), 0.05, -9)]
        qm = QModel("edges", tensors, [layer], 0, 1, (0.5,))
        lib = build(qm, pack.pack(qm, "csr", crossover=NEVER_DENSE), tmp_path / f"a{act_min}", core_objects)
        xs = rng.integers(-128, 128, (2, 1, 1, 2), dtype=np.int8)
        assert check(lib, qm, xs, f"requantization edges, clamp [{act_min}, {act_max}]") == 2


@pytest.mark.parametrize(
    ("edit", "status"),
    [
        (("&nb_sparse_ops", "NULL"), -4),  # sparse layers but no sparse kernels linked: NB_ERR_FORMAT
        ((".band_rows = 8,", ".band_rows = 9,"), -5),  # more rows than the output: NB_ERR_MODEL
        ((".rows = 10,", ".rows = 9,"), -5),  # scratch rows disagree with the band
        ((".n_levels = 3, .index_kind", ".n_levels = 2, .index_kind"), -5),  # fewer levels than the model
        (("SCRATCH_OFFSET", "0u"), -5),  # scratch over the input tensor
        ((".scratch_bytes = ", ".scratch_bytes = 100000 + "), -5),  # scratch past the arena's end
    ],
    ids=["no-ops", "band", "rows", "levels", "overlap", "past-arena"],
)
def test_inconsistent_sparse_tables_are_refused(
    edit: tuple[str, str], status: int, core_objects: list[Path], tmp_path: Path
) -> None:
    """The runtime checks every nb_sparse_t before running: a generated model edited to be wrong
    gets an error code from nb_run, never a run that writes where it should not."""
    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, (4, 3, 3, 6), dtype=np.int8)
    mult, shift = requant(4, 54, rng, False)
    layer = QLayer(
        name="c",
        op="conv2d",
        inputs=(0,),
        output=1,
        kernel=(3, 3),
        padding=(1, 1),
        weight=weight,
        bias=np.zeros(4, np.int32),
        multiplier=mult,
        shift=shift,
        masks=nested_masks(weight.shape, [0.6, 0.4, 0.2], 2, rng),
    )
    tensors = [QTensor("in", (8, 8, 6), 0.05, 1), QTensor("out", (8, 8, 4), 0.05, 0)]
    qm = QModel("bad", tensors, [layer], 0, 1, (0.4, 0.6, 0.8))
    packed = pack.pack(qm, "nested", crossover=NEVER_DENSE)
    folder = tmp_path / "model"
    result = codegen.generate(packed, qm, folder)
    source = (folder / "model.c").read_text()
    old, new = edit
    if old == "SCRATCH_OFFSET":
        old = next(line.strip().split(",")[0] for line in source.splitlines() if ".scratch_offset" in line)
        new = f".scratch_offset = {result.tensor_offsets[0]}u"
    assert source.count(old) == 1, old
    (folder / "model.c").write_text(source.replace(old, new))
    lib = build(qm, packed, folder, core_objects, generate=False)
    x = np.zeros((8, 8, 6), np.int8)
    got = lib.lib.nb_host_infer_until(x.ctypes.data, 0, 1, np.zeros(256, np.int8).ctypes.data, 256)
    assert got == status
