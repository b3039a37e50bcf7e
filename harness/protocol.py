"""Host side of the nestbench UART protocol (NBP v1, docs/protocol.md).

`DeviceClient` speaks to any open pyserial object (a QEMU pty, a `socket://` URL for Renode, a board's
ST-LINK virtual COM port). Every request line is framed as `SEQ COMMAND ARGS*CRC32`; every attempt
gets a fresh sequence number so a late reply to an earlier attempt is recognised and dropped. A
request the device could not read (`? err crc`) or a reply that arrives corrupted is resent, a
bounded number of times (every command is idempotent). No complete reply within the timeout raises
`DeviceTimeout`; a `! fault` event raises `DeviceFault` with the registers; an `err` reply raises
`DeviceCommandError`. Every line sent and received goes to the optional log.
"""

from __future__ import annotations

import collections
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import serial

from harness.errors import DeviceError, DeviceFault, DeviceTimeout

PROTO_VERSION = "1"
DEFAULT_MAXLINE = 255
MAX_RUNS = 32  # timed inferences per `infer`
_SEQ_MAX = 65535
_POLL_S = 0.02  # read granularity while waiting for a reply
_HISTORY = 30  # UART lines kept for error messages


class _TextSink(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


LogTarget = Callable[[str], None] | _TextSink | None


class DeviceCommandError(DeviceError):
    """The device answered `SEQ err CODE ...` (unknown command, bad argument, range, state, ...)."""

    def __init__(self, command: str, code: str, detail: str, *, last_lines: list[str] | None = None) -> None:
        self.command = command
        self.code = code
        self.detail = detail
        super().__init__(
            f"device rejected {command!r}: {code}" + (f" ({detail})" if detail else ""),
            hint="see docs/protocol.md for the command's arguments and error codes",
            last_lines=last_lines,
        )


def frame(body: str) -> str:
    """`BODY*CRC`: the CRC-32 of BODY's bytes as 8 lowercase hex digits (no newline)."""
    return f"{body}*{zlib.crc32(body.encode('ascii')):08x}"


def unframe(line: str) -> str | None:
    """The body of a well-framed line, or None when the frame or its CRC is bad."""
    body, star, crc = line.rpartition("*")
    if not star or len(crc) != 8:
        return None
    try:
        want = int(crc, 16)
    except ValueError:
        return None
    try:
        raw = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    return body if zlib.crc32(raw) == want else None


def parse_fields(words: list[str]) -> dict[str, str]:
    fields = {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            fields[key] = value
    return fields


def parse_fault(body: str) -> dict[str, int]:
    """Registers of a `! fault pc=0x... lr=0x...` body (unparsable values are skipped)."""
    regs = {}
    for key, value in parse_fields(body.split()[2:]).items():
        try:
            regs[key] = int(value, 16)
        except ValueError:
            continue
    return regs


@dataclass
class _Outcome:
    fields: dict[str, str] = field(default_factory=dict)
    retry: str = ""  # why the request must be sent again ("" = a good reply)


class DeviceClient:
    """One protocol session over an open serial port (the caller owns and closes the port)."""

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        log: LogTarget = None,
        first_seq: int = 1,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._log_target = log
        self._seq = (first_seq - 1) % _SEQ_MAX
        self._buf = bytearray()
        self._history: collections.deque[str] = collections.deque(maxlen=_HISTORY)
        self._t0 = time.monotonic()
        self.info: dict[str, str] = {}  # the last `hello` reply
        self.retried = 0  # resends so far (diagnostics)
        self._input_crc: int | None = None
        self._input_len: int | None = None
        if port.timeout is None or port.timeout > _POLL_S:
            port.timeout = _POLL_S
        # whatever arrived before this session (a half boot banner) would corrupt the first reply
        port.reset_input_buffer()

    # -- typed commands ---------------------------------------------------------------------------

    def hello(self) -> dict[str, str]:
        """Identity of the image; raises DeviceError on an unknown protocol version."""
        info = self.request("hello")
        if info.get("proto") != PROTO_VERSION:
            raise DeviceError(
                f"device speaks protocol {info.get('proto')!r}, this harness speaks {PROTO_VERSION}",
                hint="rebuild and redeploy the firmware from this checkout",
                last_lines=self.last_lines,
            )
        self.info = info
        return info

    def select_level(self, k: int) -> None:
        reply = self.request(f"level {int(k)}")
        if reply.get("level") != str(k):
            raise self._bad_reply(f"level {k}", reply)

    def load_input(self, data: bytes, chunk: int | None = None) -> None:
        """Write the whole input tensor, in `load` commands of at most `chunk` bytes each."""
        expected = self.info.get("in")
        if expected is not None and len(data) != int(expected):
            raise ValueError(f"input is {len(data)} bytes, the device's input tensor is {expected}")
        if not data:
            raise ValueError("empty input")
        maxline = int(self.info.get("maxline", DEFAULT_MAXLINE))
        offset = 0
        while offset < len(data):
            # "SEQ load OFFSET HEX*CRC": SEQ has at most 5 digits, the frame trailer 9 characters
            room = (maxline - len(f"{_SEQ_MAX} load {offset} ") - 9) // 2
            size = max(1, min(room, chunk or room, len(data) - offset))
            piece = data[offset : offset + size]
            reply = self.request(f"load {offset} {piece.hex()}")
            if reply.get("loaded") != str(offset + len(piece)):
                raise self._bad_reply("load", reply)
            offset += len(piece)
        self._input_crc = zlib.crc32(data)
        self._input_len = len(data)

    def infer(
        self, n: int = 1, warmup: int = 0, input_crc: int | None = None, timeout: float | None = None
    ) -> list[int]:
        """Run `warmup` untimed and `n` timed inferences; the count of each timed run."""
        if input_crc is None:
            if self._input_crc is None:
                raise ValueError("infer before load_input: pass input_crc for an input loaded elsewhere")
            input_crc = self._input_crc
        reply = self.request(f"infer {int(n)} {int(warmup)} {input_crc & 0xFFFFFFFF:08x}", timeout=timeout)
        try:
            cycles = [int(v) for v in reply["cycles"].split(",")]
        except (KeyError, ValueError):
            raise self._bad_reply("infer", reply) from None
        if len(cycles) != n or reply.get("n") != str(n):
            raise self._bad_reply("infer", reply)
        return cycles

    def read_output(self) -> bytes:
        reply = self.request("out")
        try:
            return bytes.fromhex(reply["out"])
        except (KeyError, ValueError):
            raise self._bad_reply("out", reply) from None

    def layer_cycles(self) -> list[int]:
        reply = self.request("layers")
        try:
            return [int(v) for v in reply["cycles"].split(",") if v]
        except (KeyError, ValueError):
            raise self._bad_reply("layers", reply) from None

    def mem(self) -> dict[str, int]:
        reply = self.request("mem")
        try:
            return {key: int(value) for key, value in reply.items()}
        except ValueError:
            raise self._bad_reply("mem", reply) from None

    def help(self) -> list[str]:
        return self.request("help").get("commands", "").split(",")

    def raw(self, command: str, timeout: float | None = None) -> dict[str, str]:
        """Any command, e.g. the diagnostics `_fault` (raises DeviceFault) and `_hang` (DeviceTimeout)."""
        return self.request(command, timeout=timeout)

    # -- the request/reply machinery -------------------------------------------------------------

    @property
    def last_lines(self) -> list[str]:
        return list(self._history)

    def request(self, command: str, *, timeout: float | None = None) -> dict[str, str]:
        """Send `command`, return the reply's KEY=VALUE fields; resend on frame errors."""
        limit = self.timeout if timeout is None else timeout
        attempts = 0
        while True:
            seq = self._next_seq()
            self._send(frame(f"{seq} {command}"))
            outcome = self._await_reply(seq, command, time.monotonic() + limit, limit)
            if not outcome.retry:
                return outcome.fields
            attempts += 1
            if attempts > self.retries:
                raise DeviceError(
                    f"no clean reply to {command!r} after {attempts} attempts ({outcome.retry})",
                    hint="the serial link corrupts data: check the cable, the baud rate and that no "
                    "other program has the port open",
                    last_lines=self.last_lines,
                )
            self.retried += 1

    def _await_reply(self, seq: int, command: str, deadline: float, limit: float) -> _Outcome:
        while True:
            line = self._read_line(deadline)
            if line is None:
                raise DeviceTimeout(
                    f"no reply to {command!r} within {limit:g} s",
                    hint="the firmware hangs or the link is dead; see the last UART lines and the "
                    "target's diagnostics",
                    last_lines=self.last_lines,
                )
            if not line:
                continue
            body = unframe(line)
            if body is None:
                if line.startswith("! fault"):  # a damaged fault report still beats a timeout
                    raise DeviceFault(
                        parse_fault(line.rpartition("*")[0] or line), last_lines=self.last_lines
                    )
                return _Outcome(retry=f"corrupt line {line[:40]!r}")
            words = body.split()
            head = words[0]
            if head == "!":
                event = words[1] if len(words) > 1 else ""
                if event == "fault":
                    raise DeviceFault(parse_fault(body), last_lines=self.last_lines)
                if event == "boot":
                    if command == "hello":  # the device (re)started under us: ask again
                        return _Outcome(retry="device booted")
                    raise DeviceError(
                        f"the device reset while running {command!r}",
                        hint="a watchdog, brown-out or a reset by another tool; state (level, input) is lost",
                        last_lines=self.last_lines,
                    )
                continue
            if head == "?":
                code = words[2] if len(words) > 2 else "?"
                if code == "overflow":
                    raise DeviceError(
                        f"request {command[:40]!r}... is longer than the device's line limit",
                        hint="send smaller chunks (load_input(chunk=...))",
                        last_lines=self.last_lines,
                    )
                return _Outcome(retry=f"device saw a corrupt request ({code})")
            if head != str(seq):
                continue  # stale: the reply to an earlier attempt
            status = words[1] if len(words) > 1 else ""
            if status == "ok":
                return _Outcome(fields=parse_fields(words[2:]))
            if status == "err":
                code = words[2] if len(words) > 2 else "?"
                raise DeviceCommandError(command, code, " ".join(words[3:]), last_lines=self.last_lines)
            return _Outcome(retry=f"malformed reply {line[:40]!r}")

    def _next_seq(self) -> int:
        self._seq = self._seq % _SEQ_MAX + 1
        return self._seq

    def _send(self, line: str) -> None:
        self._log(">", line)
        try:
            self.port.write((line + "\n").encode("ascii"))
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(
                f"cannot write to the device: {exc}", hint="the link went away", last_lines=self.last_lines
            ) from exc

    def _read_line(self, deadline: float) -> str | None:
        """The next line without its newline ('\\r' dropped), or None at the deadline."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                raw = bytes(self._buf[:nl]).replace(b"\r", b"")
                del self._buf[: nl + 1]
                line = raw.decode("ascii", errors="replace")
                self._log("<", line)
                return line
            if time.monotonic() >= deadline:
                if self._buf:
                    self._history.append(f"(partial) {bytes(self._buf)!r}")
                return None
            try:
                waiting = self.port.in_waiting
                chunk = self.port.read(waiting if waiting > 0 else 1)
            except (serial.SerialException, OSError) as exc:
                raise DeviceError(
                    f"cannot read from the device: {exc}",
                    hint="the link went away",
                    last_lines=self.last_lines,
                ) from exc
            if chunk:
                self._buf.extend(chunk)

    def _log(self, direction: str, line: str) -> None:
        entry = f"{time.monotonic() - self._t0:9.3f} {direction} {line}"
        self._history.append(f"{direction} {line}")
        target = self._log_target
        if target is None:
            return
        if callable(target):
            target(entry)
        else:
            target.write(entry + "\n")
            target.flush()

    def _bad_reply(self, command: str, reply: dict[str, str]) -> DeviceError:
        return DeviceError(
            f"unexpected reply to {command!r}: {reply}",
            hint="firmware and harness disagree on the protocol; rebuild the firmware",
            last_lines=self.last_lines,
        )
