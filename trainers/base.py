"""The trainer plugin API.

A trainer is a class registered in the ``nestbench.trainers`` entry-point group (pyproject.toml). It
has a `name`, a pydantic `Options` model (validated against the suite before any work starts, unknown
keys rejected) and a `train` method that turns a `TrainRequest` into trained models. A trainer knows
nothing of firmware, targets or the harness's stages: it gets data and an architecture, and returns
plain data (`trainers.graph.TrainedModel`).

Before any work the harness may ask a trainer class two things: `serves` (one model, one per level,
or one for all levels: decides which storage formats make sense) and `check(spec, levels, options)`
(raises ValueError for a combination `train` would reject, such as a block size that does not divide
a sparsified layer), so bad input fails in seconds rather than after training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from trainers.datasets import Dataset
from trainers.graph import NetSpec, TrainedModel


class TrainerOptions(BaseModel):
    """Base for every trainer's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TrainRequest:
    dataset: Dataset
    spec: NetSpec
    levels: tuple[float, ...]  # sparsities, strictly increasing; (0.0,) asks for a dense model
    seed: int
    device: str  # "cpu", "cuda", ... ("auto" is resolved by the caller)
    options: TrainerOptions
    # Called with (fraction done in [0, 1], short status text); the harness drives a progress bar.
    progress: Callable[[float, str], None] | None = None


Serves = Literal["one", "per_level", "all"]


class Trainer:
    """Base class of trainers. Subclasses set `name` and `Options` and implement `train`.

    `serves` tells the harness, before any training, what `train` returns: "one" model at level
    0.0 (dense), one model "per_level" (standalone baselines: one sparse model per requested level,
    e.g. for the `csr` format) or one model serving "all" requested levels (nested, dsnn).
    """

    name: ClassVar[str]
    Options: ClassVar[type[TrainerOptions]] = TrainerOptions
    serves: ClassVar[Serves] = "one"

    @classmethod
    def parse_options(cls, options: Any) -> TrainerOptions:
        """`options` as this trainer's Options instance (a mapping or another options model is validated)."""
        if isinstance(options, cls.Options):
            return options
        raw = options.model_dump() if isinstance(options, TrainerOptions) else dict(options or {})
        return cls.Options.model_validate(raw)

    @classmethod
    def check(cls, spec: NetSpec, levels: Sequence[float], options: Any) -> None:
        """Reject, before any work, what `train` could only reject later (the block size does not
        divide a sparsified layer, a named layer does not exist, a routing matrix of the wrong shape).

        Raises ValueError whose message starts with the option or node it concerns
        ("block: 4 does not divide the 6 input channels of layer 'conv2'"). The base accepts all.
        """

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        """Return one model serving all requested levels (dense, nested, dsnn) or one per level
        (standalone). Each model's `levels` says which levels it serves."""
        raise NotImplementedError
