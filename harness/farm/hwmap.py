"""The hardware map: the boards of a single-host farm, one YAML file (cf. Zephyr twister's map).

::

    lock_dir: /var/lib/nestbench/locks   # optional: where the per-board locks live (relative to this
                                         # file; $NESTBENCH_LOCK_DIR wins; default <tmp>/nestbench-locks)
    boards:
      - id: 0670FF383930434B43124922     # the probe's unique ID (`pyocd list`): the board that is
        kind: nucleo_f767zi              #   flashed; a target name from platformio.ini
        usb_serial: 0670FF383930434B43124922   # optional: the serial port by its USB serial number
        serial: /dev/ttyACM0             # optional: or the port itself (path, socket://, rfc2217://)
        host: lab-pi-3                   # optional: the host the board hangs off; a job on another
                                         #   host skips it, so one map can serve a whole lab
        options: {baud: 115200}          # optional, per backend (below)
      - id: qemu-a                       # a QEMU instance standing in for a board
        kind: qemu_mps2_an500
        options: {qemu_args: "-S"}       # extra QEMU arguments (here: a board that never runs)

Options per backend: a board takes ``baud`` and ``pyocd_target`` (default: the env's
custom_pyocd_target); a QEMU stand-in takes ``qemu`` (the executable) and ``qemu_args`` (appended to
the env's custom_qemu_args); a Renode board takes none. Without ``serial`` or ``usb_serial`` a board's
port is the one whose USB serial number is its probe UID (true of ST-LINK and DAPLink probes).

Every mistake is an `InputError` (exit 2) naming the file, the line and the field, before any work.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import targets
from harness.backends.base import Backend
from harness.errors import InfraError, InputError
from harness.farm.boards import Board, BoardSource, Claim
from harness.farm.locks import BoardLock, default_lock_dir
from harness.suite import SuiteError, _from_validation, unknown_name_message
from harness.yamlsrc import YamlSource, load_yaml

_ID_RE = re.compile(r"^[^\s/\\]{1,128}$")
OPTIONS = {
    "board": ("baud", "pyocd_target"),
    "qemu": ("qemu", "qemu_args"),
    "renode": (),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Text = Annotated[str, Field(min_length=1, max_length=512)]


class BoardEntry(_Strict):
    id: Text
    kind: Text
    serial: Text | None = None
    usb_serial: Text | None = None
    host: Text | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class HardwareMap(_Strict):
    lock_dir: Text | None = None
    boards: Annotated[list[BoardEntry], Field(min_length=1, max_length=1000)]


def this_host() -> set[str]:
    """Names a map's `host:` may use for this machine."""
    names = {"localhost", socket.gethostname()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn())
    return {n.lower() for n in names if n}


def load_hardware_map(
    path: Path, all_targets: Mapping[str, targets.Target]
) -> tuple[list[Board], list[Board], Path | None]:
    """(boards of this host, boards of other hosts, lock folder) of the map at `path`; `SuiteError`
    (an InputError listing every problem with its line) on a bad map."""
    source = load_yaml(path)
    try:
        parsed = HardwareMap.model_validate(source.data)
    except ValidationError as exc:
        raise SuiteError(_from_validation(source, exc, (), HardwareMap)) from None
    problems = _check(source, parsed, all_targets)
    if problems:
        raise SuiteError(problems)
    lock_dir = None
    if parsed.lock_dir is not None:
        lock_dir = Path(os.path.expanduser(parsed.lock_dir))
        if not lock_dir.is_absolute():
            lock_dir = path.parent.absolute() / lock_dir
    here: list[Board] = []
    elsewhere: list[Board] = []
    names = this_host()
    for i, entry in enumerate(parsed.boards):
        board = Board(
            id=entry.id,
            kind=entry.kind,
            source="hwmap",
            host=entry.host,
            serial=entry.serial,
            usb_serial=entry.usb_serial,
            options=dict(entry.options),
            line=source.line_of(("boards", i)),
        )
        (here if entry.host is None or entry.host.lower() in names else elsewhere).append(board)
    return here, elsewhere, lock_dir


