"""A third-party trainer in the smallest useful form: a few epochs of plain SGD, dense only.

It shows what a plugin needs: a `Trainer` subclass with a `name`, a pydantic `Options` model and a
`train` method returning `TrainedModel`s, built from nestbench's public helpers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.base import Trainer, TrainerOptions, TrainRequest
from trainers.graph import TrainedModel
from trainers.torchnet import as_tensor, build_module, export_params


class ToyOptions(TrainerOptions):
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.1, gt=0.0)


class ToyTrainer(Trainer):
    name = "toy"
    Options = ToyOptions

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = request.options
        assert isinstance(opt, ToyOptions)
        torch.manual_seed(request.seed)
        module = build_module(request.spec).to(request.device)
        x = as_tensor(request.dataset.x_train, torch.float32, request.device)
        y = as_tensor(request.dataset.y_train, torch.long, request.device)
        sgd = torch.optim.SGD(module.parameters(), lr=opt.lr, momentum=0.9)
        losses = []
        module.train()
        for _ in range(opt.epochs):
            for start in range(0, len(y), 32):
                loss = F.cross_entropy(module(x[start : start + 32]), y[start : start + 32])
                sgd.zero_grad()
                loss.backward()
                sgd.step()
            losses.append(float(loss.detach()))
        params = export_params(module, request.spec)
        meta = {"trainer": self.name, "options": opt.model_dump(), "train_loss": losses}
        return [TrainedModel(spec=request.spec, params=params, levels=(0.0,), meta=meta)]
