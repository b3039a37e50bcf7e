"""Packing and C generation: determinism, storage figures vs the compiled object, the arena planner,
and that model.c compiles warning-free for the Cortex-M7 and the host."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from test_reference import all_ops_spec, flat_spec, random_inputs, random_model

from harness.codegen import generate, plan_arena, plan_qmodel_arena, storage_from_symbols, tensor_lifetimes
from harness.pack import FORMATS, pack
from harness.qmodel import QLayer, QModel, QTensor
from harness.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "targets" / "firmware" / "core"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-O2"]
M7_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"]


@pytest.fixture(scope="module")
def qm() -> QModel:
    spec = all_ops_spec()
    return quantize(random_model(spec, seed=31), random_inputs(spec, 64), (0.0, 1.0), name="codegen")


def _compile(cc: str, model_dir: Path, out: Path, extra: list[str]) -> Path:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    cmd = [
        cc,
        *extra,
        *CFLAGS,
        "-I",
        str(CORE),
        "-I",
        str(model_dir),
        "-c",
        str(model_dir / "model.c"),
        "-o",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not even a note
    return out


def _symbol_sizes(obj: Path) -> dict[str, int]:
    with obj.open("rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        return {s.name: s["st_size"] for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_OBJECT"}


def test_generation_is_deterministic(qm: QModel, tmp_path: Path) -> None:
    a = generate(pack(qm), qm, tmp_path / "a")
    qm.save(tmp_path / "saved")
    again = QModel.load(tmp_path / "saved")  # a reloaded model is the same model
    b = generate(pack(again), again, tmp_path / "b")
    for fa, fb in zip(a.files, b.files, strict=True):
        assert fa.name == fb.name and fa.read_bytes() == fb.read_bytes()
    assert (a.arena_bytes, a.tensor_offsets, a.symbol_sizes, a.storage) == (
        b.arena_bytes,
        b.tensor_offsets,
        b.symbol_sizes,
        b.storage,
    )
    source = (tmp_path / "a" / "model.c").read_text()
    assert qm.content_hash() in source
    # the model really is in there: every layer name and the weight bytes of the first layer
    for lay in qm.layers:
        assert f'"{lay.name}"' in source
    first = ", ".join(str(v) for v in qm.layers[0].weight.ravel()[:16].tolist())
    assert first in source


def test_storage_figures_equal_compiled_symbol_sizes(qm: QModel, tmp_path: Path) -> None:
    packed = pack(qm)
    result = generate(packed, qm, tmp_path)
    obj = _compile("arm-none-eabi-gcc", tmp_path, tmp_path / "model.o", M7_FLAGS)
    sizes = _symbol_sizes(obj)
    for symbol, nbytes in result.symbol_sizes.items():
        assert sizes[symbol] == nbytes, symbol
    assert storage_from_symbols(sizes, packed) == packed.storage() == result.storage
    assert sizes["nb_arena"] == result.arena_bytes
    # dense figures from first principles: int8 weights, int32 bias/multiplier/shift per channel,
    # int32 multiplier/shift triples for each add
    weighted = [lay for lay in qm.layers if lay.weight is not None]
    assert result.storage["weight_bytes"] == sum(lay.weight.size for lay in weighted)
    adds = [lay for lay in qm.layers if lay.op == "add"]
    assert result.storage["meta_bytes"] == sum(12 * lay.bias.size for lay in weighted) + 24 * len(adds)
    assert result.storage["index_bytes"] == 0
    assert result.storage["model_bytes"] == result.storage["weight_bytes"] + result.storage["meta_bytes"]
    # the tables naming the data are not counted as model data
    assert not any(
        name.startswith(("nb_w_", "nb_b_", "nb_m_", "nb_s_"))
        for name in sizes
        if name not in result.symbol_sizes
    )


def test_model_c_compiles_for_host(qm: QModel, tmp_path: Path) -> None:
    generate(pack(qm), qm, tmp_path)
    obj = _compile("gcc", tmp_path, tmp_path / "model.o", ["-fPIC"])
    sizes = _symbol_sizes(obj)
    assert {"nb_model", "nb_arena", "nb_w_conv1", "nb_m_res"} <= set(sizes)


def test_odd_layer_names_give_valid_unique_symbols(tmp_path: Path) -> None:
    spec = flat_spec()
    model = random_model(spec, seed=2)
    qm = quantize(model, random_inputs(spec, 16), (0.0, 1.0), name='we"ird */ name?')
    qm.layers[0].name = "c-1"
    qm.layers[2].name = "c_1"  # sanitises to the same identifier as "c-1"
    qm.layers[4].name = "fc/1 */"
    result = generate(pack(qm), qm, tmp_path)
    assert len(set(result.symbol_sizes)) == len(result.symbol_sizes)
    assert "nb_w_c_1" in result.symbol_sizes and "nb_w_c_1_2" in result.symbol_sizes
    _compile("gcc", tmp_path, tmp_path / "model.o", [])


def test_pack_rejects_unknown_format_and_multilevel_dense(qm: QModel) -> None:
    assert "dense" in FORMATS
    with pytest.raises(ValueError, match="unknown format 'zip'"):
        pack(qm, "zip")
    spec = flat_spec()
    nested = quantize(
        random_model(spec, seed=3, levels=(0.5, 0.8)), random_inputs(spec, 16), (0.0, 1.0), name="n"
    )
    with pytest.raises(ValueError, match="differ between levels"):
        pack(nested, "dense")


def test_generate_refuses_a_packed_model_from_another_qmodel(qm: QModel, tmp_path: Path) -> None:
    spec = flat_spec()
    other = quantize(random_model(spec, seed=4), random_inputs(spec, 16), (0.0, 1.0), name="other")
    with pytest.raises(ValueError, match="content hashes"):
        generate(pack(other), qm, tmp_path)


# ---------------------------------------------------------------------------------------------
# arena planner


def _random_graph(rng: np.random.Generator) -> QModel:
    """A random DAG: each layer reads one or two earlier tensors (often recent ones, sometimes a
    long skip) and writes a new tensor of random size."""
    n_layers = int(rng.integers(1, 25))
    tensors = [
        QTensor("input", (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9))), 1.0, 0)
    ]
    layers = []
    for i in range(n_layers):
        count = len(tensors)
        recent = max(0, count - 3)
        srcs = [int(rng.integers(recent, count))]
        if rng.random() < 0.35:
            srcs.append(int(rng.integers(0, count)))
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 17)))
        tensors.append(QTensor(f"t{i}", shape, 1.0, 0))
        layers.append(QLayer(f"l{i}", "add" if len(srcs) == 2 else "conv2d", tuple(srcs), count))
    return QModel("g", tensors, layers, input=0, output=len(tensors) - 1)


def _simulate(qm: QModel, offsets: tuple[int, ...], size: int) -> None:
    """Run the graph on an arena of owner tags: every read must find its tensor intact."""
    owner = np.full(size, -1, dtype=np.int64)

    def region(t: int) -> slice:
        assert offsets[t] % 4 == 0 and offsets[t] + qm.tensors[t].size <= size
        return slice(offsets[t], offsets[t] + qm.tensors[t].size)

    owner[region(qm.input)] = qm.input
    for lay in qm.layers:
        for t in lay.inputs:
            assert np.all(owner[region(t)] == t), f"{lay.name} reads tensor {t}, overwritten"
        owner[region(lay.output)] = lay.output
    # the device reruns inference on the loaded input and the host reads the output afterwards
    assert np.all(owner[region(qm.input)] == qm.input)
    assert np.all(owner[region(qm.output)] == qm.output)


def test_arena_planner_never_overlaps_live_tensors() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(300):
        qm = _random_graph(rng)
        plan = plan_qmodel_arena(qm)
        _simulate(qm, plan.offsets, plan.size)
        # never worse than giving every tensor its own bytes, never better than the peak live set
        sizes = [-(-t.size // 4) * 4 for t in qm.tensors]
        assert plan.size <= sum(sizes)
        spans = tensor_lifetimes(qm)
        peak = max(
            sum(t.size for t, s in zip(qm.tensors, spans, strict=True) if s and s[0] <= step <= s[1])
            for step in range(-1, len(qm.layers) + 1)
        )
        assert plan.size >= peak


def test_arena_reuses_memory_on_a_chain() -> None:
    # a plain chain needs two intermediate buffers besides the persistent input; the small output
    # reuses a dead intermediate's bytes
    sizes = [64, 1000, 1000, 1000, 1000, 16]
    spans = [(-1, 5), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    offsets, total = plan_arena(sizes, spans)  # type: ignore[arg-type]
    assert total == 2000 + 64
    assert offsets[1] != offsets[2] and offsets[1] == offsets[3] and offsets[2] == offsets[4]


def test_residual_branch_stays_live_until_its_add(qm: QModel) -> None:
    plan = plan_qmodel_arena(qm)
    _simulate(qm, plan.offsets, plan.size)
    names = [t.name for t in qm.tensors]
    conv2, res = names.index("conv2"), names.index("res")
    assert plan.lifetimes[conv2][1] == next(i for i, lay in enumerate(qm.layers) if lay.output == res)