def _check(
    source: YamlSource, parsed: HardwareMap, all_targets: Mapping[str, targets.Target]
) -> list[InputError]:
    problems: list[InputError] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(parsed.boards):

        def at(*path_and_message: str, i: int = i) -> InputError:
            *path, message = path_and_message
            return source.error(("boards", i, *path), message)

        if not _ID_RE.match(entry.id):
            problems.append(at("id", f"a board ID has no spaces or slashes (got {entry.id!r})"))
        if entry.id in seen:
            problems.append(at("id", f"board ID {entry.id!r} appears twice (also boards[{seen[entry.id]}])"))
        seen.setdefault(entry.id, i)
        target = all_targets.get(entry.kind)
        if target is None:
            problems.append(at("kind", unknown_name_message("board kind (target)", entry.kind, all_targets)))
            continue
        if target.backend != "board":
            for key in ("serial", "usb_serial"):
                if getattr(entry, key) is not None:
                    problems.append(
                        at(
                            key,
                            f"a {target.backend} board has no serial port of its own "
                            "(its UART is the emulator's)",
                        )
                    )
        allowed = OPTIONS[target.backend]
        for key, value in entry.options.items():
            if key not in allowed:
                known = unknown_name_message(f"option for a {target.backend} board", str(key), allowed)
                problems.append(at("options", key, known))
            elif key == "baud" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                problems.append(at("options", key, f"expected a positive integer, got {value!r}"))
            elif key != "baud" and not isinstance(value, str):
                problems.append(at("options", key, f"expected a string, got {value!r}"))
    return problems


class HardwareMapSource(BoardSource):
    """Boards from a hardware map; a host-wide file lock per board keeps jobs off each other."""

    def __init__(
        self,
        path: Path,
        all_targets: Mapping[str, targets.Target],
        *,
        command: str = "",
        run: str = "",
    ) -> None:
        self.path = path
        self.name = f"hardware map {path}"
        self._boards, self.elsewhere, configured = load_hardware_map(path, all_targets)
        self.lock_dir = default_lock_dir(configured)
        self.all_targets = all_targets
        self.command = command
        self.run = run

    def boards(self) -> list[Board]:
        return list(self._boards)

    @contextlib.contextmanager
    def claim(
        self,
        board: Board,
        *,
        wait_s: float,
        stop: threading.Event,
        on_wait: Callable[[str], None],
    ) -> Iterator[Claim]:
        lock = BoardLock(self.lock_dir, board.id, command=self.command, run=self.run)
        waited = lock.acquire(wait_s=wait_s, stop=stop, on_wait=on_wait)
        try:
            claim = MappedClaim(board)
            claim.waited_s = waited
            yield claim
        finally:
            lock.release()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "lock_dir": str(self.lock_dir),
            "other_hosts": {b.id: b.host for b in self.elsewhere},
        }


class MappedClaim(Claim):
    def __init__(self, board: Board) -> None:
        self.board = board

    def backend(self, target: targets.Target, root: Path, *, timeout_s: float) -> Backend:
        return board_backend(self.board, target, root, timeout_s=timeout_s)


def board_backend(board: Board, target: targets.Target, root: Path, *, timeout_s: float) -> Backend:
    """The backend of a mapped board: pinned to its probe UID and port (a real board), or a QEMU
    instance with the board's own options (a stand-in)."""
    options = dict(board.options)
    if target.backend == "qemu":
        from harness.backends.qemu import QemuBackend

        args = target.options["custom_qemu_args"] + " " + str(options.get("qemu_args", ""))
        qemu = str(options.get("qemu", "qemu-system-arm"))
        return QemuBackend(args.strip(), timeout_s=timeout_s, qemu=qemu)
    if target.backend == "board":
        port = board.serial
        if port is None and board.usb_serial is not None:
            port = _port_by_usb_serial(board.usb_serial)
        settings: dict[str, Any] = {"probe": board.id, **options}
        if port is not None:
            settings["port"] = port
        return targets.make_backend(target, root, timeout_s=timeout_s, board_options=settings)
    return targets.make_backend(target, root, timeout_s=timeout_s)


def _port_by_usb_serial(usb_serial: str) -> str:
    from harness.backends.board import PORT_HINT, list_serial_ports

    ports = list_serial_ports()
    found = [p.device for p in ports if p.serial_number and p.serial_number.lower() == usb_serial.lower()]
    if len(found) == 1:
        return found[0]
    seen = ", ".join(p.label for p in ports) or "none"
    what = "no serial port has" if not found else f"{len(found)} serial ports have"
    raise InfraError(f"{what} USB serial number {usb_serial}; ports seen: {seen}", hint=PORT_HINT)


__all__ = ["OPTIONS", "BoardEntry", "HardwareMap", "HardwareMapSource", "board_backend", "load_hardware_map"]
