"""One lock per board, shared by every harness process on the host.

A board's lock is an OS file lock (`filelock`, flock on POSIX) on ``<lock dir>/<board id>.lock``: the
kernel drops it when its holder exits, even by SIGKILL, so a lock is never left stale. Beside it,
``<board id>.holder.json`` says who holds the board (pid, host, command, run, since) so a job that
waits can say whom it waits for; it is informational only (the flock decides).

The lock folder must be the same for every job on the host: ``$NESTBENCH_LOCK_DIR``, else the
hardware map's ``lock_dir``, else ``<tmp>/nestbench-locks`` (shared by all users; made writable for
all like /tmp itself).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.errors import InfraError

LOCK_DIR_ENV = "NESTBENCH_LOCK_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_POLL_S = 0.2
_REPEAT_NOTE_S = 30.0  # a long wait says again whom it waits for, this often


class BoardBusy(InfraError):
    """A board stayed busy longer than the wait bound."""


class Stopped(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): a wait was abandoned."""


def file_safe(text: str) -> str:
    """`text` as a file name: runs of other characters than letters, digits, `_.-` become `_`."""
    return _SAFE.sub("_", text).strip("_")


def default_lock_dir(configured: Path | None = None) -> Path:
    env = os.environ.get(LOCK_DIR_ENV)
    if env:
        return Path(env)
    if configured is not None:
        return configured
    return Path(tempfile.gettempdir()) / "nestbench-locks"


def _ensure_dir(folder: Path) -> None:
    shared = Path(tempfile.gettempdir()) / "nestbench-locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Jobs of several users share the boards of a host: the shared default folder is sticky and
        # world-writable like /tmp (a no-op, refused silently, when another user made it).
        if folder == shared or shared in folder.parents:
            with contextlib.suppress(OSError):
                shared.chmod(0o1777)
    except OSError as exc:
        raise InfraError(
            f"cannot create the board lock folder {folder}: {exc}",
            hint=f"set {LOCK_DIR_ENV} or the hardware map's lock_dir to a folder every job can write",
        ) from exc


def holder_text(info: dict[str, Any] | None) -> str:
    """``pid 4242 on host lab-3 (harness run nightly.yaml, run 20261121-0200-ab12) since 02:00:13``."""
    if not info:
        return "another process (no holder information)"
    parts = [f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"]
    what = info.get("command")
    if what:
        run = info.get("run")
        parts.append(f"({what}" + (f", run {run})" if run else ")"))
    since = info.get("since")
    if since:
        parts.append(f"since {since}")
    return " ".join(parts)


class BoardLock:
    """The lock of one board. `acquire` waits (bounded, abandonable), `release` frees it."""

    def __init__(self, folder: Path, board_id: str, *, command: str = "", run: str = "") -> None:
        self.folder = Path(folder)
        self.board_id = board_id
        safe = file_safe(board_id) or "board"
        self.path = self.folder / f"{safe}.lock"
        self.holder_path = self.folder / f"{safe}.holder.json"
        self.command = command
        self.run = run
        self._lock = FileLock(self.path, thread_local=False)

    def read_holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.holder_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(
        self,
        *,
        wait_s: float,
        stop: threading.Event | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> float:
        """Take the lock; returns the seconds waited. While the board is busy, `on_wait` is told who
        holds it (at once, then every 30 s); `stop` abandons the wait (`Stopped`); waiting longer
        than `wait_s` raises `BoardBusy` naming the holder."""
        _ensure_dir(self.folder)
        start = time.monotonic()
        told = -_REPEAT_NOTE_S
        while True:
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                pass
            else:
                self._write_holder()
                return time.monotonic() - start
            waited = time.monotonic() - start
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped while waiting for board {self.board_id}")
            holder = holder_text(self.read_holder())
            if waited >= wait_s:
                raise BoardBusy(
                    f"board {self.board_id} stayed busy for {waited:.0f} s (the wait bound), "
                    f"held by {holder}",
                    hint="raise the bound with --board-wait or the suite's farm.board_wait_s, or free "
                    f"the board (its lock is {self.path})",
                )
            if on_wait is not None and waited - told >= _REPEAT_NOTE_S:
                told = waited
                on_wait(f"board {self.board_id} is busy: held by {holder}; waiting up to {wait_s:g} s")
            if stop is not None:
                stop.wait(_POLL_S)
            else:
                time.sleep(_POLL_S)

    def _write_holder(self) -> None:
        info = {
            "board": self.board_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "run": self.run,
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        tmp = self.holder_path.with_name(f".{self.holder_path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
            os.replace(tmp, self.holder_path)

    def release(self, *, keep_holder: bool = False) -> None:
        """Free the lock. `keep_holder` leaves the holder file behind, as a dead holder's is: a mark
        that what the lock guards was left in use (a labgrid place that could not be released)."""
        if not self._lock.is_locked:
            return
        if not keep_holder:  # the lock is held here: whoever the file names, it is ours to remove
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
        self._lock.release(force=True)

    def take_over_dead_holder(self) -> dict[str, Any] | None:
        """The holder information a dead holder left (it died holding the lock, even by SIGKILL),
        with the lock now taken by this process; None when nobody left one or its holder lives."""
        if self.read_holder() is None:
            return None
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return None  # its holder lives and holds the lock
        left = self.read_holder()  # again: a holder may have finished cleanly meanwhile
        if left is None:
            self._lock.release(force=True)
        return left


__all__ = [
    "LOCK_DIR_ENV",
    "BoardBusy",
    "BoardLock",
    "Stopped",
    "default_lock_dir",
    "file_safe",
    "holder_text",
]
