"""What every backend (QEMU, Renode, a board via pyOCD) provides: deploy an ELF, give a serial link.

The link is a pyserial object in every case (a pty for QEMU, a socket URL for Renode, the ST-LINK
virtual COM port for a board), so one protocol client (`harness.protocol`) serves them all.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
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


def dying_with_parent(cmd: list[str]) -> list[str]:
    """`cmd`, made to be killed by the kernel when the thread that starts it ends, so no emulator
    outlives the harness, even one killed by SIGKILL (Linux, through util-linux's `setpriv`; `cmd`
    unchanged elsewhere). Start it from the thread that holds the session.

    Not a `preexec_fn`: that makes Python fork for real, and the fork handlers then run while other
    threads work. OpenBLAS's stops its thread pool under a running matrix product, which never
    returns (a farm run hung), and logging's can swallow a Ctrl-C. Without one, Python uses vfork."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd
