"""The csr and nested formats as data: decoded back from the emitted arrays, they hold exactly each
level's weights, level k is a prefix of every channel, storage figures are the emitted bytes, and the
nested model stores the levels for about the price of the densest one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from harness import codegen, pack
from harness.catalog import BUILDABLE_FORMATS
from harness.codegen import generate, plan_qmodel_arena, storage_from_symbols
from harness.errors import InputError
from harness.fit import check_fit, fit
from harness.qmodel import QLayer, QModel, QTensor
from harness.requant import quantize_multiplier
from harness.targets import load_targets

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "targets" / "firmware" / "core"
NEVER_DENSE = {"conv": 9.0, "conv1x1": 9.0, "fc": 9.0}


def masks_for(shape: tuple[int, ...], densities: tuple[float, ...], block: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_blocks = int(np.prod(shape)) // block
    rank = rng.permutation(n_blocks)
    return np.stack([np.repeat(rank < round(n_blocks * d), block).reshape(shape) for d in densities])


def conv_model(
    h: int = 8,
    w: int = 8,
    cin: int = 64,
    cout: int = 64,
    k: int = 3,
    stride: int = 1,
    levels: tuple[float, ...] = (0.7, 0.8, 0.9),
    block: int = 2,
    seed: int = 0,
    op: str = "conv2d",
) -> QModel:
    rng = np.random.default_rng(seed)
    if op == "fc":
        shape: tuple[int, ...] = (cout, h * w * cin)
        out_shape = (1, 1, cout)
        k, stride = 1, 1
    else:
        shape = (cout, k, k, cin)
        out_shape = ((h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1, cout)
    weight = rng.integers(-127, 128, shape, dtype=np.int8)
    weight[weight == 0] = 1  # every kept weight nonzero: blocks follow the masks exactly
    pairs = [quantize_multiplier(float(s)) for s in rng.uniform(1e-3, 1e-2, cout)]
    layer = QLayer(
        name="layer",
        op=op,  # type: ignore[arg-type]
        inputs=(0,),
        output=1,
        kernel=(k, k),
        stride=(stride, stride),
        padding=(k // 2, k // 2),
        weight=weight,
        bias=rng.integers(-1000, 1000, cout).astype(np.int32),
        multiplier=np.array([m for m, _ in pairs], np.int32),
        shift=np.array([s for _, s in pairs], np.int32),
        masks=masks_for(shape, tuple(1.0 - s for s in levels), block, seed + 1),
    )
    tensors = [QTensor("in", (h, w, cin), 0.05, -7), QTensor("out", out_shape, 0.05, 3)]
    return QModel("m", tensors, [layer], 0, 1, levels)


def single_level(qm: QModel, level: int) -> QModel:
    layers = [
        QLayer(**{**lay.__dict__, "masks": None if lay.masks is None else lay.masks[level : level + 1]})
        for lay in qm.layers
    ]
    return QModel(qm.name, qm.tensors, layers, qm.input, qm.output, (qm.levels[level],))


# --- an independent decoder of the emitted arrays -------------------------------------------------


def positions(qm: QModel, layer: pack.PackedLayer) -> dict[int, tuple[int, int, int]]:
    """Scratch byte offset → (pair, ky, kx), from the geometry stored in the table."""
    sp = layer.sparse
    assert sp is not None
    q = qm.layers[layer.index]
    kh, kw = q.kernel if q.op == "conv2d" else (1, 1)
    sw = q.stride[1] if q.op == "conv2d" else 1
    plane = sp.rows * sw * sp.wq
    out = {}
    for pair in range(sp.cpairs):
        for ky in range(kh):
            for kx in range(kw):
                word = pair * plane + ky * sw * sp.wq + (kx % sw) * sp.wq + kx // sw
                out[4 * word] = (pair, ky, kx)
    return out


def decode(qm: QModel, layer: pack.PackedLayer, level: int) -> tuple[np.ndarray, list[list[int]]]:
    """Dense OHWI weights of `level` rebuilt from the arrays, and each channel's block offsets in
    stored order (the first end[level][o] blocks of channel o)."""
    sp = layer.sparse
    assert sp is not None
    q = qm.layers[layer.index]
    assert q.weight is not None
    w4 = q.weight[:, None, None, :] if q.op == "fc" else q.weight
    cout, kh, kw, cin = w4.shape
    dense = np.zeros((cout, kh, kw, 2 * sp.cpairs), np.int64)
    ends = layer.arrays["end"].data.reshape(sp.n_levels, cout).astype(np.int64)
    values = layer.arrays["values"].data.view(np.int8)
    by_offset = positions(qm, layer)
    lut = layer.arrays["lut"].data if "lut" in layer.arrays else None
    order: list[list[int]] = []
    word = 0  # value/index word where the channel starts
    byte = 0  # delta byte where the channel starts
    for o in range(cout):
        n_all, n = int(ends[0, o]), int(ends[level, o])
        offsets: list[int] = []
        if sp.index_kind == "fast":
            offsets = layer.arrays["index"].data[2 * word : 2 * word + n].astype(int).tolist()
        else:
            assert lut is not None
            deltas = layer.arrays["delta"].data[byte : byte + n_all].astype(int)
            bounds = [*ends[:, o].tolist(), 0]
            for j in range(sp.n_levels - 1, level - 1, -1):  # segments, sparsest first
                pos = 0
                for b in range(bounds[j + 1], bounds[j]):
                    pos += int(deltas[b])
                    offsets.append(int(lut[pos]))
        for b, off in enumerate(offsets):
            wd = values[4 * (word + b // 2) : 4 * (word + b // 2) + 4]
            lo, hi = int(wd[b % 2]), int(wd[2 + b % 2])
            pair, ky, kx = by_offset[off]
            dense[o, ky, kx, 2 * pair] += lo
            dense[o, ky, kx, 2 * pair + 1] += hi
        order.append(offsets)
        word += (n_all + 1) // 2
        byte += n_all
    dense = dense[..., :cin]
    if q.op == "fc":
        dense = dense[:, 0, 0, :]
    return dense, order


# --- format properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["fast", "compact"])
@pytest.mark.parametrize(
    "shape",
    [
        {"cin": 64, "cout": 16, "k": 3},
        {"cin": 7, "cout": 5, "k": 3, "stride": 2, "block": 1, "h": 9, "w": 7},
        {"cin": 32, "cout": 8, "k": 1, "block": 4},
        {"cin": 33, "cout": 6, "op": "fc", "h": 2, "w": 3, "block": 1},
    ],
    ids=["3x3", "3x3-s2-odd-block1", "1x1-block4", "fc-odd"],
)
def test_nested_decodes_to_every_level_and_levels_are_prefixes(index: str, shape: dict) -> None:
    qm = conv_model(**shape, levels=(0.5, 0.7, 0.9))
    layer = pack.pack(qm, "nested", index=index, crossover=NEVER_DENSE).layers[0]
    sp = layer.sparse
    assert sp is not None and layer.format == "nested" and sp.n_levels == 3
    q = qm.layers[0]
    assert q.masks is not None and q.weight is not None
    orders = []
    for k in range(3):
        dense, order = decode(qm, layer, k)
        assert np.array_equal(dense, q.weight_at(k)), f"level {k}"
        orders.append(order)
    for k in range(2):  # level k+1's blocks are exactly the start of level k's
        for o in range(q.weight.shape[0]):
            assert orders[k][o][: len(orders[k + 1][o])] == orders[k + 1][o]
    # the blocks level k adds are those of its new weights (fast: one per pair position)
    if index == "fast":
        ends = layer.arrays["end"].data.reshape(3, -1).astype(int)
        added = q.masks[0] & ~q.masks[1]
        w4 = added[:, None, None, :] if q.op == "fc" else added
        pad = (-w4.shape[-1]) % 2
        pairs = np.pad(w4, [(0, 0)] * 3 + [(0, pad)]).reshape(*w4.shape[:3], -1, 2).any(-1)
        assert np.array_equal(ends[0] - ends[1], pairs.reshape(pairs.shape[0], -1).sum(1))


def test_csr_is_one_level_in_the_same_layout() -> None:
    qm = conv_model(cin=16, cout=8, levels=(0.6, 0.85))
    for k in range(2):
        one = single_level(qm, k)
        layer = pack.pack(one, "csr", crossover=NEVER_DENSE).layers[0]
        assert layer.format == "csr" and layer.sparse is not None and layer.sparse.n_levels == 1
        dense, _ = decode(one, layer, 0)
        assert np.array_equal(dense, qm.layers[0].weight_at(k))
    with pytest.raises(ValueError, match="csr format packs one level"):
        pack.pack(qm, "csr")


def test_one_bias_row_serves_every_level() -> None:
    """The zero point is subtracted when the kernel widens its input, so nothing is folded into
    the bias: one row, the layer's own, whatever the level count."""
    qm = conv_model(cin=16, cout=8)
    layer = pack.pack(qm, "nested", crossover=NEVER_DENSE).layers[0]
    assert layer.n_bias_levels == 1
    assert np.array_equal(layer.arrays["bias"].data, qm.layers[0].bias)


