"""Block sparsity (trainers/sparsity.py): layer selection, block granularity, nested masks, routing
matrices, schedules, and the trainers' pre-training checks built on them."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from trainers.archs import ARCHS
from trainers.base import Trainer
from trainers.dsnn import DsnnTrainer
from trainers.graph import INPUT, Conv2d, GlobalAvgPool, Linear, NetSpec
from trainers.nested import NestedOptions, NestedTrainer
from trainers.sparsity import (
    check_block,
    cubic_sparsity,
    expand_blocks,
    increments,
    is_block_constant,
    is_nested,
    kept_blocks,
    nested_masks,
    routing_matrix,
    routing_weights,
    scheduled_levels,
    select_layers,
    sparsity_of,
)
from trainers.standalone import StandaloneTrainer

LEVELS = (0.7, 0.8, 0.9)


def _digits(channels: tuple[int, int, int] = (8, 16, 32)) -> NetSpec:
    return ARCHS["digits_cnn"]((8, 8, 1), 10, channels=channels)


@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("shape", [(24, 16, 3, 3), (10, 32), (16, 8, 1, 1)])
def test_masks_nest_reach_their_targets_and_are_block_constant(block: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(block)
    weight = torch.randn(shape)
    masks = nested_masks(weight, LEVELS, block).numpy()
    assert masks.dtype == bool and masks.shape == (len(LEVELS), *shape)
    assert is_nested(masks)
    conv = len(shape) == 4
    assert is_block_constant(masks, block, conv=conv)
    n_blocks = weight.numel() // block
    for k, s in enumerate(LEVELS):
        kept = np.count_nonzero(masks[k]) / block
        assert abs(kept - (1 - s) * n_blocks) <= 1.0  # the target, up to one block of rounding
        assert kept == kept_blocks(n_blocks, s)
    # one ranking: every kept block outscores every dropped one at each level
    view = weight.permute(0, 2, 3, 1) if conv else weight
    scores = view.reshape(*view.shape[:-1], -1, block).norm(dim=-1)
    bm = torch.as_tensor(masks)
    bm = (bm.permute(0, 1, 3, 4, 2) if conv else bm).reshape(len(LEVELS), *scores.shape, block)[..., 0]
    for k in range(len(LEVELS)):
        assert scores[bm[k]].min() >= scores[~bm[k]].max()


def test_block_masks_really_group_consecutive_input_channels() -> None:
    # conv OIHW: a block is `block` consecutive input channels at one (o, ky, kx)
    weight = torch.zeros(2, 4, 1, 1)
    weight[0, 2:4, 0, 0] = 1.0  # the only strong block
    masks = nested_masks(weight, (0.75,), 2)
    expected = torch.zeros(1, 2, 4, 1, 1, dtype=torch.bool)
    expected[0, 0, 2:4] = True
    assert torch.equal(masks, expected)
    assert not is_block_constant(np.array([[True, False, True, True]]), 2, conv=False)
    # expand_blocks is the inverse layout of the scores
    bm = torch.tensor([[True, False]])
    assert expand_blocks(bm, (1, 4), 2).tolist() == [[True, True, False, False]]


def test_default_selection_keeps_first_conv_and_depthwise_dense() -> None:
    assert select_layers(_digits()) == ["conv2", "conv3", "fc"]
    mobilenet = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.25)
    chosen = select_layers(mobilenet)
    assert "conv0" not in chosen and not any(n.endswith("_dw") for n in chosen)
    assert chosen == [f"block{i}_pw" for i in range(1, 14)] + ["fc"]
    zoo = ARCHS["layer_zoo"]((12, 12, 3), 4)
    # standard (down), pointwise (pw, expand) and both linear heads; stem (first) and dw stay dense
    assert select_layers(zoo) == ["down", "pw", "expand", "head_gap", "head_flat"]


def test_selection_by_kind_and_name() -> None:
    spec = _digits()
    assert select_layers(spec, ["linear"]) == ["fc"]
    assert select_layers(spec, ["first", "fc"]) == ["conv1", "fc"]
    assert select_layers(spec, ["standard", "linear"], keep_dense=["conv3"]) == ["conv2", "fc"]
    zoo = ARCHS["layer_zoo"]((12, 12, 3), 4)
    assert select_layers(zoo, ["depthwise"]) == ["dw"]
    with pytest.raises(ValueError, match=r"^sparsify: 'conv9' is neither a layer kind"):
        select_layers(spec, ["conv9"])
    with pytest.raises(ValueError, match=r"^keep_dense: node 'pool' has no weights"):
        select_layers(spec, ["standard"], keep_dense=["pool"])


def test_block_that_does_not_divide_a_layer_is_rejected_naming_it() -> None:
    spec = _digits((8, 6, 32))  # conv3 reads 6 channels
    check_block(spec, ["conv2", "conv3"], 2)
    with pytest.raises(ValueError, match=r"^block: 4 does not divide the 6 input channels of layer 'conv3'"):
        check_block(spec, ["conv2", "conv3"], 4)
    # a linear layer's blocks run along its NHWC-flattened inputs
    flat = NetSpec(
        "flat",
        (3, 3, 2),
        4,
        (Conv2d("c", INPUT, 3, kernel=1), Linear("fc", "c", 4)),
    )
    with pytest.raises(ValueError, match=r"27 inputs of layer 'fc'"):
        check_block(flat, ["fc"], 2)
    # a depthwise layer has one input channel per group: only block 1 fits it
    zoo = ARCHS["layer_zoo"]((12, 12, 3), 4)
    check_block(zoo, ["dw"], 1)
    with pytest.raises(ValueError, match=r"layer 'dw'"):
        check_block(zoo, ["dw"], 2)


@pytest.mark.parametrize("trainer", [NestedTrainer, StandaloneTrainer, DsnnTrainer])
def test_trainers_check_before_training(trainer: type[Trainer]) -> None:
    spec = _digits((8, 6, 32))
    trainer.check(spec, LEVELS, {"block": 2})
    with pytest.raises(ValueError, match=r"^block: .*'conv3'"):
        trainer.check(spec, LEVELS, {"block": 4})
    with pytest.raises(ValueError, match=r"^sparsify: "):
        trainer.check(spec, LEVELS, {"sparsify": ["nope"]})
    with pytest.raises(ValueError, match=r"^levels: "):
        trainer.check(spec, (0.9, 0.8), {})
    # the default selection skips conv1 (1 input channel), so block 4 fits the default digits CNN
    trainer.check(_digits(), LEVELS, {"block": 4})
    assert trainer.serves in ("per_level", "all")


def test_base_trainer_check_accepts_everything_and_serves_one() -> None:
    Trainer.check(_digits(), (0.5,), {})
    assert Trainer.serves == "one"


def test_nested_check_validates_the_routing_matrix_against_the_levels() -> None:
    spec = _digits()
    good = {"routing": "weighted", "routing_matrix": [[1, 1, 0.5], [0, 1, 0.5], [0, 0, 1]]}
    NestedTrainer.check(spec, LEVELS, good)
    with pytest.raises(ValueError, match=r"^routing_matrix: expected 2×2"):
        NestedTrainer.check(spec, (0.7, 0.9), good)
    with pytest.raises(pydantic.ValidationError, match="routing_matrix"):
        NestedOptions(routing="weighted")
    with pytest.raises(pydantic.ValidationError, match="warmup_epochs"):
        NestedOptions(epochs=3, warmup_epochs=3)


def test_routing_presets() -> None:
    assert routing_matrix("sum", 3).tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert routing_matrix("exclusive", 3).tolist() == np.eye(3).tolist()
    w = routing_matrix("weighted", 2, [[1.0, 0.5], [9.0, 1.0]])
    assert w.tolist() == [[1.0, 0.5], [0.0, 1.0]]  # level 1 never uses increment 0
    with pytest.raises(ValueError, match="non-negative"):
        routing_matrix("weighted", 2, [[1, -1], [0, 1]])
    with pytest.raises(ValueError, match="increment 1 receives no gradient"):
        routing_matrix("weighted", 2, [[1, 0], [0, 0]])


def test_increments_partition_the_densest_mask_and_routes_follow_the_matrix() -> None:
    torch.manual_seed(0)
    masks = nested_masks(torch.randn(8, 6, 3, 3), LEVELS, 2)
    inc = increments(masks)
    assert torch.equal(inc.sum(0) > 0, masks[0])  # increments cover the densest level …
    assert int(inc.sum(0).max()) == 1  # … without overlap
    assert torch.equal(inc[2], masks[2]) and torch.equal(inc[0], masks[0] & ~masks[1])
    route = routing_weights(masks, routing_matrix("exclusive", 3))
    for k in range(3):
        assert torch.equal(route[k] > 0, inc[k])
    route = routing_weights(masks, routing_matrix("sum", 3))
    assert torch.equal(route, masks.float())


def test_cubic_schedule() -> None:
    assert cubic_sparsity(0.9, 0.0) == 0.0 and cubic_sparsity(0.9, 1.0) == pytest.approx(0.9)
    values = [cubic_sparsity(0.9, p / 10) for p in range(11)]
    assert values == sorted(values)
    steps = np.diff(values)
    assert steps[0] > steps[-1]  # prunes fast early, slowly late (Zhu & Gupta)
    mid = scheduled_levels(LEVELS, 0.5)
    assert mid == sorted(mid) and all(m < s for m, s in zip(mid, LEVELS, strict=True))
    assert cubic_sparsity(0.9, 2.0) == pytest.approx(0.9)


def test_sparsity_of_and_gap_specs() -> None:
    assert sparsity_of(np.array([True, False, False, False])) == 0.75
    spec = NetSpec(
        "g", (4, 4, 4), 3, (Conv2d("c", INPUT, 4), GlobalAvgPool("gap", "c"), Linear("fc", "gap", 3))
    )
    assert select_layers(spec) == ["fc"]  # the only conv reads the input: it is the first conv
