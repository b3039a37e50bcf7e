"""DeviceClient against a scripted peer on a real pty pair: the client opens the pty's slave with
pyserial exactly as it opens QEMU's; the peer (a thread on the master side) answers per script, with
stale replies, corrupt lines, frame errors, faults and silence."""

from __future__ import annotations

import os
import select
import threading
import tty
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import serial

from harness.errors import DeviceError, DeviceFault, DeviceTimeout
from harness.protocol import DeviceClient, DeviceCommandError, frame, parse_fault, unframe

# A script gets (seq, command words, attempt number of this command) and returns raw lines to send.
Script = Callable[[int, list[str], int], list[str]]


def ok(seq: int, fields: str = "") -> str:
    return frame(f"{seq} ok{(' ' + fields) if fields else ''}")


@dataclass
class Peer:
    master: int
    script: Script
    requests: list[str] = field(default_factory=list)  # raw request lines as received
    attempts: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        buf = b""
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode()
                self.requests.append(line)
                body = unframe(line)
                if body is None:
                    self._send([frame("? err crc")])
                    continue
                seq_text, *words = body.split()
                key = words[0] if words else ""
                self.attempts[key] = self.attempts.get(key, 0) + 1
                self._send(self.script(int(seq_text), words, self.attempts[key]))

    def _send(self, lines: list[str]) -> None:
        for line in lines:
            os.write(self.master, (line + "\n").encode())


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    try:
        yield master, name
    finally:
        os.close(slave)
        os.close(master)


@pytest.fixture
def make_client(pty_pair: tuple[int, str]) -> Iterator[Callable[..., tuple[DeviceClient, Peer, list[str]]]]:
    master, name = pty_pair
    ports: list[serial.Serial] = []
    peers: list[tuple[Peer, threading.Thread]] = []

    def make(script: Script, **kwargs: object) -> tuple[DeviceClient, Peer, list[str]]:
        peer = Peer(master, script)
        thread = threading.Thread(target=peer.run, daemon=True)
        thread.start()
        peers.append((peer, thread))
        port = serial.Serial(name, 115200, timeout=0.05)
        ports.append(port)
        log: list[str] = []
        client = DeviceClient(port, log=log.append, **kwargs)  # type: ignore[arg-type]
        return client, peer, log

    yield make
    for peer, thread in peers:
        peer.stop.set()
        thread.join(2)
    for port in ports:
        port.close()


HELLO = (
    "proto=1 fw=b1 model=abc name=m levels=3 board=qemu_mps2_an500 cycles=qemu-icount "
    "clock=25000000 in=300 out=10 layers=4 arena=999 maxline=255"
)


def test_frame_is_zlib_crc32() -> None:
    line = frame("7 hello")
    assert line == f"7 hello*{zlib.crc32(b'7 hello'):08x}"
    assert unframe(line) == "7 hello"
    assert unframe(line.replace("hello", "hellp")) is None  # body changed
    assert unframe("7 hello*zzzzzzzz") is None and unframe("7 hello") is None
    regs = parse_fault("! fault pc=0x0000017e lr=0x00000299 psr=zz")
    assert regs == {"pc": 0x17E, "lr": 0x299}


def test_requests_are_framed_and_logged(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    client, peer, log = make_client(lambda seq, words, n: [ok(seq, HELLO)])
    info = client.hello()
    assert info["model"] == "abc" and info["levels"] == "3"
    assert unframe(peer.requests[0]) == "1 hello"  # framed, seq 1
    assert any(" > 1 hello*" in e for e in log) and any(" < 1 ok proto=1" in e for e in log)


def test_stale_and_foreign_lines_are_dropped(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    def script(seq: int, words: list[str], n: int) -> list[str]:
        # a late reply to an older request, a boot-banner-free event line, then the real reply
        return [ok(seq + 100, "level=9"), frame("! note hi"), "", ok(seq, "level=2")]

    client, _, log = make_client(script)
    client.select_level(2)
    assert client.retried == 0
    assert any("level=9" in e for e in log)  # seen, logged, ignored


def test_device_frame_error_means_resend_with_fresh_seq(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    def script(seq: int, words: list[str], n: int) -> list[str]:
        return [frame("? err crc")] if n == 1 else [ok(seq, "level=1")]

    client, peer, _ = make_client(script)
    client.select_level(1)
    seqs = [int(unframe(r).split()[0]) for r in peer.requests]  # type: ignore[union-attr]
    assert len(seqs) == 2 and seqs[0] != seqs[1]
    assert client.retried == 1


def test_corrupt_reply_is_retried(make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]]) -> None:
    def script(seq: int, words: list[str], n: int) -> list[str]:
        good = ok(seq, "out=00ff7f80")
        return [good.replace("ff", "fe", 1)] if n == 1 else [good]

    client, peer, _ = make_client(script)
    assert client.read_output() == bytes([0x00, 0xFF, 0x7F, 0x80])
    assert len(peer.requests) == 2


def test_retries_are_bounded(make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]]) -> None:
    client, peer, _ = make_client(lambda seq, words, n: [frame("? err crc")], retries=2)
    with pytest.raises(DeviceError, match="after 3 attempts") as err:
        client.hello()
    assert not isinstance(err.value, DeviceTimeout)
    assert len(peer.requests) == 3
    assert err.value.last_lines  # the UART lines come with the error