def test_storage_figures_are_the_emitted_bytes(tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    qm = conv_model(cin=16, cout=12, levels=(0.7, 0.8, 0.9))
    for fmt, index in (("nested", "fast"), ("nested", "compact")):
        crossover = {"conv": 0.25, "conv1x1": 1.0, "fc": 1.0}
        packed = pack.pack(qm, fmt, index=index, crossover=crossover, dense_copies=True)
        result = generate(packed, qm, tmp_path / index)
        obj = tmp_path / f"{index}.o"
        cmd = ["arm-none-eabi-gcc", "-mcpu=cortex-m7", "-mthumb", "-O2", "-std=c11", "-Wall", "-Wextra"]
        cmd += ["-Werror", f"-I{CORE}", f"-I{tmp_path / index}", "-c", str(tmp_path / index / "model.c")]
        done = subprocess.run([*cmd, "-o", str(obj)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with obj.open("rb") as fh:
            elf = ELFFile(fh)
            symtab = elf.get_section_by_name(".symtab")
            sizes = {
                s.name: s["st_size"] for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_OBJECT"
            }
            model_section = elf.get_section_by_name(".rodata.nb_model")
            assert model_section is not None  # the linker scripts keep this section in flash
            emitted = sum(a.nbytes for a in packed.arrays())  # plus at most 3 B of alignment each
            assert emitted <= model_section.data_size <= emitted + 3 * len(packed.arrays())
        assert storage_from_symbols(sizes, packed) == packed.storage() == result.storage
        for symbol, nbytes in result.symbol_sizes.items():
            assert sizes[symbol] == nbytes, symbol
        lay = packed.layers[0]
        assert lay.sparse is not None
        # first principles: the weight role is the value words plus the dense copies
        words = sum((int(n) + 1) // 2 for n in lay.arrays["end"].data.reshape(3, -1)[0])
        copies = lay.sparse.n_dense * qm.layers[0].weight.size  # type: ignore[union-attr]
        assert result.storage["weight_bytes"] == 4 * words + copies
        assert lay.sparse.n_dense == 1  # level 0 (density ~0.3) is above the 0.25 crossover


def test_compact_index_is_smaller_than_fast() -> None:
    qm = conv_model(cin=64, cout=64, levels=(0.7, 0.8, 0.9))
    fast = pack.pack(qm, "nested", crossover=NEVER_DENSE)
    compact = pack.pack(qm, "nested", index="compact", crossover=NEVER_DENSE)
    blocks = fast.layers[0].sparse.blocks[0]  # type: ignore[union-attr]
    words = sum((int(n) + 1) // 2 for n in fast.layers[0].arrays["end"].data.reshape(3, -1)[0])
    assert fast.index_bytes == 4 * words  # two bytes per block, whole words per channel
    lut = compact.layers[0].arrays["lut"].nbytes
    assert compact.index_bytes == compact.layers[0].sparse.blocks[0] + lut  # type: ignore[union-attr]
    assert compact.layers[0].sparse.blocks[0] == blocks  # no gap over 255 here: no fillers  # type: ignore[union-attr]
    assert compact.index_bytes < 0.6 * fast.index_bytes
    assert compact.weight_bytes == fast.weight_bytes


@pytest.mark.parametrize("index", ["fast", "compact"])
def test_nested_storage_against_the_standalone_family(index: str) -> None:
    """70/80/90 nested vs three csr models: about half their sum, about the densest one."""
    for shape in ({"cin": 64, "cout": 64, "k": 3}, {"cin": 32, "cout": 32, "k": 3, "h": 16, "w": 16}):
        qm = conv_model(**shape, levels=(0.7, 0.8, 0.9))  # type: ignore[arg-type]
        nested = pack.pack(qm, "nested", index=index, crossover=NEVER_DENSE).model_bytes
        family = [
            pack.pack(single_level(qm, k), "csr", index=index, crossover=NEVER_DENSE).model_bytes
            for k in range(3)
        ]
        assert nested <= 0.55 * sum(family)
        assert nested <= 1.05 * family[0]
        assert nested >= family[0]  # the extra levels are not free: their end pointers


def test_dense_copies_follow_the_crossover() -> None:
    qm = conv_model(cin=16, cout=8, levels=(0.2, 0.5, 0.9))  # densities 0.8, 0.5, 0.1
    q = qm.layers[0]
    layer = pack.pack(qm, "nested", crossover={"conv": 0.45, "conv1x1": 1, "fc": 1}).layers[0]
    sp = layer.sparse
    assert sp is not None
    assert [sp.density(k) > 0.45 for k in range(3)] == [True, True, False]
    assert sp.kernel == (1, 2, 0) and sp.n_dense == 2
    copies = layer.arrays["dense"].data.reshape(2, *q.weight.shape)  # type: ignore[union-attr]
    assert np.array_equal(copies[0], q.weight_at(0)) and np.array_equal(copies[1], q.weight_at(1))
    # identical level weights share one copy
    same = conv_model(cin=16, cout=8, levels=(0.2, 0.5))
    assert same.layers[0].masks is not None
    same.layers[0].masks[1] = same.layers[0].masks[0]
    shared = pack.pack(same, "nested", crossover={"conv": 0.1, "conv1x1": 1, "fc": 1}).layers[0].sparse
    assert shared is not None and shared.kernel == (1, 1) and shared.n_dense == 1
    # no copies when asked, nor by default with the compact index (chosen to save memory)
    xo = {"conv": 0.45, "conv1x1": 1.0, "fc": 1.0}
    assert pack.pack(qm, "nested", crossover=xo, dense_copies=False).layers[0].sparse.n_dense == 0  # type: ignore[union-attr]
    assert pack.pack(qm, "nested", crossover=xo, index="compact").layers[0].sparse.n_dense == 0  # type: ignore[union-attr]
    assert pack.pack(single_level(qm, 0), "csr", crossover=xo, index="compact").layers[0].format == "csr"
    # and a fast-index csr layer above the crossover is simply dense
    one = pack.pack(single_level(qm, 0), "csr", crossover={"conv": 0.45, "conv1x1": 1, "fc": 1}).layers[0]
    assert one.format == "dense" and one.sparse is None and "crossover" in one.note
    assert np.array_equal(one.arrays["weights"].data, q.weight_at(0).ravel())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("index", "table", "counts"),
    [("fast", "crossover", "sparse"), ("compact", "crossover_compact", "sparse_compact")],
)
def test_crossover_file_is_measured_and_complete(index: str, table: str, counts: str) -> None:
    """Each kind's crossover is where its measured sparse / dense curves cross (the most
    conservative layer of the kind), and the packer reads exactly that table."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from crossover import crossing

    doc = json.loads(pack.CROSSOVER_FILE.read_text())
    assert set(doc[table]) == {"conv", "conv1x1", "fc"}
    assert doc["cycle_source"] == "qemu-icount"
    per_kind: dict[str, list[float]] = {}
    for sweep in doc["sweeps"].values():
        points = sorted((float(d), n / sweep["dense"]) for d, n in sweep[counts].items())
        per_kind.setdefault(sweep["kind"], []).append(crossing(points))
    assert {k: min(v) for k, v in per_kind.items()} == doc[table]
    assert pack.load_crossover(index=index) == {k: float(v) for k, v in doc[table].items()}  # type: ignore[arg-type]


def test_unpackable_models_are_refused() -> None:
    qm = conv_model(cin=8, cout=4, levels=(0.5, 0.8))
    assert qm.layers[0].masks is not None
    broken = qm.layers[0].masks.copy()
    broken[1, 0, 0, 0, 0] = True
    broken[0, 0, 0, 0, 0] = False
    bad = QModel(qm.name, qm.tensors, [QLayer(**{**qm.layers[0].__dict__, "masks": broken})], 0, 1, qm.levels)
    with pytest.raises(ValueError, match="not nested"):
        pack.pack(bad, "nested")
    with pytest.raises(ValueError, match="index encoding"):
        pack.pack(qm, "nested", index="zip")  # type: ignore[arg-type]
    dw = QLayer(**{**qm.layers[0].__dict__, "op": "dwconv2d", "weight": np.ones((3, 3, 8), np.int8)})
    dw.masks = np.ones((2, 3, 3, 8), bool)
    with pytest.raises(ValueError, match="depthwise layers stay dense"):
        pack.pack(QModel("d", qm.tensors, [dw], 0, 1, qm.levels), "nested")
    with pytest.raises(ValueError, match="crossover table has no entry"):
        pack.pack(qm, "nested", crossover={"fc": 1.0})
    # one output row's scratch over the budget: a single level falls back to dense, several cannot
    with pytest.raises(ValueError, match="scratch for one output row exceeds 100 bytes"):
        pack.pack(qm, "nested", scratch_budget=100, crossover=NEVER_DENSE)
    one = pack.pack(single_level(qm, 1), "csr", scratch_budget=100, crossover=NEVER_DENSE).layers[0]
    assert one.format == "dense" and "budget" in one.note
    assert np.array_equal(one.arrays["weights"].data, qm.layers[0].weight_at(1).ravel())  # type: ignore[union-attr]


def test_layers_without_masks_stay_dense_and_scratch_is_planned_apart() -> None:
    qm = conv_model(cin=16, cout=8, levels=(0.5, 0.8))
    dense_layer = QLayer(**{**qm.layers[0].__dict__, "name": "d", "inputs": (1,), "output": 2, "masks": None})
    dense_layer.weight = np.ones((8, 3, 3, 8), np.int8)
    tensors = [*qm.tensors, QTensor("o2", (8, 8, 8), 0.05, 0)]
    two = QModel("two", tensors, [qm.layers[0], dense_layer], 0, 2, qm.levels)
    packed = pack.pack(two, "nested", crossover=NEVER_DENSE)
    assert [lay.format for lay in packed.layers] == ["nested", "dense"]
    scratch = {0: packed.layers[0].scratch_bytes}
    plan = plan_qmodel_arena(two, scratch)
    lo, hi = plan.scratch_offsets[0], plan.scratch_offsets[0] + scratch[0]
    assert hi <= plan.size
    for t in (0, 1):  # the layer's input and output never share bytes with its scratch
        a, b = plan.offsets[t], plan.offsets[t] + two.tensors[t].size
        assert b <= lo or hi <= a


def test_sparse_formats_are_buildable() -> None:
    assert {"dense", "csr", "nested"} <= set(BUILDABLE_FORMATS) <= set(pack.FORMATS)


# --- fit -------------------------------------------------------------------------------------------


def test_a_model_too_big_for_the_target_fails_with_its_sizes(tmp_path: Path) -> None:
    f767 = load_targets(ROOT)["nucleo_f767zi"]
    small = conv_model(cin=16, cout=8)
    result = generate(pack.pack(small, "nested", crossover=NEVER_DENSE), small, tmp_path / "small")
    check_fit(result, f767)  # fits
    # 2.5 MB of dense fc weights: more than the F767's 2 MB of flash
    big = conv_model(h=1, w=1, cin=2500, cout=1000, op="fc", levels=(0.0,))
    big.layers[0].masks = None
    result = generate(pack.pack(big, "dense"), big, tmp_path / "big")
    with pytest.raises(InputError) as err:
        check_fit(result, f767, file="suite.yaml", line=7, field="models[0].arch")
    text = str(err.value)
    assert text.startswith("suite.yaml:7: models[0].arch: ")
    assert f"{result.storage['model_bytes']:,} B" in text and f"{f767.max_flash:,} B" in text
    assert "RAM" not in text
    # an activation arena beyond the 128 KB DTCM
    wide = conv_model(h=64, w=64, cin=32, cout=32, levels=(0.0,))
    wide.layers[0].masks = None
    result = generate(pack.pack(wide, "dense"), wide, tmp_path / "wide")
    with pytest.raises(InputError, match=f"activation arena {result.arena_bytes:,} B"):
        check_fit(result, f767)
    qemu = load_targets(ROOT)["qemu_mps2_an500"]
    assert fit(result, qemu).ram_ok  # the emulator's 4 MB take it


def test_codegen_places_model_data_and_arena_in_their_sections(tmp_path: Path) -> None:
    qm = conv_model(cin=16, cout=8)
    generate(pack.pack(qm, "nested", crossover=NEVER_DENSE), qm, tmp_path)
    source = (tmp_path / "model.c").read_text()
    assert source.count(f'section("{codegen.MODEL_SECTION}")') == len(pack.pack(qm, "nested").arrays())
    assert f'section("{codegen.ARENA_SECTION}")' in source
    for board in ("nucleo_f767zi", "qemu_mps2_an500"):
        script = (ROOT / "targets" / "firmware" / "boards" / board / "link.ld").read_text()
        assert f"*({codegen.MODEL_SECTION})" in script and f"*({codegen.ARENA_SECTION})" in script
