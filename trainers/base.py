"""The trainer plugin API.

A trainer is a class registered in the ``nestbench.trainers`` entry-point group (pyproject.toml). It
has a `name`, a pydantic `Options` model (validated against the suite before any work starts, unknown
keys rejected) and a `train` method that turns a `TrainRequest` into trained models. A trainer knows
nothing of firmware, targets or the harness's stages: it gets data and an architecture, and returns
plain data (`trainers.graph.TrainedModel`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

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


class Trainer:
    """Base class of trainers. Subclasses set `name` and `Options` and implement `train`."""

    name: ClassVar[str]
    Options: ClassVar[type[TrainerOptions]] = TrainerOptions

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        """Return one model serving all requested levels (dense, nested, dsnn) or one per level
        (standalone). Each model's `levels` says which levels it serves."""
        raise NotImplementedError
