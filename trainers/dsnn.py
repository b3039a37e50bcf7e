"""The `dsnn` trainer: the dynamic-sparsity baseline (Wu et al., ICASSP 2021) the paper compares with.

One model serving every level, trained jointly with the plain sum of the levels' label losses: no
gradient routing, no distillation. Masks come from one magnitude ranking per layer (so they nest,
as the nested format needs) and are pruned gradually on a cubic schedule by default, as DSNN trains.
It shares the nested trainer's engine but is its own name, with its own options, so suites and
records keep the baseline apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from trainers.base import Trainer, TrainRequest
from trainers.graph import NetSpec, TrainedModel
from trainers.joint import ScheduleOptions, check_sparse
from trainers.nested import train_sparse_model


class DsnnOptions(ScheduleOptions):
    # The nested trainer's schedule, so the comparison holds the training budget equal.
    epochs: int = Field(30, ge=1)  # warm-up 6, masks frozen at 18, as nested
    masks: Literal["fixed", "gradual"] = "gradual"


class DsnnTrainer(Trainer):
    name = "dsnn"
    Options = DsnnOptions
    serves = "all"

    @classmethod
    def check(cls, spec: NetSpec, levels: Sequence[float], options: Any) -> None:
        opt = cls.parse_options(options)
        assert isinstance(opt, DsnnOptions)
        check_sparse(spec, levels, opt)

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = self.parse_options(request.options)
        assert isinstance(opt, DsnnOptions)
        self.check(request.spec, request.levels, opt)
        return [train_sparse_model(self.name, request, opt, request.levels, opt.layers(request.spec))]
