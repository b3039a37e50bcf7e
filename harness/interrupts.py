"""Ctrl-C and SIGTERM that are never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal arrives; when
that is inside a callback Python cannot propagate from (e.g. the fork hooks `subprocess` runs while
starting QEMU or PlatformIO), the exception is printed as "ignored" and the run would go on. So the
handler also remembers the request, and the run calls `check()` between steps to stop there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM arrived (even if its first raise was lost)."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM (a CI job cancelled, `kill`) stop a run: emulators are stopped, the
    records so far are kept and the run can be resumed."""

    def handler(signum: int, frame: FrameType | None) -> None:
        _requested.set()
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    _requested.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


__all__ = ["check", "stop_on_signals"]
