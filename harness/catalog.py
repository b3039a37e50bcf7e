"""The names a suite may use, gathered from the plugin registries and platformio.ini."""

from __future__ import annotations

from pathlib import Path

from harness.suite import Catalog
from harness.targets import load_targets
from trainers import archs, datasets
from trainers.registry import available_trainers

# Formats the packer and kernels can build: dense, the standalone csr baseline (one single-level
# model per level) and nested (one model, every level a prefix).
BUILDABLE_FORMATS = ("dense", "csr", "nested")


def build_catalog(root: Path) -> Catalog:
    return Catalog(
        trainers={name: cls.Options for name, cls in available_trainers().items()},
        archs=tuple(archs.ARCHS),
        datasets=tuple(datasets.DATASETS),
        targets=tuple(load_targets(root)),
        formats=BUILDABLE_FORMATS,
    )
