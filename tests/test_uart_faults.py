"""A serial link that corrupts data: every command is retried a bounded number of times, and a
corrupt figure is never recorded.

A relay sits between the harness and QEMU's serial pty (a second pty pair, bytes forwarded both ways
by two threads) and flips one bit in chosen lines. It is plugged into the real pipeline by wrapping
the target's backend; QEMU, the firmware and the protocol client are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import serial
from rich.console import Console

from harness import pipeline, targets
from harness.backends.base import Backend, DeviceLink
from harness.errors import EXIT_INFRA, EXIT_OK
from harness.protocol import unframe

pytestmark = pytest.mark.e2e

SUITE = Path(__file__).parent / "data" / "suites" / "e2e_three.yaml"
Chooser = Callable[[int, bytes], bool]  # (index of the line in its direction, line) -> corrupt it?


def flip(line: bytes) -> bytes:
    """One bit flipped: in a reported figure (a cycle count, the outputs) when the line has one, so
    the corrupt line still looks plausible; else in the middle of the line. Never the newline."""
    data = bytearray(line)
    for tag in (b"cycles=", b"out="):
        at = line.find(tag)
        if at >= 0 and at + len(tag) < len(line) and line[at + len(tag) : at + len(tag) + 1].isalnum():
            pos = at + len(tag)
            break
    else:
        pos = len(line) // 2
    data[pos] ^= 0x01
    return bytes(data)


class CorruptingRelay:
    """Forwards QEMU's serial to a new pty, flipping a bit in the lines the choosers pick. Replies are
    only touched once the harness has sent its first request (not the boot banner)."""

    def __init__(self, device: serial.SerialBase, replies: Chooser, requests: Chooser) -> None:
        self.device = device
        self.choose_reply = replies
        self.choose_request = requests
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no newline translation: bytes pass unchanged
        self.name = os.ttyname(self.slave)
        self.corrupted_replies: list[bytes] = []
        self.corrupted_requests: list[bytes] = []
        self._requests_seen = 0
        self._replies_seen = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._device_to_host, daemon=True),
            threading.Thread(target=self._host_to_device, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _device_to_host(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                buf += self.device.read(self.device.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError):
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if self._requests_seen and line[:1].isdigit():
                    if self.choose_reply(self._replies_seen, line):
                        line = flip(line)
                        self.corrupted_replies.append(line)
                    self._replies_seen += 1
                os.write(self.master, line + b"\n")

    def _host_to_device(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if self.choose_request(self._requests_seen, line):
                    line = flip(line)
                    self.corrupted_requests.append(line)
                self._requests_seen += 1
                self.device.write(line + b"\n")

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class RelayBackend(Backend):
    kind: ClassVar[str] = "qemu"

    def __init__(self, inner: Backend, make_choosers: Callable[[], tuple[Chooser, Chooser]]) -> None:
        self.inner = inner
        self.make_choosers = make_choosers
        self.relays: list[CorruptingRelay] = []

    @contextlib.contextmanager
    def session(self, elf: Path) -> Iterator[DeviceLink]:
        with self.inner.session(elf) as link:
            replies, requests = self.make_choosers()
            relay = CorruptingRelay(link.port, replies, requests)
            self.relays.append(relay)
            port = serial.Serial(relay.name, baudrate=115200, timeout=0.05)
            try:
                yield DeviceLink(
                    port=port,
                    description=f"{link.description} via a corrupting relay",
                    diagnostics=link.diagnostics,
                )
            finally:
                port.close()
                relay.close()


def run_suite(
    out: Path, monkeypatch: Any, choosers: Callable[[int], tuple[Chooser, Chooser]] | None
) -> tuple[int, Path, list[CorruptingRelay]]:
    """Run the e2e suite in-process; `choosers(session index)` picks the lines each session corrupts."""
    relays: list[CorruptingRelay] = []
    if choosers is not None:
        real = targets.make_backend
        sessions = iter(range(1000))

        def wrapped(*args: Any, **kwargs: Any) -> Backend:
            backend = RelayBackend(real(*args, **kwargs), lambda: choosers(next(sessions)))
            relays_of.append(backend)
            return backend

        relays_of: list[RelayBackend] = []
        monkeypatch.setattr(targets, "make_backend", wrapped)
    code = pipeline.run(pipeline.RunOptions(suite=SUITE, out=out), Console(record=True, width=200))
    if choosers is not None:
        relays = [r for b in relays_of for r in b.relays]
        monkeypatch.undo()
    (run_dir,) = (out / "e2e_three").iterdir()
    return code, run_dir, relays


def never(_i: int, _line: bytes) -> bool:
    return False


@pytest.fixture(scope="module")
def clean_run(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    mp = pytest.MonkeyPatch()
    code, run_dir, _ = run_suite(tmp_path_factory.mktemp("clean"), mp, None)
    assert code == EXIT_OK
    return pd.read_parquet(run_dir / "records.parquet")


def resends_in_log(log: Path) -> tuple[list[str], list[str]]:
    """Lines of a UART log the harness received corrupted, and the `? err crc` replies it got."""
    corrupt, crc_errors = [], []
    for entry in log.read_text().splitlines():
        if entry.startswith("#"):
            continue
        _, direction, line = entry.strip().split(" ", 2)
        if direction == "<" and unframe(line) is None:
            corrupt.append(line)
        if direction == "<" and unframe(line) is not None and line.startswith("? err crc"):
            crc_errors.append(line)
    return corrupt, crc_errors


def test_corrupt_lines_are_retried_and_records_equal_a_clean_run(
    clean_run: pd.DataFrame, tmp_path: Path, monkeypatch: Any
) -> None:
    def choosers(_session: int) -> tuple[Chooser, Chooser]:
        # every 5th reply (figures included: cycle counts, outputs) and every 7th request
        return (lambda i, _line: i % 5 == 2), (lambda i, _line: i % 7 == 3)

    code, run_dir, relays = run_suite(tmp_path, monkeypatch, choosers)
    assert code == EXIT_OK
    assert len(relays) == 3
    replies = [line for r in relays for line in r.corrupted_replies]
    requests = [line for r in relays for line in r.corrupted_requests]
    assert len(replies) > 30 and len(requests) > 20
    assert any(b"cycles=" in line for line in replies) and any(b"out=" in line for line in replies)

    frame = pd.read_parquet(run_dir / "records.parquet")
    pd.testing.assert_frame_equal(frame, clean_run)  # same figures, outputs and status

    log = run_dir / "qemu_mps2_an500" / "uart.log"
    corrupt, crc_errors = resends_in_log(log)
    assert sorted(corrupt) == sorted(line.decode() for line in replies)  # every flip was caught
    assert len(crc_errors) == len(requests)  # the device caught every corrupt request
    text = log.read_text()
    resent = sum(int(line.split()[3]) for line in text.splitlines() if line.startswith("# session end:"))
    assert resent >= len(replies) + len(requests)
    # after a corrupt reply the same command goes out again, with a fresh sequence number
    lines = [entry.strip().split(" ", 2)[1:] for entry in text.splitlines() if not entry.startswith("#")]
    for i, (direction, line) in enumerate(lines):
        if direction == "<" and unframe(line) is None:
            sent = [body for d, body in lines[:i] if d == ">"][-1]
            again = next(body for d, body in lines[i + 1 :] if d == ">")
            assert (unframe(again) or "").split(" ", 1)[1] == (unframe(sent) or "").split(" ", 1)[1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["targets"]["qemu_mps2_an500"]["uart_retries"] == resent


def test_a_link_that_keeps_corrupting_fails_the_entry_and_records_no_figure(
    clean_run: pd.DataFrame, tmp_path: Path, monkeypatch: Any
) -> None:
    def choosers(session: int) -> tuple[Chooser, Chooser]:
        if session != 1:
            return never, never
        # the second model: every reply to `infer` carries a flipped digit in its cycle count
        return (lambda _i, line: b" ok n=" in line), never

    code, run_dir, relays = run_suite(tmp_path, monkeypatch, choosers)
    assert code == EXIT_INFRA  # a failed entry, no regression
    corrupted = relays[1].corrupted_replies
    assert len(corrupted) == 4  # the first attempt and 3 retries, then the harness gives up
    bodies = {line.split(b" ", 1)[1].rsplit(b"*", 1)[0] for line in corrupted}  # without seq and CRC
    (body,) = bodies  # the same corrupt figure, 4 times
    corrupt_figure = int(body.decode().split("cycles=")[1])
    assert corrupt_figure not in clean_run["cycles"].tolist()  # a plausible but wrong count

    frame = pd.read_parquet(run_dir / "records.parquet").set_index("entry")
    assert frame.loc["b", "status"] == "failed"
    assert "no clean reply to 'infer 1 0" in frame.loc["b", "error"]
    assert "after 4 attempts" in frame.loc["b", "error"]
    for column in ("cycles", "cycles_min", "cycles_max", "accuracy_device", "cycles_per_layer"):
        assert pd.isna(frame.loc["b", column])  # nothing measured over the bad link is kept
    csv = pd.read_csv(run_dir / "records.csv")
    assert corrupt_figure not in csv[["cycles", "cycles_min", "cycles_max"]].to_numpy().ravel().tolist()
    clean = clean_run.set_index("entry")
    for entry in ("a", "c"):
        pd.testing.assert_series_equal(frame.loc[entry], clean.loc[entry])
