"""Content-addressed artifact cache: a second run of an unchanged suite trains and builds nothing.

An artifact is a folder ``<root>/<stage>/<key>``. The key is the SHA-256 of the canonical JSON of
everything the artifact depends on (options, seeds, upstream keys, and source trees via `hash_tree`).
`ArtifactCache.get_or_create` builds a missing artifact in a temporary folder next to its final place
and renames it in when complete, so a crash or an exception never leaves a half artifact, and it holds
a per-artifact file lock so concurrent runs (two suites sharing a cache, CI jobs) produce each
artifact once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from pydantic import BaseModel

CACHE_VERSION = 1  # bump when the layout of cached artifacts changes: old entries are then ignored
_MARKER = ".nestbench-artifact.json"  # written last, inside the folder: "this artifact is complete"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")  # no dots: temporaries are ".<key>.tmp-*"
_SKIP_DIRS = {"__pycache__", "node_modules"}


def canonical_json(value: Any) -> str:
    """Deterministic JSON for a cache key: sorted keys, no spaces; pydantic models, dataclasses,
    paths, enums, bytes, numpy scalars and arrays (by content hash) are reduced to plain data."""
    return json.dumps(
        _plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(**parts: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of `parts`."""
    text = canonical_json({"__cache_version__": CACHE_VERSION, **parts})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__sha256__": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {
            "__ndarray__": [str(data.dtype), list(data.shape), hashlib.sha256(data.tobytes()).hexdigest()]
        }
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"cache key parts need plain mapping keys, got {k!r}")
            out[str(k)] = _plain(v)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    raise TypeError(f"cannot put {type(value).__name__} into a cache key")


def hash_tree(paths: Iterable[Path], suffixes: Iterable[str] | None = None) -> str:
    """SHA-256 (hex) over files: each path is a file (always included) or a folder (searched
    recursively for files whose names end with one of `suffixes`, all files when None; folders named
    ``.*`` and ``__pycache__`` are skipped). Names are taken relative to each given path, so the hash
    does not depend on where the repository lies. A missing path raises FileNotFoundError."""
    ends = tuple(suffixes) if suffixes is not None else None
    digest = hashlib.sha256()
    for given in paths:
        root = Path(given)
        if root.is_file():
            files = [(root.name, root)]
        elif root.is_dir():
            files = sorted(_walk(root, ends))
        else:
            raise FileNotFoundError(f"cannot hash {root}: no such file or folder")
        digest.update(f"tree\0{root.name}\0{len(files)}\0".encode())
        for rel, path in files:
            digest.update(rel.encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _walk(root: Path, ends: tuple[str, ...] | None) -> Iterable[tuple[str, Path]]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        for name in names:
            if ends is None or name.endswith(ends):
                path = Path(folder) / name
                if path.is_file():
                    yield path.relative_to(root).as_posix(), path


class ArtifactCache:
    """Artifacts under `root`, one folder per (stage, key)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._refreshed: set[tuple[str, str]] = set()

    key = staticmethod(cache_key)

    def path(self, stage: str, key: str) -> Path:
        """Where the artifact lives (whether or not it exists)."""
        for name in (stage, key):
            if not _NAME_RE.match(name):
                raise ValueError(f"{name!r} cannot name a cache folder")
        return self.root / stage / key

    def exists(self, stage: str, key: str) -> bool:
        """True when the artifact is complete."""
        return (self.path(stage, key) / _MARKER).is_file()

    def get_or_create(self, stage: str, key: str, produce: Callable[[Path], None], *,
                      refresh: bool = False) -> Path:  # fmt: skip
        """Return the artifact's folder, running ``produce(tmp_folder)`` first when it is missing.
        `produce` fills the empty folder it is given; when it returns, the folder is moved into place
        atomically; when it raises, the folder is deleted and the exception propagates. With `refresh`
        the artifact is produced again, once per cache object (``--no-cache``)."""
        final = self.path(stage, key)
        fresh = refresh and (stage, key) not in self._refreshed
        if not fresh and self.exists(stage, key):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final.parent / f".{key}.lock")):
            if not fresh and self.exists(stage, key):
                return final  # another process made it while we waited
            self._clear_leftovers(final)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}.tmp-"))
            try:
                produce(tmp)
                if not tmp.is_dir():
                    raise RuntimeError(f"producing {stage}/{key} removed its own folder")
                marker = {"stage": stage, "key": key, "version": CACHE_VERSION}
                (tmp / _MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
                self._move_into_place(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if refresh:
                self._refreshed.add((stage, key))
        return final

    @staticmethod
    def _clear_leftovers(final: Path) -> None:
        # temporaries of a producer that was killed (-9, power loss); we hold the lock, so no live one
        for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
            for stale in final.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        if final.exists() and not (final / _MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # not ours, or from an older layout

    @staticmethod
    def _move_into_place(tmp: Path, final: Path) -> None:
        old = None
        if final.exists():  # a refresh: swap the old artifact out, then delete it
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.rmdir(old)
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


__all__ = ["CACHE_VERSION", "ArtifactCache", "cache_key", "canonical_json", "hash_tree"]
