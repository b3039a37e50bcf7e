"""`untrained`: random weights with the trainers' own nested masks, for counts without data."""

from __future__ import annotations

import numpy as np

from trainers.archs import ARCHS
from trainers.registry import available_trainers
from trainers.sparsity import is_block_constant, is_nested, select_layers
from trainers.untrained import random_model


def test_random_models_follow_the_trainers_sparsity_rules() -> None:
    spec = ARCHS["mobilenet_v1"]((32, 32, 3), 10, width=0.25)
    levels = (0.7, 0.8, 0.9)
    model = random_model(spec, levels, seed=3)
    assert set(model.masks) == set(select_layers(spec))  # first conv and depthwise stay dense
    for name, mask in model.masks.items():
        assert is_nested(mask)
        conv = model.params[name]["weight"].ndim == 4
        assert all(is_block_constant(m, 2, conv=conv) for m in mask)
        kept = mask.reshape(len(levels), -1).mean(axis=1)
        assert np.allclose(kept, [0.3, 0.2, 0.1], atol=0.02), name
    again = random_model(spec, levels, seed=3)
    other = random_model(spec, levels, seed=4)
    name = next(iter(model.masks))
    assert np.array_equal(model.params[name]["weight"], again.params[name]["weight"])
    assert not np.array_equal(model.params[name]["weight"], other.params[name]["weight"])
    assert random_model(spec).masks == {}  # dense


def test_untrained_is_a_registered_trainer() -> None:
    trainer = available_trainers()["untrained"]
    assert trainer.serves == "all"
