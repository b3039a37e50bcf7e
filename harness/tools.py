"""External tools the harness drives: find them, or say exactly how to install them.

`require(tool)` returns the tool's path or raises `InfraError` whose hint is an install command;
`version(tool)` is the first line of `TOOL --version` for provenance (None when the tool is absent).
Known tools: arm-none-eabi-gcc, qemu-system-arm, pio (the venv's), renode, pyocd (the venv's pyOCD
plus a working USB backend, which is what probe access needs).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError

RENODE_INSTALL = (
    "Renode is not packaged for Debian or PyPI: download a Linux portable build from "
    "https://github.com/renode/renode/releases (1.16 or later; nestbench brings its own NUCLEO-F767ZI "
    "platform description, so a stable release is enough), unpack it and put its `renode` launcher on "
    "PATH (or `conda install -c conda-forge renode-cli`); see https://renode.io"
)


@dataclass(frozen=True)
class _Tool:
    what: str  # what the tool is for, in an error message
    install: str  # how to get it


_TOOLS: dict[str, _Tool] = {
    "arm-none-eabi-gcc": _Tool(
        "the GNU Arm Embedded toolchain (firmware builds)",
        "run `./dev.sh setup`, or `sudo apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi`",
    ),
    "qemu-system-arm": _Tool(
        "QEMU for Arm (the mps2-an500 emulator target)",
        "run `./dev.sh setup`, or `sudo apt-get install qemu-system-arm`",
    ),
    "pio": _Tool(
        "PlatformIO Core in the project's virtual environment",
        "run `./dev.sh setup` (creates .venv and installs nestbench with PlatformIO)",
    ),
    "renode": _Tool("Renode (the Renode emulator target)", RENODE_INSTALL),
    "pyocd": _Tool(
        "pyOCD with USB access (flashing boards through their debug probe)",
        "run `./dev.sh setup` (installs pyOCD into .venv); for USB access install libusb "
        "(`sudo apt-get install libusb-1.0-0`) and pyOCD's udev rules "
        "(https://github.com/pyocd/pyOCD/tree/main/udev, then replug the board)",
    ),
}

KNOWN_TOOLS = tuple(_TOOLS)


def _venv_script(name: str) -> Path:
    # Deliberately not resolved: the venv's bin/ is the folder next to the interpreter symlink.
    return Path(sys.executable).parent / name


def _locate(tool: str) -> Path | None:
    if tool == "pio":
        path = _venv_script("pio")
        return path if path.is_file() else None
    if tool == "pyocd":
        if importlib.util.find_spec("pyocd") is None:
            return None
        path = _venv_script("pyocd")
        found = shutil.which("pyocd")
        return path if path.is_file() else (Path(found) if found else None)
    found = shutil.which(tool)
    return Path(found) if found else None


def _libusb_available() -> bool:
    # pyOCD reaches ST-LINK and CMSIS-DAP v2 probes through pyusb, which needs the libusb-1.0 library.
    try:
        import usb.backend.libusb1 as libusb1
    except ImportError:
        return False
    return libusb1.get_backend() is not None


def _spec(tool: str) -> _Tool:
    try:
        return _TOOLS[tool]
    except KeyError:
        raise ValueError(f"unknown tool {tool!r}; known: {', '.join(KNOWN_TOOLS)}") from None


def require(tool: str) -> Path:
    """Path of `tool`, or `InfraError` saying what is missing and how to install it."""
    spec = _spec(tool)
    path = _locate(tool)
    if path is None:
        raise InfraError(f"{tool} not found: {spec.what} is not installed", hint=spec.install)
    if tool == "pyocd" and not _libusb_available():
        raise InfraError(
            "pyOCD cannot reach USB debug probes: the libusb-1.0 library is missing", hint=spec.install
        )
    return path


def install_hint(tool: str) -> str:
    return _spec(tool).install


@functools.cache
def version(tool: str) -> str | None:
    """First non-empty line of `TOOL --version`, or None when the tool is absent or says nothing."""
    _spec(tool)
    path = _locate(tool)
    if path is None:
        return None
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None