def test_silence_times_out_with_the_last_lines(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    client, _, _ = make_client(
        lambda seq, words, n: [] if words[0] == "_hang" else [ok(seq, HELLO)], timeout=0.3
    )
    client.hello()
    with pytest.raises(DeviceTimeout) as err:
        client.raw("_hang")
    assert any("_hang" in line for line in err.value.last_lines)
    assert client.hello()["fw"] == "b1"  # the client is still usable afterwards


def test_fault_event_raises_with_registers(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    fault = frame(
        "! fault pc=0x000017e0 lr=0x0000297f psr=0x61000000 cfsr=0x00010000 hfsr=0x40000000 "
        "mmfar=0x00000000 bfar=0x00000000"
    )
    client, _, _ = make_client(lambda seq, words, n: ["", fault])
    with pytest.raises(DeviceFault) as err:
        client.raw("_fault")
    assert err.value.registers["pc"] == 0x17E0 and err.value.registers["cfsr"] == 0x10000
    assert "pc=0x000017e0" in str(err.value)


def test_err_reply_raises_command_error(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    client, _, _ = make_client(lambda seq, words, n: [frame(f"{seq} err range level out of range")])
    with pytest.raises(DeviceCommandError) as err:
        client.select_level(7)
    assert err.value.code == "range" and err.value.detail == "level out of range"


def test_boot_event_retries_hello_but_fails_other_commands(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    boot = frame("! boot proto=1 fw=b1 model=abc board=x")

    def script(seq: int, words: list[str], n: int) -> list[str]:
        if words[0] == "hello":
            return [boot] if n == 1 else [ok(seq, HELLO)]
        return [boot]

    client, _peer, _ = make_client(script)
    assert client.hello()["proto"] == "1"
    with pytest.raises(DeviceError, match="reset"):
        client.select_level(0)


def test_load_infer_chunks_fit_the_line_limit(
    make_client: Callable[..., tuple[DeviceClient, Peer, list[str]]],
) -> None:
    memory = bytearray(300)

    def script(seq: int, words: list[str], n: int) -> list[str]:
        if words[0] == "hello":
            return [ok(seq, HELLO)]
        if words[0] == "load":
            offset, data = int(words[1]), bytes.fromhex(words[2])
            memory[offset : offset + len(data)] = data
            return [ok(seq, f"loaded={offset + len(data)}")]
        if words[0] == "infer":
            if int(words[3], 16) != zlib.crc32(bytes(memory)):
                return [frame(f"{seq} err input-crc")]
            return [ok(seq, f"n={words[1]} cycles=" + ",".join(["1234"] * int(words[1])))]
        if words[0] == "layers":
            return [ok(seq, "cycles=1,2,3,4")]
        if words[0] == "mem":
            return [ok(seq, "stack=512 arena=999")]
        return [frame(f"{seq} err unknown")]

    client, peer, _ = make_client(script)
    client.hello()
    data = bytes((i * 37) & 0xFF for i in range(300))
    client.load_input(data)
    assert bytes(memory) == data
    loads = [r for r in peer.requests if " load " in r]
    assert len(loads) >= 3 and all(len(r) <= 255 for r in peer.requests)
    assert client.infer(3, 1) == [1234, 1234, 1234]  # the CRC of what was loaded
    assert client.layer_cycles() == [1, 2, 3, 4]
    assert client.mem() == {"stack": 512, "arena": 999}
    with pytest.raises(ValueError):
        client.load_input(data[:10])  # not the device's input size
    before = len(peer.requests)
    client.load_input(data, chunk=16)
    sizes = [len(bytes.fromhex(unframe(r).split()[3])) for r in peer.requests[before:]]  # type: ignore[union-attr]
    assert sizes == [16] * 18 + [12]
