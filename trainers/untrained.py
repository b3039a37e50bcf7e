"""`untrained`: random weights, no training — for instruction counts and memory of an architecture
without its dataset or the time to train it (accuracy figures are meaningless, cycles and bytes are
real). Sparse levels get nested 1×block masks by the trainers' own rules (the same layer selection and
per-layer rounding as `nested`), ranked on the random weights' magnitudes.

Also the place benchmarks and tests take a random model from (`random_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field

from trainers.base import Trainer, TrainerOptions, TrainRequest
from trainers.graph import Conv2d, Linear, NetSpec, TrainedModel
from trainers.sparsity import DEFAULT_SPARSIFY, check_block, check_levels, nested_masks, select_layers


class UntrainedOptions(TrainerOptions):
    block: int = Field(2, ge=1)
    sparsify: tuple[str, ...] = DEFAULT_SPARSIFY
    keep_dense: tuple[str, ...] = ()


def random_params(spec: NetSpec, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """He-initialised weights and random batch-norm statistics in graph.py's layouts."""
    shapes = spec.shapes()
    params: dict[str, dict[str, np.ndarray]] = {}
    for node in spec.nodes:
        if isinstance(node, Conv2d):
            cin = 1 if node.depthwise else shapes[node.input][2]
            shape: tuple[int, ...] = (node.out_channels, cin, node.kernel, node.kernel)
            fan_in = cin * node.kernel * node.kernel
            p = {"weight": (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)}
            if node.bias:
                p["bias"] = rng.normal(0, 0.1, node.out_channels).astype(np.float32)
            if node.batchnorm:
                co = node.out_channels
                p["bn_weight"] = rng.uniform(0.6, 1.4, co).astype(np.float32)
                p["bn_bias"] = rng.normal(0.0, 0.2, co).astype(np.float32)
                p["bn_mean"] = rng.normal(0.0, 0.2, co).astype(np.float32)
                p["bn_var"] = rng.uniform(0.5, 1.5, co).astype(np.float32)
                p["bn_eps"] = np.array(1e-5, dtype=np.float32)
        elif isinstance(node, Linear):
            fan_in = int(np.prod(shapes[node.input]))
            p = {
                "weight": (rng.standard_normal((node.out_features, fan_in)) * np.sqrt(1.0 / fan_in)).astype(
                    np.float32
                ),
                "bias": rng.normal(0, 0.1, node.out_features).astype(np.float32),
            }
        else:
            continue
        params[node.name] = p
    return params


def random_model(
    spec: NetSpec,
    levels: Sequence[float] = (0.0,),
    *,
    seed: int = 0,
    block: int = 2,
    sparsify: Sequence[str] = DEFAULT_SPARSIFY,
    keep_dense: Sequence[str] = (),
) -> TrainedModel:
    """A random model serving `levels`; sparse levels mask the selected layers with nested masks."""
    params = random_params(spec, np.random.default_rng(seed))
    masks: dict[str, np.ndarray] = {}
    if any(s > 0 for s in levels):
        check_levels(levels)
        layers = select_layers(spec, sparsify, keep_dense)
        check_block(spec, layers, block)
        for name in layers:
            weight = torch.from_numpy(params[name]["weight"])
            masks[name] = nested_masks(weight, levels, block).numpy()
    meta = {"trainer": "untrained", "seed": seed, "block": block}
    return TrainedModel(spec, params, tuple(levels), masks, meta)


class UntrainedTrainer(Trainer):
    name = "untrained"
    Options = UntrainedOptions
    serves = "all"

    @classmethod
    def check(cls, spec: NetSpec, levels: Sequence[float], options: Any) -> None:
        opt = cls.parse_options(options)
        assert isinstance(opt, UntrainedOptions)
        check_block(spec, select_layers(spec, opt.sparsify, opt.keep_dense), opt.block)

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = request.options
        assert isinstance(opt, UntrainedOptions)
        return [
            random_model(
                request.spec,
                request.levels,
                seed=request.seed,
                block=opt.block,
                sparsify=opt.sparsify,
                keep_dense=opt.keep_dense,
            )
        ]
