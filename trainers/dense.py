"""The plain dense trainer: one float model, level 0.0, no masks.

Determinism: for a given seed, device and `threads`, two runs give bit-identical weights on CPU. The
trainer seeds torch, shuffles with its own seeded generator, turns on torch's deterministic algorithms
and pins the intra-op thread count for the duration of training (CPU float reductions may split
differently with a different number of threads, so `threads` is an option and thus part of the cache
key). The default is one thread: on the small nets this trainer is meant for, threading buys little,
and it leaves the second core to the build and the emulator. Bit-identity across different CPUs is
not promised: torch may pick other SIMD kernels on another CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.base import Trainer, TrainerOptions, TrainRequest
from trainers.graph import TrainedModel
from trainers.torchnet import SpecModule, as_tensor, build_module, export_params, predict


class DenseOptions(TrainerOptions):
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    threads: int = Field(1, ge=1)
    # Quantization-aware fine-tuning after training (trainers/qat.py): epochs, and its learning rate
    # (None: a tenth of `lr`).
    qat_epochs: int = Field(0, ge=0)
    qat_lr: float | None = Field(None, gt=0.0)

    def qat_learning_rate(self) -> float:
        return self.qat_lr if self.qat_lr is not None else self.lr / 10.0


@contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore the globals after."""
    # Deterministic cuBLAS needs this before its first use; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def make_optimizer(module: torch.nn.Module, opt: DenseOptions) -> torch.optim.Optimizer:
    if opt.optimizer == "adam":
        # AdamW: decoupled decay, so weight_decay means the same thing at every lr.
        return torch.optim.AdamW(module.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        module.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=True
    )


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches; a last batch of one sample is dropped (batch norm cannot train on it)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


def scaled_progress(
    progress: Callable[[float, str], None] | None, lo: float, hi: float
) -> Callable[[float, str], None] | None:
    """A progress callback mapping [0, 1] onto [lo, hi] of `progress` (None stays None)."""
    if progress is None:
        return None
    report = progress

    def scaled(fraction: float, text: str) -> None:
        report(lo + (hi - lo) * fraction, text)

    return scaled


def accuracy(module: SpecModule, x: np.ndarray, y: np.ndarray, device: str) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(predict(module, x, device=device), axis=1) == y))


def train_epochs(
    module: SpecModule,
    request: TrainRequest,
    opt: DenseOptions,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The training loop shared by dense-style trainers; returns the curves for `meta`.

    `step(xb, yb)` returns the loss of one batch (default: cross-entropy of the dense forward); the
    loop does the backward pass, the optimizer and schedule steps, evaluation and progress reports.
    """
    ds, device = request.dataset, request.device
    x_train = as_tensor(ds.x_train, torch.float32, device)
    y_train = as_tensor(ds.y_train, torch.long, device)
    optimizer = make_optimizer(module, opt)
    steps_per_epoch = max(1, -(-len(ds.y_train) // opt.batch_size))
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.epochs * steps_per_epoch)
        if opt.schedule == "cosine"
        else None
    )
    generator = torch.Generator().manual_seed(request.seed)

    def default_step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(module(xb), yb, label_smoothing=opt.label_smoothing)

    loss_fn = step or default_step
    train_loss: list[float] = []
    test_accuracy: list[float] = []
    for epoch in range(opt.epochs):
        module.train()
        total, count = 0.0, 0
        for idx in batches(len(ds.y_train), opt.batch_size, generator):
            idx = idx.to(device)
            loss = loss_fn(x_train[idx], y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        train_loss.append(total / max(count, 1))
        test_accuracy.append(accuracy(module, ds.x_test, ds.y_test, device))
        if request.progress is not None:
            request.progress(
                (epoch + 1) / opt.epochs,
                f"epoch {epoch + 1}/{opt.epochs} loss {train_loss[-1]:.3f} acc {test_accuracy[-1]:.3f}",
            )
    return {"train_loss": train_loss, "test_accuracy": test_accuracy}


class DenseTrainer(Trainer):
    """Trains the architecture densely with cross-entropy; serves the single level 0.0.

    The requested levels are not an error: a suite lists the sparsities of its sparse entries, and the
    dense model is the baseline they are compared with, so it always serves (0.0,) (the harness reads
    the levels a model serves from the model, not from the request).
    """

    name = "dense"
    Options = DenseOptions

    def train(self, request: TrainRequest) -> list[TrainedModel]:
        opt = request.options
        if not isinstance(opt, DenseOptions):
            opt = DenseOptions.model_validate(opt.model_dump() if hasattr(opt, "model_dump") else opt)
        start = time.perf_counter()
        total_epochs = opt.epochs + opt.qat_epochs
        main_progress = scaled_progress(request.progress, 0.0, opt.epochs / total_epochs)
        with deterministic_torch(request.seed, opt.threads):
            module = build_module(request.spec).to(request.device)
            curves = train_epochs(module, replace(request, progress=main_progress), opt)
            if opt.qat_epochs:
                from trainers.qat import qat_finetune, qat_plan  # qat builds on this module

                ds = request.dataset
                curves.update(
                    qat_finetune(
                        module,
                        ds.x_train,
                        ds.y_train,
                        ds.x_test,
                        ds.y_test,
                        ds.input_range,
                        opt,
                        qat_plan((0.0,)),
                        {},
                        epochs=opt.qat_epochs,
                        lr=opt.qat_learning_rate(),
                        seed=request.seed,
                        device=request.device,
                        report=scaled_progress(request.progress, opt.epochs / total_epochs, 1.0),
                    )
                )
            final = accuracy(module, request.dataset.x_test, request.dataset.y_test, request.device)
            params = export_params(module, request.spec)
        wall = time.perf_counter() - start
        meta: dict[str, Any] = {
            "trainer": self.name,
            "options": opt.model_dump(),
            "epochs": opt.epochs,
            "seed": request.seed,
            "device": request.device,
            "requested_levels": list(request.levels),
            "served_levels": [0.0],
            "torch": torch.__version__,
            **curves,
            "wall_time_s": wall,
            "test_accuracy_final": final,  # float, the exported weights
        }
        return [TrainedModel(spec=request.spec, params=params, levels=(0.0,), masks={}, meta=meta)]
