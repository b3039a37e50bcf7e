"""How the harness starts emulators: the real QEMU, from a separate Python process standing in for
the harness, so that process can be killed or observed from outside.

Two promises: an emulator never outlives the harness (even one killed by SIGKILL, where no handler
runs), and starting one from a farm worker thread is safe while the main thread computes (a real
fork there ran OpenBLAS's fork handler under a running matrix product, and the run hung).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fw import fwbuild

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only"),
]

# The stand-in harness: opens a QEMU session the way the pipeline does, says the emulator's pid, waits.
HOLD_A_SESSION = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from harness.backends.qemu import QemuBackend

    with QemuBackend(sys.argv[1]).session(Path(sys.argv[2])) as link:
        print(link.description, flush=True)
        time.sleep(120)
    """
)

# Sessions opened and closed again and again by a worker thread while the main thread multiplies
# matrices (quantization, the float reference); counts the fork handlers the starts ran.
SESSIONS_WHILE_NUMPY = textwrap.dedent(
    """
    import os, sys, threading, time
    from pathlib import Path
    import numpy as np
    from harness.backends.qemu import QemuBackend

    handlers = []
    os.register_at_fork(before=lambda: handlers.append(1))
    backend = QemuBackend(sys.argv[1])
    done, sessions = threading.Event(), []

    def worker():
        while not done.is_set():
            with backend.session(Path(sys.argv[2])):
                sessions.append(1)

    thread = threading.Thread(target=worker)
    thread.start()
    a, b = np.ones((600, 300), np.float32), np.ones((300, 64), np.float32)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        a @ b
    done.set()
    thread.join()
    print(len(sessions), len(handlers))
    """
)


@pytest.fixture(scope="module")
def elf() -> Path:
    return fwbuild.built("qemu_mps2_an500").elf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has died already; only its parent has not reaped it yet
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_an_emulator_dies_with_the_harness_even_by_sigkill(elf: Path) -> None:
    harness = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SESSION, fwbuild.qemu_args(), str(elf)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert harness.stdout is not None
    description = harness.stdout.readline()  # "qemu pid N on /dev/pts/M"
    qemu_pid = int(description.split("pid ")[1].split()[0])
    assert _alive(qemu_pid), description
    harness.kill()  # SIGKILL to the harness alone: nothing of it runs any more
    harness.wait()
    deadline = time.monotonic() + 10
    while _alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(qemu_pid)
    if alive:
        os.kill(qemu_pid, signal.SIGKILL)
    assert not alive, "QEMU outlived the harness that started it"


def test_worker_threads_start_emulators_without_forking_under_numpy(elf: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SESSIONS_WHILE_NUMPY, fwbuild.qemu_args(), str(elf)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang is the failure this guards against
    )
    assert proc.returncode == 0, proc.stderr
    sessions, handlers = map(int, proc.stdout.split())
    assert sessions >= 1
    assert handlers == 0, "starting an emulator ran the fork handlers (a real fork, not vfork)"
