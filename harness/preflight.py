"""Checks that need the dataset's shape and the trainer plugins, made before any training or build:
the architecture accepts its options, the trainer accepts the levels and its options for that
architecture (block sizes that divide, named layers that exist, ...), the format can hold what the
trainer produces, and the model is expected to fit every selected target's flash and RAM.

Every problem is bad input (exit 2) at the entry's line in the suite file.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.estimate import check_fits, estimate_for
from harness.suite import ModelEntry, Suite
from harness.targets import Target
from trainers import archs
from trainers.graph import NetSpec
from trainers.registry import get_trainer

# What each kind of trainer output can be stored as (trainers.base.Trainer.serves).
FORMATS_FOR = {
    "one": ("dense", "csr", "nested"),  # one model at one level: any storage works
    "per_level": ("csr", "dense", "nested"),  # one model per level, each on its own image
    "all": ("nested",),  # one model serving every level: only the nested format holds all of them
}


def build_spec(
    suite: Suite, index: int, entry: ModelEntry, input_shape: tuple[int, ...], classes: int
) -> NetSpec:
    try:
        spec = archs.ARCHS[entry.arch](tuple(input_shape), classes, **entry.arch_options)
        spec.shapes()
    except (TypeError, ValueError) as exc:
        raise suite.error_at(("models", index, "arch_options"), f"{entry.arch}: {exc}") from exc
    return spec


def check_entry(
    suite: Suite, index: int, entry: ModelEntry, spec: NetSpec, targets: Sequence[Target]
) -> None:
    trainer = get_trainer(entry.trainer)
    levels = suite.levels_for(entry)
    try:
        trainer.check(spec, levels, entry.trainer_options)
    except ValueError as exc:
        text = str(exc)
        head, sep, _ = text.partition(":")
        option = head.strip() if sep and head.strip().isidentifier() else None
        path: tuple[object, ...] = (
            ("models", index, "options", option) if option else ("models", index, "options")
        )
        raise suite.error_at(path, text) from exc
    allowed = FORMATS_FOR[trainer.serves]
    if entry.format not in allowed:
        raise suite.error_at(
            ("models", index, "format"),
            f"trainer {entry.trainer!r} gives one model serving every level, which only the "
            f"{' or '.join(allowed)} format can hold (got {entry.format!r})",
        )
    est = estimate_for(
        spec, levels if trainer.serves != "one" else (0.0,), entry.format, entry.trainer_options
    )
    for target in targets:
        problem = check_fits(est, target.max_flash, target.max_ram)
        if problem:
            raise suite.error_at(("models", index, "arch"), f"too large for {target.name}: {problem}")


def preflight(suite: Suite, input_shape: tuple[int, ...], classes: int, targets: Sequence[Target]) -> None:
    """Raise InputError for the first entry that cannot run; return when every entry can."""
    for index, entry in enumerate(suite.models):
        spec = build_spec(suite, index, entry, input_shape, classes)
        check_entry(suite, index, entry, spec, targets)
