"""What every backend (QEMU, Renode, a board via pyOCD) provides: deploy an ELF, give a serial link.

The link is a pyserial object in every case (a pty for QEMU, a socket URL for Renode, the ST-LINK
virtual COM port for a board), so one protocol client (`harness.protocol`) serves them all.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import serial


@dataclass
class DeviceLink:
    port: serial.SerialBase  # open, ready for the protocol client
    description: str  # for logs and errors, e.g. "qemu pid 4242 on /dev/pts/7"
    diagnostics: Callable[[], str] = field(default=lambda: "")  # e.g. the emulator's stderr so far


class Backend(ABC):
    kind: ClassVar[str]  # "qemu", "board", "renode": the platformio.ini custom_nestbench_backend value

    @abstractmethod
    def session(self, elf: Path) -> contextlib.AbstractContextManager[DeviceLink]:
        """Deploy `elf` (flash or start the emulator), yield an open link, and tear down on exit,
        also when the body raises. Raises `InfraError` when the target cannot be reached."""


@contextlib.contextmanager
def closing_port(port: serial.SerialBase) -> Iterator[serial.SerialBase]:
    try:
        yield port
    finally:
        with contextlib.suppress(Exception):
            port.close()


def die_with_parent() -> None:
    """`preexec_fn` for emulator processes: the kernel kills the child when the harness dies, even by
    SIGKILL, so no emulator outlives an interrupted run (Linux; a no-op elsewhere). The signal follows
    the *thread* that started the child: start it from the thread that holds the session."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
