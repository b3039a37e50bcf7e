#!/usr/bin/env python3
"""A stand-in for the `renode` launcher, for tests on machines without Renode (there is no Renode
package in the registries reachable here). It is deliberately thin: it reads the generated script
only for the UART socket port and the ELF, runs that ELF in QEMU (mps2-an500) with its UART on that
TCP port, and answers `quit` on the monitor port by stopping QEMU and exiting. So the Renode backend's
own work — writing the script, starting the process, connecting to the UART socket, speaking the
protocol over it, shutting down through the monitor — runs for real; only the emulator differs.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

QEMU = [
    "qemu-system-arm",
    "-machine",
    "mps2-an500",
    "-cpu",
    "cortex-m7",
    "-icount",
    "shift=6,align=off,sleep=off",
    "-nodefaults",
    "-display",
    "none",
    "-monitor",
    "none",
]


def main(argv: list[str]) -> int:
    monitor_port = int(argv[argv.index("--port") + 1])
    script = Path(argv[-1]).read_text()
    uart_port = int(re.search(r"CreateServerSocketTerminal (\d+)", script)[1])  # type: ignore[index]
    elf = re.search(r"sysbus LoadELF @(\S+)", script)[1]  # type: ignore[index]
    print(f"stand-in renode: uart on {uart_port}, monitor on {monitor_port}, elf {elf}", flush=True)
    qemu = subprocess.Popen(
        [*QEMU, "-serial", f"tcp:127.0.0.1:{uart_port},server=on,wait=off", "-kernel", elf]
    )
    with socket.create_server(("127.0.0.1", monitor_port)) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                if b"quit" in conn.recv(64):
                    qemu.terminate()
                    qemu.wait(timeout=10)
                    print("stand-in renode: quit", flush=True)
                    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
