"""QEMU backend: run an ELF in `qemu-system-arm` and hand back its UART as a pyserial port on a pty.

QEMU is started with the env's `custom_qemu_args` (machine, CPU, icount) plus a fixed head-less tail:
`-nodefaults -display none -monitor none -serial pty -kernel ELF`. It announces the pty on stdout
("char device redirected to /dev/pts/N"); we open it right away with pyserial (exclusive access).

Checked on QEMU 7.2: while nobody has the pty open QEMU *drops* UART output (it never blocks the
guest), so the `! boot` banner may be lost, which is fine since the protocol is host-initiated. Once
the host has the pty open nothing is lost. QEMU notices a newly opened pty by polling about once a
second, so we open it as soon as its name is printed: the first reply then comes within milliseconds
instead of up to a second later. The emulator is always killed when the session ends, also on errors.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, ClassVar

import serial

from harness.backends.base import Backend, DeviceLink, dying_with_parent
from harness.errors import InfraError

_PTY_RE = re.compile(r"char device redirected to (\S+)")
_HEADLESS = ["-nodefaults", "-display", "none", "-monitor", "none", "-serial", "pty"]
_INSTALL_HINT = "install QEMU for Arm: `sudo apt-get install qemu-system-arm` (or run ./dev.sh setup)"


class _PtyWatch:
    """The pty name, from whichever output stream announces it (stdout on QEMU 7.2)."""

    def __init__(self, streams: int) -> None:
        self.name: str | None = None
        self.done = threading.Event()  # the name was found, or every stream ended
        self._open_streams = streams
        self._lock = threading.Lock()

    def offer(self, line: str) -> None:
        match = _PTY_RE.search(line)
        if match:
            with self._lock:
                self.name = self.name or match.group(1)
            self.done.set()

    def stream_ended(self) -> None:
        with self._lock:
            self._open_streams -= 1
            if self._open_streams == 0:
                self.done.set()


class _OutputCollector:
    """Drains one of QEMU's output pipes on a thread (a full pipe would stall QEMU) and keeps it."""

    def __init__(self, stream: IO[str], watch: _PtyWatch) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(stream, watch), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str], watch: _PtyWatch) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line)
            watch.offer(line)
        watch.stream_ended()

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class QemuBackend(Backend):
    kind: ClassVar[str] = "qemu"

    def __init__(
        self,
        qemu_args: str,
        *,
        timeout_s: float = 10.0,
        boot_timeout_s: float | None = None,
        qemu: str = "qemu-system-arm",
        baudrate: int = 115200,
    ) -> None:
        """`qemu_args`: the env's custom_qemu_args (shell syntax); `timeout_s`: per device command
        (for the protocol client, see `command_timeout`); `boot_timeout_s`: until the pty is open."""
        self.qemu_args = shlex.split(qemu_args)
        self.command_timeout = timeout_s
        self.boot_timeout = boot_timeout_s if boot_timeout_s is not None else max(timeout_s, 10.0)
        self.qemu = qemu
        self.baudrate = baudrate

    def command(self, elf: Path) -> list[str]:
        exe = shutil.which(self.qemu)
        if exe is None:
            raise InfraError(f"{self.qemu} is not on PATH (needed for the QEMU target)", hint=_INSTALL_HINT)
        return [exe, *self.qemu_args, *_HEADLESS, "-kernel", str(elf)]

    @contextlib.contextmanager
    def session(self, elf: Path) -> Iterator[DeviceLink]:
        if not elf.is_file():
            raise InfraError(f"firmware image {elf} does not exist", hint="build the firmware first")
        cmd = self.command(elf)
        try:
            proc = subprocess.Popen(
                dying_with_parent(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise InfraError(f"cannot start {cmd[0]}: {exc}", hint=_INSTALL_HINT) from exc
        assert proc.stdout is not None and proc.stderr is not None
        watch = _PtyWatch(streams=2)
        stdout = _OutputCollector(proc.stdout, watch)
        stderr = _OutputCollector(proc.stderr, watch)

        def diagnostics() -> str:
            status = "" if proc.poll() is None else f"[qemu exited with {proc.returncode}]\n"
            return stderr.text() + stdout.text() + status

        port: serial.Serial | None = None
        try:
            watch.done.wait(self.boot_timeout)
            if watch.name is None:
                # Both pipes closing means QEMU is exiting; give it a moment to be reaped.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
                alive = proc.poll() is None
                what = (
                    f"QEMU did not open its serial pty within {self.boot_timeout:g} s"
                    if alive
                    else f"QEMU exited with {proc.returncode} before opening its serial pty"
                )
                raise InfraError(
                    what + f"\n  command: {shlex.join(cmd)}\n  output: {diagnostics().strip()[-800:]}",
                    hint="check custom_qemu_args in platformio.ini and that the ELF was built for "
                    "this machine",
                )
            try:
                port = serial.Serial(watch.name, baudrate=self.baudrate, timeout=0.05, exclusive=True)
            except (serial.SerialException, OSError) as exc:
                raise InfraError(
                    f"cannot open QEMU's pty {watch.name}: {exc}", hint="another program may hold the pty"
                ) from exc
            yield DeviceLink(
                port=port, description=f"qemu pid {proc.pid} on {watch.name}", diagnostics=diagnostics
            )
        finally:
            if port is not None:
                with contextlib.suppress(Exception):
                    port.close()
            _stop(proc)
            stdout.join(2.0)
            stderr.join(2.0)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5.0)
