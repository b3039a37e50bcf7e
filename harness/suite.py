"""The suite file: schema, defaults and validation with file/line/field errors.

A suite says what to train, how to deploy it and how to judge the figures. It is validated completely
before any work starts; every problem found is reported at once, one per line, as
``file:line: field: message`` (`InputError`, exit 2). Schema (keys in this order by convention)::

    suite: quickstart            # optional, default: the file's stem; [A-Za-z0-9_-]+
    description: "..."           # optional free text
    dataset: digits              # a name, or {name: cifar10, root: ./data/cifar, test_fraction: 0.2,
                                 #   options: {max_train: 5000}}
                                 #   root: folder with the dataset's files, relative to the suite file
                                 #   test_fraction: share held out for evaluation, in (0, 1); default:
                                 #   the dataset's own split
    seed: 0                      # ≥ 0; seeds training, splits and sample selection
    samples: 360                 # evaluation samples from the test split (0 = all), ≥ 0
    levels: [0.7, 0.8, 0.9]      # sparsities for sparse trainers: strictly increasing, each in (0, 1)
    targets: [qemu_mps2_an500]   # target names (platformio.ini envs), at least one, no repeats
    measure:
      repetitions: 5             # timed inferences per sample batch, ≥ 1 (cycles = their median)
      warmup: 1                  # untimed inferences first, ≥ 0
      timeout_s: 60              # per device command, > 0
    tolerances:                  # regression gates (harness/baselines.py); each {rel, abs} ≥ 0: a
                                 # metric regresses when worse than its baseline by more than
                                 # max(abs, rel × baseline). Keys left out keep these defaults:
      cycles: {rel: 0.0, abs: 0}          # emulator instruction counts (qemu-icount, renode-dwt)
      board_cycles: {rel: 0.03, abs: 0}   # DWT cycles on real boards
      accuracy: {abs: 0.01}               # allowed drop of accuracy_device (a fraction, not points)
      storage: {abs: 0}                   # model/weight/index/meta bytes
      footprint: {rel: 0.0, abs: 0}       # flash/RAM bytes of the linked image
    device: auto                 # training device: auto | cpu | cuda | cuda:N
    farm:                        # only used with --hardware-map / --labgrid (docs/farm.md)
      mode: shard                # shard: each entry on one board of each kind; repeat: on every board
      board_wait_s: 3600         # how long a job waits for a busy board before failing its rows, > 0
      max_board_failures: 2      # board failures in a row before a board sits out the run, ≥ 1
    models:                      # at least one entry; names unique
      - name: dense              # [A-Za-z0-9_-]+
        arch: digits_cnn         # a known architecture
        arch_options: {}         # passed to the architecture builder, e.g. {width: 0.5}
        trainer: dense           # a known trainer
        options: {epochs: 30}    # validated by the trainer's own Options model
        format: dense            # dense | csr | nested (what the catalog knows); default dense
        levels: [0.7, 0.8, 0.9]  # optional per-model override of the suite's levels

Scalars are typed strictly: ``samples: "360"`` is an error, not a silent conversion. Names (datasets,
targets, architectures, trainers, formats) are checked against a `Catalog` the caller injects, so this
module imports neither trainers nor platformio.ini parsing.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.errors import InputError
from harness.yamlsrc import YamlSource, format_field, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_LEVELS = (0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Catalog:
    """What the suite may name. Built by the caller from the trainer registry, the architectures,
    the dataset loaders and platformio.ini."""

    trainers: Mapping[str, type[BaseModel]]  # trainer name -> its Options model
    archs: Collection[str]
    datasets: Collection[str]
    targets: Collection[str]
    formats: Collection[str]


# --- name checks against the injected catalog --------------------------------------------------------

_KINDS = {
    "trainers": "trainer",
    "archs": "architecture",
    "datasets": "dataset",
    "targets": "target",
    "formats": "format",
}


def unknown_name_message(kind: str, value: str, known: Collection[str]) -> str:
    """``unknown trainer 'dnese' (did you mean 'dense'?); known: dense, nested``."""
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {value!r}{hint}; known: {', '.join(names) if names else '(none)'}"


def _known(attr: str) -> Callable[[str, ValidationInfo], str]:
    def check(value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if isinstance(catalog, Catalog):
            known: Collection[str] = getattr(catalog, attr)
            if value not in known:
                raise PydanticCustomError("unknown_name", unknown_name_message(_KINDS[attr], value, known))
        return value

    return check


def _increasing(levels: list[float]) -> list[float]:
    for i in range(1, len(levels)):
        if levels[i] <= levels[i - 1]:
            raise PydanticCustomError(
                "levels_order",
                f"levels must be strictly increasing: item {i} ({levels[i]}) does not "
                f"exceed item {i - 1} ({levels[i - 1]})",
            )
    return levels


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value) or len(value) > 64:
        raise PydanticCustomError(
            "name_chars", f"use 1 to 64 letters, digits, '_' or '-' (got {_describe(value)})"
        )
    return value


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda|cuda:[0-9]+", value):
        raise PydanticCustomError("device", f"expected auto, cpu, cuda or cuda:N (got {_describe(value)})")
    return value


Name = Annotated[str, AfterValidator(_name)]
Level = Annotated[float, Field(gt=0.0, lt=1.0)]
Levels = Annotated[list[Level], Field(min_length=1, max_length=16), AfterValidator(_increasing)]


class _Strict(BaseModel):
    # strict: YAML already gives typed values, so "360" for a count is the user's mistake
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- schema ------------------------------------------------------------------------------------------


class DatasetSpec(_Strict):
    """`dataset:` — a bare name is short for ``{name: <name>}``."""

    name: Annotated[str, AfterValidator(_known("datasets"))]
    root: Path | None = None  # absolute after loading: resolved against the suite file's folder
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)  # loader options, e.g. synthetic {h, w, classes}
    _line: int | None = PrivateAttr(default=None)

    @property
    def line(self) -> int | None:
        """Line of `dataset:` in the suite file (None when not loaded from a file)."""
        return self._line

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, Mapping):
            raise PydanticCustomError(
                "dataset_type", "expected a dataset name or a mapping with keys name, root, test_fraction"
            )
        return data

    @field_validator("root", mode="before")
    @classmethod
    def _resolve_root(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise PydanticCustomError("path_type", "expected a folder path (a string)")
        path = Path(value).expanduser()
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and isinstance(base, Path):
            path = base / path
        path = Path(os.path.normpath(path.absolute()))  # drop "..", keep symlinks as written
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "folder not found"
            raise PydanticCustomError("path_missing", f"{what}: {path}")
        return path


class Measure(_Strict):
    """`measure:` — how each level is timed on the device."""

    repetitions: int = Field(default=5, ge=1, le=10_000)
    warmup: int = Field(default=1, ge=0, le=10_000)
    timeout_s: float = Field(default=60.0, gt=0.0)


class Tolerance(_Strict):
    """A metric regresses when worse than baseline by more than max(abs, rel × |baseline|)."""

    rel: float = Field(default=0.0, ge=0.0)
    abs: float = Field(default=0.0, ge=0.0)

    def allowed(self, baseline: float) -> float:
        return max(self.abs, self.rel * abs(baseline))


class Tolerances(_Strict):
    """`tolerances:` — one `Tolerance` per metric family; a partly given one keeps its other default."""

    cycles: Tolerance = Tolerance()
    board_cycles: Tolerance = Tolerance(rel=0.03)
    accuracy: Tolerance = Tolerance(abs=0.01)
    storage: Tolerance = Tolerance()
    footprint: Tolerance = Tolerance()

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            given = data.get(name)
            if isinstance(given, Mapping) and isinstance(info.default, Tolerance):
                merged[name] = {**info.default.model_dump(), **given}
        return merged


class Farm(_Strict):
    """`farm:` — how a farm run (``--hardware-map``, ``--labgrid``) spreads entries over boards."""

    mode: Literal["shard", "repeat"] = "shard"
    board_wait_s: float = Field(default=3600.0, gt=0.0)
    max_board_failures: int = Field(default=2, ge=1, le=1000)


class ModelEntry(_Strict):
    """One entry of `models:`."""

    name: Name
    arch: Annotated[str, AfterValidator(_known("archs"))]
    arch_options: dict[str, Any] = Field(default_factory=dict)
    trainer: Annotated[str, AfterValidator(_known("trainers"))]
    # As written while validating; after `load_suite`, the trainer's validated Options instance.
    options: Any = Field(default_factory=dict)
    format: Annotated[str, AfterValidator(_known("formats"))] = "dense"
    levels: Levels | None = None
    _line: int | None = PrivateAttr(default=None)

    @property
    def line(self) -> int | None:
        """Line where this entry starts in the suite file (None when not loaded from a file)."""
        return self._line

    @field_validator("options")
    @classmethod
    def _options_mapping(cls, value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, Mapping):
            raise PydanticCustomError("options_type", f"expected a mapping, got {_describe(value)}")
        return dict(value)

    @property
    def trainer_options(self) -> BaseModel:
        """The trainer's Options instance (defaults applied); set by `load_suite`."""
        if not isinstance(self.options, BaseModel):
            raise TypeError(f"options of model {self.name!r} were not validated by load_suite")
        return self.options


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise PydanticCustomError("duplicate", f"item {i} repeats {value!r}")
        seen.add(value)
    return values


