"""Host-side stages for one suite entry: train (trainer plugin) → quantize → host evaluation → pack →
generate C. Every artifact is cached by a content hash of its inputs and of the code that makes it,
so an unchanged suite trains and generates nothing the second time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import codegen, floatref, pack, quantize, reference
from harness.cache import ArtifactCache, hash_tree
from harness.paths import ROOT
from harness.qmodel import QModel
from harness.suite import ModelEntry, Suite
from trainers import archs
from trainers.base import TrainRequest
from trainers.datasets import Dataset
from trainers.graph import TrainedModel
from trainers.registry import get_trainer, resolve_device

CALIBRATION_SAMPLES = 256


@dataclass
class LevelEval:
    level: int  # index into the entry's levels (the record's `level`)
    device_level: int  # index into this model's own levels (what `level K` selects on the device)
    sparsity: float
    accuracy_float: float
    accuracy_host: float
    host_outputs: np.ndarray  # int8 [samples, classes]: the bit-exact oracle for the device


@dataclass
class PreparedModel:
    """One deployable int8 model of an entry (an entry has one, or one per level for standalone)."""

    qmodel: QModel
    model_hash: str
    model_dir: Path  # generated C
    storage: dict[str, int]  # weight/index/meta/model bytes from the emitted arrays
    symbol_sizes: dict[str, int]  # emitted array symbol -> bytes, cross-checked with the ELF
    descriptor_bytes: int  # layer/tensor/sparse tables pointing at the arrays (harness.fit)
    arena_bytes: int  # activation arena incl. kernel scratch
    levels: list[LevelEval]


@dataclass
class PreparedEntry:
    entry: ModelEntry
    trainer: str
    levels: tuple[float, ...]
    models: list[PreparedModel]
    train_seconds: float
    cached: bool


def entry_levels(suite: Suite, entry: ModelEntry) -> tuple[float, ...]:
    return tuple(entry.levels if entry.levels is not None else suite.levels)


def _train_key(cache: ArtifactCache, suite: Suite, entry: ModelEntry, dataset: Dataset, device: str) -> str:
    return cache.key(
        stage="train",
        trainer=entry.trainer,
        options=entry.options,
        arch=entry.arch,
        arch_options=entry.arch_options,
        dataset=dataset.fingerprint,
        seed=suite.seed,
        levels=list(entry_levels(suite, entry)),
        device=device,
        code=hash_tree([ROOT / "trainers"], (".py",)),
    )


def train_entry(
    cache: ArtifactCache,
    suite: Suite,
    entry: ModelEntry,
    dataset: Dataset,
    *,
    refresh: bool,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[TrainedModel], str, float, bool]:
    """Train (or fetch from the cache) the entry's models; returns them with the cache key, the
    training wall time and whether they came from the cache."""
    device = resolve_device(suite.device)
    key = _train_key(cache, suite, entry, dataset, device)
    cached = cache.exists("train", key) and not refresh
    trainer_cls = get_trainer(entry.trainer)

    def produce(folder: Path) -> None:
        spec = archs.ARCHS[entry.arch](dataset.x_train.shape[1:], dataset.num_classes, **entry.arch_options)
        request = TrainRequest(
            dataset=dataset,
            spec=spec,
            levels=entry_levels(suite, entry),
            seed=suite.seed,
            device=device,
            options=trainer_cls.Options.model_validate(entry.options),
            progress=progress,
        )
        start = time.perf_counter()
        models = trainer_cls().train(request)
        wall = time.perf_counter() - start
        for i, model in enumerate(models):
            model.save(folder / f"model{i}")
        (folder / "train.json").write_text(json.dumps({"models": len(models), "wall_time_s": wall}))

    folder = cache.get_or_create("train", key, produce, refresh=refresh)
    info = json.loads((folder / "train.json").read_text())
    models = [TrainedModel.load(folder / f"model{i}") for i in range(info["models"])]
    return models, key, float(info["wall_time_s"]), cached


def _accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


def prepare_model(
    cache: ArtifactCache,
    trained: TrainedModel,
    train_key: str,
    index: int,
    entry: ModelEntry,
    all_levels: tuple[float, ...],
    dataset: Dataset,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    *,
    refresh: bool,
) -> PreparedModel:
    """Quantize one trained model, evaluate it on the host (float and int8 reference) at each of its
    levels, pack it and generate its C source."""
    numerics = hash_tree(
        [ROOT / "harness" / f for f in ("quantize.py", "floatref.py", "requant.py", "qmodel.py")], (".py",)
    )
    qkey = cache.key(stage="quantize", train=train_key, index=index, code=numerics, calib=CALIBRATION_SAMPLES)

    def produce_q(folder: Path) -> None:
        calib = dataset.x_train[:CALIBRATION_SAMPLES]
        quantize.quantize(trained, calib, dataset.input_range, name=entry.name).save(folder)

    qmodel = QModel.load(cache.get_or_create("quantize", qkey, produce_q, refresh=refresh))
    model_hash = qmodel.content_hash()

    folded = floatref.fold_batchnorm(trained)
    x_q = quantize.quantize_input(eval_x, qmodel.tensors[qmodel.input])
    levels = []
    for device_level, sparsity in enumerate(trained.levels):
        logits = floatref.forward_float(
            trained.spec, folded, eval_x, masks=trained.masks, masks_level=device_level
        )
        host = reference.run_int8(qmodel, x_q, level=device_level)
        levels.append(
            LevelEval(
                level=all_levels.index(sparsity) if sparsity in all_levels else 0,
                device_level=device_level,
                sparsity=sparsity,
                accuracy_float=_accuracy(np.asarray(logits), eval_y),
                accuracy_host=_accuracy(host.astype(np.int32), eval_y),
                host_outputs=host,
            )
        )

    # crossover.json decides dense or sparse kernels per layer and level: it changes what is emitted
    codegen_code = hash_tree(
        [ROOT / "harness" / f for f in ("pack.py", "codegen.py", "crossover.json")], (".py", ".json")
    )
    ckey = cache.key(stage="codegen", model=model_hash, format=entry.format, code=codegen_code)

    def produce_c(folder: Path) -> None:
        packed = pack.pack(qmodel, entry.format)
        result = codegen.generate(packed, qmodel, folder)
        meta = {
            "storage": result.storage,
            "symbols": result.symbol_sizes,
            "arena_bytes": result.arena_bytes,
            "descriptor_bytes": result.descriptor_bytes,
        }
        (folder / "codegen.json").write_text(json.dumps(meta, indent=1, sort_keys=True))

    model_dir = cache.get_or_create("codegen", ckey, produce_c, refresh=refresh)
    meta = json.loads((model_dir / "codegen.json").read_text())
    return PreparedModel(
        qmodel=qmodel,
        model_hash=model_hash,
        model_dir=model_dir,
        storage={k: int(v) for k, v in meta["storage"].items()},
        symbol_sizes={k: int(v) for k, v in meta["symbols"].items()},
        descriptor_bytes=int(meta["descriptor_bytes"]),
        arena_bytes=int(meta["arena_bytes"]),
        levels=levels,
    )


def prepare_entry(
    cache: ArtifactCache,
    suite: Suite,
    entry: ModelEntry,
    dataset: Dataset,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    *,
    refresh: bool,
    progress: Callable[[float, str], None] | None = None,
) -> PreparedEntry:
    trained, key, seconds, cached = train_entry(
        cache, suite, entry, dataset, refresh=refresh, progress=progress
    )
    served = sorted({s for m in trained for s in m.levels})
    all_levels = tuple(served)
    models = [
        prepare_model(cache, m, key, i, entry, all_levels, dataset, eval_x, eval_y, refresh=refresh)
        for i, m in enumerate(trained)
    ]
    return PreparedEntry(entry, entry.trainer, all_levels, models, seconds, cached)
