"""A QEMU instance standing in for a farm board on a labgrid exporter host.

A real board on a labgrid farm is two things an exporter publishes: its serial port, which ser2net
serves on a TCP port (a `NetworkSerialPort`), and its debug probe (`NetworkUSBDebugger`), through
which a labgrid driver flashes an image (OpenOCD, or pyOCD from a flash script). This agent is both
for a QEMU "board":

- a **serial port** on a stable TCP port (raw, like ser2net's raw mode), relayed to the UART of
  whichever QEMU instance runs now: the client connects once per session, whatever image runs;
- a **flasher** on a second TCP port: ``LOAD <bytes>`` + an ELF (re)starts QEMU with that image, the
  way a probe reflashes and resets a board; ``STOP`` powers it off; ``STATUS`` says what runs.

The exporter exports the first as a `NetworkSerialPort` (protocol raw) and the second as a
`NestbenchStandIn` resource; the harness flashes it with the matching labgrid driver
(`harness.farm.labgrid_drivers.StandInDriver`, a BootstrapProtocol like labgrid's OpenOCDDriver)
and talks to it through labgrid's SerialDriver, exactly as it does with a real board. What is stood
in: the probe and the flash algorithm (an ELF file is handed to QEMU instead of being written to
flash) and ser2net (this agent relays bytes itself). Run it with::

    python -m harness.farm.standin --name qemu-a --serial 127.0.0.1:0 --control 127.0.0.1:0

It prints ``ready name=qemu-a serial=HOST:PORT control=HOST:PORT`` once both ports listen.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from harness.errors import InfraError

MAX_IMAGE = 16 * 1024 * 1024
_CHUNK = 4096


# --- the flasher's client side (used by the labgrid driver) -------------------------------------------


def _reply(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace").strip()


def request(host: str, port: int, command: str, payload: bytes = b"", *, timeout_s: float = 30.0) -> str:
    """Send one control command (and its payload) to an agent; returns the text after ``OK``.
    `InfraError` when the agent cannot be reached or answers ``ERR``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(command.encode() + b"\n" + payload)
            answer = _reply(sock)
    except OSError as exc:
        raise InfraError(
            f"stand-in flasher at {host}:{port} unreachable: {exc}",
            hint="is the stand-in agent (python -m harness.farm.standin) running on the exporter host?",
        ) from exc
    word, _, rest = answer.partition(" ")
    if word != "OK":
        raise InfraError(
            f"stand-in flasher at {host}:{port}: {command.split()[0]} failed: {answer or 'no answer'}",
            hint="the agent's output says why (e.g. QEMU could not start the image)",
        )
    return rest


def load_image(host: str, port: int, elf: Path, *, timeout_s: float = 30.0) -> str:
    data = Path(elf).read_bytes()
    return request(host, port, f"LOAD {len(data)}", data, timeout_s=timeout_s)


# --- the agent ------------------------------------------------------------------------------------------


class _Board:
    """The QEMU instance running now, its UART, and the one connected serial client."""

    def __init__(self, qemu_args: str, qemu: str, log: Callable[[str], None]) -> None:
        self.qemu_args = qemu_args
        self.qemu = qemu
        self.log = log
        self.lock = threading.Lock()
        self.port: Any = None  # the running QEMU's pty (pyserial), None while powered off
        self.client: socket.socket | None = None
        self.description = "powered off"
        self._session_stop: threading.Event | None = None
        self._session_thread: threading.Thread | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="nestbench-standin-"))
        self._images = 0
        self._power = threading.Lock()  # one load or stop at a time

    def load(self, data: bytes) -> str:
        with self._power:
            return self._load(data)

    def _load(self, data: bytes) -> str:
        self._stop()
        for old in self._folder.glob("*.elf"):  # the image of the QEMU just stopped
            old.unlink()
        self._images += 1
        elf = self._folder / f"image-{self._images}.elf"
        elf.write_bytes(data)
        ready = threading.Event()
        stop = threading.Event()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=self._session, args=(elf, ready, stop, outcome), daemon=True)
        thread.start()
        ready.wait(30.0)
        if "error" in outcome or not ready.is_set():
            stop.set()
            thread.join(10.0)
            raise RuntimeError(str(outcome.get("error", "QEMU did not start within 30 s")))
        self._session_stop, self._session_thread = stop, thread
        return str(outcome["description"])

    def _session(
        self, elf: Path, ready: threading.Event, stop: threading.Event, outcome: dict[str, Any]
    ) -> None:
        # QEMU is started from this thread and lives as long as it: the process dies with the agent.
        from harness.backends.qemu import QemuBackend

        backend = QemuBackend(self.qemu_args, qemu=self.qemu, timeout_s=10.0)
        try:
            with backend.session(elf) as link:
                with self.lock:
                    self.port = link.port
                    self.description = link.description
                outcome["description"] = link.description
                ready.set()
                self._pump(link.port, stop)
        except Exception as exc:
            outcome["error"] = _one_line(exc)
            ready.set()
        finally:
            with self.lock:
                self.port = None
                self.description = "powered off"

    def _pump(self, port: Any, stop: threading.Event) -> None:
        """UART → client (dropped while nobody is connected, like a board's UART)."""
        while not stop.is_set():
            try:
                # one byte (or the read timeout), then whatever else is there: no reply waits
                data = port.read(1)
                if data and port.in_waiting:
                    data += port.read(min(port.in_waiting, _CHUNK))
            except Exception:
                return
            if not data:
                continue
            with self.lock:
                client = self.client
            if client is not None:
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def stop(self) -> None:
        with self._power:
            self._stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _stop(self) -> None:
        if self._session_stop is not None and self._session_thread is not None:
            self._session_stop.set()
            self._session_thread.join(15.0)
        self._session_stop = self._session_thread = None

    def serve_client(self, conn: socket.socket) -> None:
        """client → UART, for one connection; a new connection replaces the old one."""
        # UART bytes go out as they come: without this, Nagle holds each reply's tail back until
        # the client's delayed ACK (~40 ms a reply)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            old, self.client = self.client, conn
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        try:
            while True:
                data = conn.recv(_CHUNK)
                if not data:
                    break
                with self.lock:
                    port = self.port
                if port is not None:
                    with contextlib.suppress(Exception):
                        port.write(data)
        except OSError:
            pass
        finally:
            with self.lock:
                if self.client is conn:
                    self.client = None
            with contextlib.suppress(OSError):
                conn.close()


def _one_line(exc: BaseException) -> str:
    """An error for the one-line ``ERR`` answer: its first line, and what QEMU said if it said so."""
    lines = [
        line.strip() for line in (getattr(exc, "message", None) or str(exc)).splitlines() if line.strip()
    ]
    if not lines:
        return type(exc).__name__
    said = [line for line in lines[1:] if line.startswith("output:")]
    return " — ".join([lines[0], *said])[:400]


def _listen(spec: str) -> socket.socket:
    host, _, port = spec.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", int(port)))
    sock.listen(4)
    return sock


def _control(board: _Board, conn: socket.socket) -> None:
    with conn:
        conn.settimeout(60.0)
        what = "request"
        try:
            head = b""
            while not head.endswith(b"\n") and len(head) < 256:
                chunk = conn.recv(1)
                if not chunk:
                    return
                head += chunk
            words = head.decode("ascii", errors="replace").split()
            what = " ".join(words[:1]) or what
            if words[:1] == ["LOAD"] and len(words) == 2 and words[1].isdigit():
                size = int(words[1])
                if size > MAX_IMAGE:
                    conn.sendall(f"ERR image of {size} bytes exceeds {MAX_IMAGE}\n".encode())
                    return
                data = bytearray()
                while len(data) < size:
                    chunk = conn.recv(min(_CHUNK, size - len(data)))
                    if not chunk:
                        return
                    data += chunk
                answer = board.load(bytes(data))
                board.log(f"loaded a {size}-byte image: {answer}")
                conn.sendall(f"OK {answer}\n".encode())
            elif words == ["STOP"]:
                board.stop()
                conn.sendall(b"OK powered off\n")
            elif words == ["STATUS"]:
                with board.lock:
                    conn.sendall(f"OK {board.description}\n".encode())
            else:
                conn.sendall(b"ERR unknown command (LOAD <bytes>, STOP, STATUS)\n")
        except Exception as exc:  # a bad image or a dropped client: answer and keep serving
            board.log(f"{what} failed: {_one_line(exc)}")
            with contextlib.suppress(OSError):
                conn.sendall(f"ERR {_one_line(exc)}\n".encode())


def _accept_forever(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _default_qemu_args(target: str) -> str:
    from harness import targets
    from harness.paths import ROOT

    return targets.load_targets(ROOT)[target].options["custom_qemu_args"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A QEMU stand-in board for a labgrid exporter host")
    parser.add_argument("--name", required=True, help="the board's name (for logs)")
    parser.add_argument("--serial", default="127.0.0.1:0", help="HOST:PORT of the serial port (0: any)")
    parser.add_argument("--control", default="127.0.0.1:0", help="HOST:PORT of the flasher (0: any)")
    parser.add_argument("--target", default="qemu_mps2_an500", help="env whose custom_qemu_args to use")
    parser.add_argument("--qemu-args", default=None, help="QEMU arguments instead of the env's")
    parser.add_argument("--extra-qemu-args", default="", help="appended (e.g. -S: a board that never runs)")
    parser.add_argument("--qemu", default="qemu-system-arm")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(f"[{args.name}] {text}", flush=True)

    qemu_args = args.qemu_args if args.qemu_args is not None else _default_qemu_args(args.target)
    board = _Board(shlex.join([*shlex.split(qemu_args), *shlex.split(args.extra_qemu_args)]), args.qemu, log)
    serial_sock, control_sock = _listen(args.serial), _listen(args.control)
    threading.Thread(target=_accept_forever, args=(serial_sock, board.serve_client), daemon=True).start()
    threading.Thread(
        target=_accept_forever, args=(control_sock, lambda c: _control(board, c)), daemon=True
    ).start()
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s_host, s_port = serial_sock.getsockname()[:2]
    c_host, c_port = control_sock.getsockname()[:2]
    print(f"ready name={args.name} serial={s_host}:{s_port} control={c_host}:{c_port}", flush=True)
    done.wait()
    board.close()
    for sock in (serial_sock, control_sock):
        with contextlib.suppress(OSError):
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