class Suite(_Strict):
    """A validated suite; see the module docstring for the file format."""

    suite: Name
    description: str = ""
    dataset: DatasetSpec
    seed: int = Field(default=0, ge=0, lt=2**32)
    samples: int = Field(default=0, ge=0)
    levels: Levels = Field(default_factory=lambda: list(DEFAULT_LEVELS))
    targets: Annotated[
        list[Annotated[str, AfterValidator(_known("targets"))]], Field(min_length=1), AfterValidator(_unique)
    ]
    measure: Measure = Measure()
    tolerances: Tolerances = Tolerances()
    device: Annotated[str, AfterValidator(_device)] = "auto"
    farm: Farm = Farm()
    models: list[ModelEntry] = Field(min_length=1)
    _source: YamlSource | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.suite

    @property
    def file(self) -> Path | None:
        """The suite file this was loaded from."""
        return self._source.file if self._source is not None else None

    def line_of(self, *path: Hashable) -> int | None:
        """Line of a data path in the suite file, e.g. ``line_of("models", 0, "arch_options")``; the
        nearest existing parent's line for a key that was left out."""
        return self._source.line_of(path) if self._source is not None else None

    def error_at(self, path: Sequence[Hashable], message: str) -> InputError:
        """An InputError at `path` of the suite file, for problems found after loading (an option the
        architecture builder rejects, a dataset file missing under `root`, ...)."""
        if self._source is not None:
            return self._source.error(path, message)
        return InputError(message, field=format_field(path) or None)

    def levels_for(self, entry: ModelEntry) -> tuple[float, ...]:
        """The entry's own levels, else the suite's."""
        return tuple(entry.levels if entry.levels is not None else self.levels)

    def entry(self, name: str) -> ModelEntry:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


