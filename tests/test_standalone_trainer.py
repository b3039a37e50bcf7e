"""The standalone trainer (trainers/standalone.py): one independent, gradually pruned model per level."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from trainers.archs import ARCHS
from trainers.base import TrainRequest
from trainers.datasets import Dataset, load_dataset
from trainers.registry import get_trainer
from trainers.sparsity import is_block_constant, kept_blocks
from trainers.standalone import StandaloneOptions, StandaloneTrainer

LEVELS = (0.7, 0.8, 0.9)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _request(ds: Dataset, options: StandaloneOptions, levels: tuple[float, ...] = LEVELS) -> TrainRequest:
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes)
    return TrainRequest(ds, spec, levels, 0, "cpu", options)


def test_standalone_returns_one_model_per_level_at_its_sparsity(digits: Dataset) -> None:
    assert get_trainer("standalone") is StandaloneTrainer and StandaloneTrainer.serves == "per_level"
    reports: list[tuple[float, str]] = []
    options = StandaloneOptions(epochs=4, warmup_epochs=1, freeze_epoch=2, block=4)
    request = replace(_request(digits, options), progress=lambda f, s: reports.append((f, s)))
    models = StandaloneTrainer().train(request)
    assert [m.levels for m in models] == [(s,) for s in LEVELS]
    for model, sparsity in zip(models, LEVELS, strict=True):
        assert sorted(model.masks) == ["conv2", "conv3", "fc"]
        for name, mask in model.masks.items():
            weight = model.params[name]["weight"]
            assert mask.shape == (1, *weight.shape)
            assert is_block_constant(mask, 4, conv=weight.ndim == 4)
            assert np.count_nonzero(mask) / 4 == kept_blocks(weight.size // 4, sparsity)
        meta = model.meta
        assert meta["trainer"] == "standalone" and meta["served_levels"] == [sparsity]
        assert meta["requested_levels"] == list(LEVELS)
        assert meta["scheduled_sparsity"][-1] == [pytest.approx(sparsity)]
        assert meta["mask_changes"][-1] == 0  # frozen for the fine-tuning epochs
        assert len(meta["test_accuracy_final"]) == 1
    # the models are independent: different masks, different weights
    assert not np.array_equal(models[0].params["conv3"]["weight"], models[2].params["conv3"]["weight"])
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len(reports) == 3 * options.epochs and "s=0.9" in reports[-1][1]


def test_standalone_with_one_level_and_fixed_masks(digits: Dataset) -> None:
    options = StandaloneOptions(epochs=2, warmup_epochs=1, masks="fixed", freeze_epoch=None)
    (model,) = StandaloneTrainer().train(_request(digits, options, levels=(0.5,)))
    assert model.levels == (0.5,)
    assert model.meta["test_accuracy_final"][0] > 0.5


def test_standalone_rejects_a_bad_block_before_training(digits: Dataset) -> None:
    ds = digits
    spec = ARCHS["digits_cnn"](ds.x_train.shape[1:], ds.num_classes, channels=(8, 6, 32))
    request = TrainRequest(ds, spec, LEVELS, 0, "cpu", StandaloneOptions(block=4))
    with pytest.raises(ValueError, match=r"^block: 4 does not divide the 6 input channels of layer 'conv3'"):
        StandaloneTrainer().train(request)
