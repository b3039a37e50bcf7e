"""The `standalone` trainer: one independent sparse model per level (the naive baseline).

For each requested sparsity, a fresh model (same seed, so the models differ only by their target)
trains densely for `warmup_epochs` (default: a third of `epochs`), is pruned by block magnitude on
Zhu & Gupta's cubic schedule up to `freeze_epoch` (default: halfway through the rest; re-ranked
every `update_every` steps), then fine-tunes with its mask frozen until `epochs`; optional
quantization-aware fine-tuning follows. It returns N models, each serving one
level with a [1, ...] mask: what the `csr` format deploys, one model per level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import Field

from trainers.base import Trainer, TrainRequest
from trainers.dense import scaled_progress
from trainers.graph import NetSpec, TrainedModel
from trainers.joint import ScheduleOptions, check_sparse
from trainers.nested import train_sparse_model


class StandaloneOptions(ScheduleOptions):
    # Per model: a third of the epochs dense (10 of 30), pruning until epoch 20, then fine-tuning.
    WARMUP_SHARE: ClassVar[float] = 1 / 3
    epochs: int = Field(30, ge=1)
    masks: Literal["fixed", "gradual"] = "gradual"


def _labelled(report: Callable[[float, str], None], label: str) -> Callable[[float, str], None]:
    def labelled(fraction: float, text: str) -> None:
        report(fraction, f"{label} {text}")

    return labelled


class StandaloneTrainer(Trainer):
    name = "standalone"
    Options = StandaloneOptions
    serves = "per_level"

    @classmethod
    def check(cls, spec: NetSpec, levels: Sequence[float], options: Any) -> None:
        opt = cls.parse_options(options)
        assert isinstance(opt, StandaloneOptions)
        check_sparse(spec, levels, opt)

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = self.parse_options(request.options)
        assert isinstance(opt, StandaloneOptions)
        self.check(request.spec, request.levels, opt)
        layers = opt.layers(request.spec)
        models = []
        n = len(request.levels)
        for i, sparsity in enumerate(request.levels):
            report = scaled_progress(request.progress, i / n, (i + 1) / n)
            if report is not None:
                report = _labelled(report, f"s={sparsity:g}")
            level_request = replace(request, progress=report)
            models.append(train_sparse_model(self.name, level_request, opt, (sparsity,), layers))
        return models
