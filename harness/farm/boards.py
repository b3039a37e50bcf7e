"""A farm's boards and where they come from.

A `Board` is one device a worker owns for the run: a NUCLEO behind its probe, a QEMU instance
standing in for a board, a labgrid place. A `BoardSource` lists the boards (`boards`), gives a
worker exclusive use of one for a while (`claim`: a host-wide file lock for the hardware map, a
labgrid reservation + acquisition for labgrid places) and builds the backend that deploys images to
it while it is claimed. The scheduler knows nothing else of a source, so the hardware map and a
labgrid coordinator are two sources of the same board list and suites do not change.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import targets
from harness.backends.base import Backend

LOCAL = "local"  # the source of a kind with no board listed: one local instance (emulators)


@dataclass(frozen=True)
class Board:
    id: str  # what records show in `board`: probe UID, stand-in name, labgrid place; "" for LOCAL
    kind: str  # a target name (platformio.ini env)
    source: str  # "hwmap" | "labgrid" | LOCAL
    host: str | None = None
    serial: str | None = None  # serial port path or pyserial URL
    usb_serial: str | None = None  # the serial port's USB serial number
    options: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None  # line in the hardware map

    @property
    def label(self) -> str:
        return self.id or f"local {self.kind}"

    def describe(self) -> dict[str, Any]:
        """What run.json says about the board."""
        info: dict[str, Any] = {"kind": self.kind, "source": self.source}
        for key in ("host", "serial", "usb_serial"):
            value = getattr(self, key)
            if value:
                info[key] = value
        if self.options:
            info["options"] = dict(self.options)
        return info


class Claim(ABC):
    """Exclusive use of a board until the claim's context ends."""

    waited_s: float = 0.0

    @abstractmethod
    def backend(self, target: targets.Target, root: Path, *, timeout_s: float) -> Backend:
        """The backend that deploys an image to the claimed board."""


class BoardSource(ABC):
    name: str  # for logs and run.json: "hardware map farm.yaml", "labgrid 10.0.0.5:20408"
    # Who holds a board, for the holder information other jobs see while they wait for it.
    command: str = ""  # e.g. "harness run suites/nightly.yaml --labgrid lab:20408"
    run: str = ""  # the run folder's name, once the run has one

    @abstractmethod
    def boards(self) -> list[Board]:
        """Every board of the source, whatever its kind."""

    @abstractmethod
    def claim(
        self,
        board: Board,
        *,
        wait_s: float,
        stop: threading.Event,
        on_wait: Callable[[str], None],
    ) -> contextlib.AbstractContextManager[Claim]:
        """Exclusive use of `board`: waits while another job holds it (telling `on_wait` who), at
        most `wait_s` (then `BoardBusy`), abandons the wait when `stop` is set (`Stopped`), and frees
        the board when the context ends, also on errors."""

    def close(self) -> None:  # noqa: B027 (optional: most sources hold nothing between claims)
        """Free whatever the source still holds (the safety net of an interrupted run)."""

    def describe(self) -> dict[str, Any]:
        return {"source": self.name}

    def notices(self) -> list[str]:
        """What the run should tell its user about the source before it starts (e.g. boards that a
        dead run had left held, and that the source freed)."""
        return []


class LocalClaim(Claim):
    """An emulator kind with no listed board: a fresh local instance, nothing to lock."""

    def backend(self, target: targets.Target, root: Path, *, timeout_s: float) -> Backend:
        return targets.make_backend(target, root, timeout_s=timeout_s)


@contextlib.contextmanager
def local_claim() -> Iterator[Claim]:
    yield LocalClaim()


def local_board(kind: str) -> Board:
    return Board(id="", kind=kind, source=LOCAL)


__all__ = ["LOCAL", "Board", "BoardSource", "Claim", "LocalClaim", "local_board", "local_claim"]