# --- loading -----------------------------------------------------------------------------------------


class SuiteError(InputError):
    """Every problem of one suite file. The first is this error's file/line/field; `str()` lists all,
    one per line, sorted by line."""

    def __init__(self, problems: Sequence[InputError]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        rest = "".join(f"\n{p}" for p in self.problems[1:])
        super().__init__(first.message + rest, file=first.file, line=first.line, field=first.field)


def load_suite(path: Path, catalog: Catalog) -> Suite:
    """Read, validate and return the suite at `path`; raise `SuiteError` (an `InputError`) listing
    every problem with its line and dotted field. Trainer options become the trainer's Options
    instances (`ModelEntry.trainer_options`); `dataset.root` becomes an absolute path."""
    source = load_yaml(path)
    data = dict(source.data)
    problems: list[InputError] = []
    if "suite" not in data:
        if _NAME_RE.fullmatch(path.stem):
            data["suite"] = path.stem
        else:
            problems.append(
                source.error(
                    ("suite",),
                    f"the file name {path.stem!r} is not a valid suite name "
                    f"([A-Za-z0-9_-]+): add a `suite:` key",
                )
            )
    suite: Suite | None = None
    try:
        suite = Suite.model_validate(data, context={"catalog": catalog, "base_dir": path.parent.absolute()})
    except ValidationError as exc:
        problems += _from_validation(source, exc, (), Suite)
    problems += _duplicate_model_names(source, data)
    options, option_problems = _validate_options(source, data, catalog)
    problems += option_problems
    if problems or suite is None:
        raise SuiteError(_sorted(problems))
    models = [m.model_copy(update={"options": options[i]}) for i, m in enumerate(suite.models)]
    for i, model in enumerate(models):
        model._line = source.line_of(("models", i))
    loaded = suite.model_copy(update={"models": models})
    loaded._source = source
    loaded.dataset._line = source.line_of(("dataset",))
    return loaded


def _sorted(problems: list[InputError]) -> list[InputError]:
    unique = {str(p): p for p in problems}.values()
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0, p.field or ""))


