"""A running process's output, read line by line as it comes, for tests that act on what it says
(wait for "board qemu-b is busy", then send SIGTERM) before it ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest


class LiveOutput:
    """`proc` must have been started with ``stdout=PIPE, stderr=STDOUT, text=True``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def text(self) -> str:
        with self._new:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """The first output line matching `pattern` (a regex), waiting for it; the test fails (and
        the process is killed) when the process ends or `timeout` passes without one."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines:
                    if found.search(line):
                        return line
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
                self._new.wait(0.5)

    def finish(self, timeout: float = 300) -> int:
        """The exit code, once the process has ended and its output is read."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.proc.args!r} did not end within {timeout:g} s:\n{self.text}")
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """SIGKILL to the process, and to its process group when it leads one of its own."""
        if self.proc.poll() is not None:
            return
        try:
            leads_group = os.getpgid(self.proc.pid) == self.proc.pid
        except ProcessLookupError:
            return
        if leads_group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait(timeout=30)
