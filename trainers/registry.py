"""Trainer discovery: the ``nestbench.trainers`` entry-point group plus in-process registrations.

A package adds a trainer by declaring, in its own pyproject.toml::

    [project.entry-points."nestbench.trainers"]
    mytrainer = "mypkg.module:MyTrainer"

`register_trainer(cls)` adds one in-process (tests, notebooks) and wins over an entry point of the
same name.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from trainers.base import Trainer
from trainers.devices import resolve_device

GROUP = "nestbench.trainers"

_registered: dict[str, type[Trainer]] = {}


class TrainerPluginError(ImportError):
    """A trainer entry point failed to load or does not name a valid Trainer subclass."""


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # first on sys.path wins, as for imports
    return found


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    origin = f" (from distribution {dist.name} {dist.version})" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r} in group {GROUP!r}{origin}"


def _check(cls: object, where: str, expected_name: str | None) -> type[Trainer]:
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise TrainerPluginError(f"{where}: {cls!r} is not a subclass of trainers.base.Trainer")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TrainerPluginError(f"{where}: {cls.__qualname__} has no `name`")
    if expected_name is not None and name != expected_name:
        raise TrainerPluginError(f"{where}: the class is named {name!r}, not {expected_name!r}")
    return cls


def _load(ep: EntryPoint) -> type[Trainer]:
    where = _describe(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # any failure inside a plugin's import is reported the same way
        raise TrainerPluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    return _check(obj, where, ep.name)


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    """Register a trainer class in this process (usable as a class decorator); returns it."""
    _check(cls, f"register_trainer({getattr(cls, '__qualname__', cls)!r})", None)
    _registered[cls.name] = cls
    return cls


def unregister_trainer(name: str) -> None:
    """Remove an in-process registration (tests clean up with this)."""
    _registered.pop(name, None)


def trainer_names() -> list[str]:
    """Names of every known trainer, without importing any plugin."""
    return sorted(set(_entry_points()) | set(_registered))


def available_trainers() -> dict[str, type[Trainer]]:
    """Every trainer by name; loads all plugins and raises TrainerPluginError naming a broken one."""
    found = {name: _load(ep) for name, ep in _entry_points().items() if name not in _registered}
    found.update(_registered)
    return dict(sorted(found.items()))


def get_trainer(name: str) -> type[Trainer]:
    """The trainer `name` (loading only its own plugin); KeyError listing the known names."""
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    if name not in eps:
        raise KeyError(f"unknown trainer {name!r}; known: {', '.join(trainer_names()) or 'none'}")
    return _load(eps[name])


__all__ = [
    "GROUP",
    "TrainerPluginError",
    "available_trainers",
    "get_trainer",
    "register_trainer",
    "resolve_device",
    "trainer_names",
    "unregister_trainer",
]
