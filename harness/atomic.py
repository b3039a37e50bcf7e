"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Data goes to a temporary file in the destination's folder (same file system, so the final rename is
atomic), is flushed and fsynced, and replaces the destination with `os.replace`. On any error the
temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd


def _umask() -> int:
    # mkstemp creates files 0600; final files should get the usual mode (0644 under umask 022)
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without error, fsync it and move it
    onto `path`. The block writes the temporary path by any means (a library's `to_parquet`, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_frame(path: Path, frame: pd.DataFrame) -> None:
    """Write `frame` (without its index) as CSV or Parquet, chosen by `path`'s suffix, atomically."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        atomic_write_with(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
    elif suffix == ".parquet":
        atomic_write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        raise ValueError(f"cannot tell the format of {path}: expected .csv or .parquet")


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not every file system lets a folder be opened for this
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