def _duplicate_model_names(source: YamlSource, data: Mapping[str, Any]) -> list[InputError]:
    models = data.get("models")
    if not isinstance(models, list):
        return []
    first: dict[str, int] = {}
    out = []
    for i, entry in enumerate(models):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in first:
            out.append(
                source.error(
                    ("models", i, "name"), f"duplicate model name {name!r} (also models[{first[name]}])"
                )
            )
        else:
            first[name] = i
    return out


def _validate_options(
    source: YamlSource, data: Mapping[str, Any], catalog: Catalog
) -> tuple[dict[int, BaseModel], list[InputError]]:
    """Validate each entry's `options` with its trainer's Options model (entries whose trainer is
    unknown were already reported)."""
    models = data.get("models")
    if not isinstance(models, list):
        return {}, []
    validated: dict[int, BaseModel] = {}
    problems: list[InputError] = []
    for i, entry in enumerate(models):
        if not isinstance(entry, Mapping):
            continue
        trainer = entry.get("trainer")
        options = entry.get("options", {})
        if (
            not isinstance(trainer, str)
            or not isinstance(options, Mapping)
            or trainer not in catalog.trainers
        ):
            continue
        model_cls = catalog.trainers[trainer]
        try:
            validated[i] = model_cls.model_validate(dict(options))
        except ValidationError as exc:
            problems += _from_validation(source, exc, ("models", i, "options"), model_cls)
    return validated, problems


# Error types raised by this module's validators: their messages are complete already.
_OWN_ERRORS = frozenset(
    {
        "unknown_name",
        "levels_order",
        "duplicate",
        "path_type",
        "path_missing",
        "dataset_type",
        "options_type",
        "name_chars",
        "device",
    }
)


def _from_validation(
    source: YamlSource, exc: ValidationError, prefix: tuple[Hashable, ...], root: type[BaseModel]
) -> list[InputError]:
    """One InputError per pydantic error, located through the YAML line map."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        message = err["msg"]
        value = err.get("input")
        if kind == "extra_forbidden":
            model = _model_at(root, loc[:-1])
            allowed = sorted(model.model_fields) if model is not None else []
            message = unknown_name_message("key", str(loc[-1]), allowed) if allowed else "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "invalid_key":
            # pydantic puts the key itself last in `loc`: its line, but the mapping's field name
            line = source.line_of(prefix + loc)
            field = format_field(prefix + loc[:-1]) or None
            out.append(
                InputError(f"key {value!r} must be a string", file=source.file, line=line, field=field)
            )
            continue
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = f"expected a mapping, got {_describe(value)}"
        elif kind in ("list_type", "tuple_type"):
            message = f"expected a list, got {_describe(value)}"
        elif kind not in _OWN_ERRORS and kind not in ("too_short", "too_long"):
            message = f"{message} (got {_describe(value)})"
        path = prefix + loc
        out.append(source.error(path, message))
    return out


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(root: type[BaseModel], loc: Sequence[Hashable]) -> type[BaseModel] | None:
    """The pydantic model class found at `loc` below `root`, for listing allowed keys."""
    ann: Any = root
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(part, int):
            if get_origin(ann) in (list, tuple) and get_args(ann):
                ann = get_args(ann)[0]
                continue
            return None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(str(part))
            if field is None:
                return None
            ann = field.annotation
        elif get_origin(ann) is dict and len(get_args(ann)) == 2:
            ann = get_args(ann)[1]
        else:
            return None
    ann = _unwrap(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    """Strip Annotated[...] and pick the model (or first non-None type) out of a union."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
        elif origin is Union or origin is types.UnionType:
            args = [a for a in get_args(ann) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            ann = models[0] if models else args[0]
        else:
            return ann


__all__ = [
    "Catalog",
    "DatasetSpec",
    "Farm",
    "Measure",
    "ModelEntry",
    "Suite",
    "SuiteError",
    "Tolerance",
    "Tolerances",
    "format_field",
    "load_suite",
    "unknown_name_message",
]
