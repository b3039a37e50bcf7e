"""A real board behind a debug probe: flash with pyOCD, talk over the probe's virtual COM port.

Boards are identified by the probe's unique ID, and the serial port by its USB serial number, which
for an ST-LINK (and for CMSIS-DAP/DAPLink probes) is the same string: so one UID pins both the board
that gets flashed and the port that gets read. Flashing a board other than the one asked for is the
classic board-farm failure, so a requested UID must match exactly (pyOCD itself matches substrings).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import serial
from serial.tools import list_ports

from harness import tools
from harness.backends.base import Backend, DeviceLink, closing_port
from harness.errors import InfraError

DEFAULT_BAUD = 115200
PROBE_HINT = (
    "`pyocd list` shows the probes pyOCD can reach; on Linux a probe that is plugged in but not listed "
    "usually lacks udev rules (https://github.com/pyocd/pyOCD/tree/main/udev) or is held by another program"
)
PORT_HINT = (
    "set the board's `port` option (custom_port in platformio.ini or the hardware map); on Linux the user "
    "needs access to the port (group dialout) and `python -m serial.tools.list_ports -v` lists the ports "
    "with their serial numbers"
)


@dataclass(frozen=True)
class ProbeInfo:
    unique_id: str
    description: str = ""
    board_target: str = ""  # pyOCD target of the board the probe sits on, when pyOCD knows it

    @property
    def label(self) -> str:
        return f"{self.unique_id} ({self.description})" if self.description else self.unique_id


@dataclass(frozen=True)
class PortInfo:
    device: str  # e.g. /dev/ttyACM0, COM5
    serial_number: str | None  # USB serial number, None for non-USB ports
    description: str = ""

    @property
    def label(self) -> str:
        return f"{self.device} (serial {self.serial_number or 'none'})"


def list_probes() -> list[ProbeInfo]:
    """Probes pyOCD sees now, without waiting for one to appear."""
    try:
        from pyocd.core.helpers import ConnectHelper
    except ImportError as exc:
        raise InfraError(f"pyOCD is not importable: {exc}", hint=tools.install_hint("pyocd")) from exc
    # pyOCD logs a warning per probe it cannot open; the caller reports what is missing instead.
    logger = logging.getLogger("pyocd")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        probes = ConnectHelper.get_all_connected_probes(blocking=False)
    except Exception as exc:  # pyOCD raises assorted USB errors while enumerating
        raise InfraError(f"pyOCD could not list debug probes: {exc}", hint=PROBE_HINT) from exc
    finally:
        logger.setLevel(level)
    return [ProbeInfo(str(p.unique_id), str(p.description), _board_target(p)) for p in probes]


def _board_target(probe: Any) -> str:
    try:
        info = probe.associated_board_info
    except Exception:  # reading the board ID talks to the probe; a failure only loses the hint
        return ""
    return str(info.target or "") if info is not None else ""


def list_serial_ports() -> list[PortInfo]:
    return [PortInfo(p.device, p.serial_number, p.description or "") for p in list_ports.comports()]


def _same_id(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def select_probe(probes: Sequence[ProbeInfo], requested: str | None) -> ProbeInfo:
    """The probe with UID `requested` (exact, case-insensitive), or the only probe when none is requested."""
    seen = ", ".join(p.label for p in probes) or "none"
    if requested:
        matches = [p for p in probes if _same_id(p.unique_id, requested)]
        if len(matches) == 1:
            return matches[0]
        if not probes:
            raise InfraError(f"no debug probe attached (wanted probe {requested})", hint=PROBE_HINT)
        raise InfraError(f"probe {requested} is not attached; probes seen: {seen}", hint=PROBE_HINT)
    if not probes:
        raise InfraError("no debug probe attached", hint=PROBE_HINT)
    if len(probes) > 1:
        raise InfraError(
            f"{len(probes)} debug probes attached: {seen}; pick one",
            hint="set the board's `probe` option to one of these unique IDs "
            "(custom_probe in platformio.ini or the hardware map)",
        )
    return probes[0]


def match_port(ports: Sequence[PortInfo], probe_uid: str, override: str | None = None) -> str:
    """The serial port to talk to: `override` if given, else the port whose USB serial number is the UID."""
    seen = ", ".join(p.label for p in ports) or "none"
    if override:
        # pyserial URLs (socket://, rfc2217://) and paths not enumerated as ports (symlinks from udev
        # rules such as /dev/nucleo-3) are taken as given when they exist.
        if "://" in override or any(p.device == override for p in ports) or os.path.exists(override):
            return override
        raise InfraError(f"serial port {override} not found; ports seen: {seen}", hint=PORT_HINT)
    matches = [p.device for p in ports if p.serial_number and _same_id(p.serial_number, probe_uid)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InfraError(
            f"no serial port has USB serial number {probe_uid} (the probe's UID); ports seen: {seen}",
            hint=PORT_HINT,
        )
    raise InfraError(
        f"several serial ports belong to probe {probe_uid}: {', '.join(matches)}; pick one", hint=PORT_HINT
    )


class BoardBackend(Backend):
    kind: ClassVar[str] = "board"

    def __init__(
        self,
        *,
        pyocd_target: str,
        probe: str | None = None,
        port: str | None = None,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = 10.0,
        probes: Callable[[], list[ProbeInfo]] = list_probes,
        ports: Callable[[], list[PortInfo]] = list_serial_ports,
    ) -> None:
        self.pyocd_target = pyocd_target
        self.probe = probe
        self.port = port
        self.baud = int(baud)
        self.timeout_s = timeout_s
        self._probes = probes
        self._ports = ports

    def resolve(self) -> tuple[ProbeInfo, str]:
        """(probe, serial port) this backend would use, without touching the board."""
        probe = select_probe(self._probes(), self.probe)
        return probe, match_port(self._ports(), probe.unique_id, self.port)

    @contextlib.contextmanager
    def session(self, elf: Path) -> Iterator[DeviceLink]:
        if not elf.is_file():
            raise InfraError(f"no firmware image at {elf}", hint="build it first")
        tools.require("pyocd")
        # Resolve the port before flashing: a board we cannot talk to is not worth flashing.
        probe, port_name = self.resolve()
        with self._pyocd_session(probe.unique_id) as pyocd_session:
            self._flash(pyocd_session, elf, probe)
            port = self._open_port(port_name)
            with closing_port(port):
                port.reset_input_buffer()  # drop what the old image printed
                self._reset(pyocd_session, probe)

                def diagnostics() -> str:
                    return self._diagnostics(pyocd_session, probe)

                yield DeviceLink(
                    port=port,
                    description=f"{self.pyocd_target} via probe {probe.label} on {port_name}",
                    diagnostics=diagnostics,
                )

    @contextlib.contextmanager
    def _pyocd_session(self, uid: str) -> Iterator[Any]:
        from pyocd.core.helpers import ConnectHelper

        try:
            session = ConnectHelper.session_with_chosen_probe(
                blocking=False,
                unique_id=uid,
                auto_open=False,
                target_override=self.pyocd_target,
                hide_programming_progress=True,
                resume_on_disconnect=True,
            )
        except Exception as exc:
            raise InfraError(
                f"pyOCD could not create a session for probe {uid}: {exc}", hint=PROBE_HINT
            ) from exc
        if session is None:
            # Gone since it was listed, or (pyOCD matching substrings) its ID is part of another probe's.
            raise InfraError(f"pyOCD cannot find probe {uid} on its own", hint=PROBE_HINT)
        # pyOCD matches UIDs by substring: refuse anything but the exact probe we resolved.
        actual = str(session.probe.unique_id) if session.probe is not None else "none"
        if not _same_id(actual, uid):
            raise InfraError(f"pyOCD picked probe {actual}, not {uid}: refusing to flash it", hint=PROBE_HINT)
        try:
            session.open()
        except Exception as exc:
            raise InfraError(
                f"cannot connect to {self.pyocd_target} through probe {uid}: {exc}",
                hint="check the board is powered, the target type (custom_pyocd_target) and the SWD "
                "connection; `pyocd commander -u <uid>` tries the same interactively",
            ) from exc
        try:
            yield session
        finally:
            with contextlib.suppress(Exception):
                session.close()

    def _flash(self, session: Any, elf: Path, probe: ProbeInfo) -> None:
        from pyocd.flash.file_programmer import FileProgrammer

        try:
            FileProgrammer(session).program(str(elf), file_format="elf")
        except Exception as exc:
            raise InfraError(
                f"flashing {elf.name} through probe {probe.label} failed: {exc}",
                hint="check the image was built for this board and `pyocd flash -u <uid> -t "
                f"{self.pyocd_target} {elf}` by hand; a locked flash needs `pyocd erase --chip`",
            ) from exc

    def _reset(self, session: Any, probe: ProbeInfo) -> None:
        try:
            session.board.target.reset()  # reset and run the new image
        except Exception as exc:
            raise InfraError(f"reset through probe {probe.label} failed: {exc}", hint=PROBE_HINT) from exc

    def _open_port(self, name: str) -> serial.SerialBase:
        try:
            port = serial.serial_for_url(name, baudrate=self.baud, timeout=0.1, do_not_open=True)
            if os.name == "posix" and isinstance(port, serial.Serial):
                port.exclusive = True  # two harnesses on one board would corrupt each other's frames
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise InfraError(f"cannot open serial port {name}: {exc}", hint=PORT_HINT) from exc
        return port

    def _diagnostics(self, session: Any, probe: ProbeInfo) -> str:
        try:
            state = session.board.target.get_state()
            return f"probe {probe.label}: core state {getattr(state, 'name', state)}"
        except Exception as exc:
            return f"probe {probe.label}: core state unknown ({exc})"
