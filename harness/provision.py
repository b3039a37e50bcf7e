"""Offline PlatformIO: a project-local core dir with `tool-scons` unpacked from PyPI's scons wheel.

PlatformIO's registry is not reachable on these machines, but `pio run` only needs its core package
`tool-scons` (`~4.41101.0`) from it: our development platform (targets/platform) declares no packages
and takes the GNU Arm toolchain from PATH. PyPI's scons 4.11.1 wheel is the same SCons, so we unpack it
into `<root>/.pio-core/packages/tool-scons/` with the launcher and the package metadata PlatformIO
looks for (the `.piopm` spec owner must be `platformio`, otherwise PlatformIO does not match it to its
requirement and tries the registry). When the registry is reachable nothing changes: the package is
already installed, so PlatformIO never asks for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from harness.errors import InfraError

SCONS_PYPI_VERSION = "4.11.1"
SCONS_PIO_VERSION = "4.41101.0"  # PlatformIO's spelling of scons 4.11.1
CORE_DIR_NAME = ".pio-core"  # platformio.ini: core_dir = .pio-core

_LAUNCHER = '''\
"""tool-scons launcher written by nestbench (harness/provision.py): runs the unpacked SCons wheel."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from SCons.Script import main  # noqa: E402

main()
'''

_PACKAGE_JSON = {
    "name": "tool-scons",
    "version": SCONS_PIO_VERSION,
    "description": "SCons software construction tool (from PyPI's scons "
    + SCONS_PYPI_VERSION
    + " wheel, provisioned offline by nestbench)",
    "keywords": ["tools", "build tools"],
    "homepage": "https://scons.org",
    "license": "MIT",
}

_PIOPM = {
    "type": "tool",
    "name": "tool-scons",
    "version": SCONS_PIO_VERSION,
    "spec": {"owner": "platformio", "id": None, "name": "tool-scons", "requirements": None, "uri": None},
}


def pio_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `pio` must run with: `base` (default os.environ) plus settings that stop
    PlatformIO from phoning home (telemetry, upgrade checks) and colouring its output."""
    env = dict(os.environ if base is None else base)
    env["PLATFORMIO_SETTING_ENABLE_TELEMETRY"] = "no"
    env["PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL"] = "3650"
    env["PLATFORMIO_DISABLE_COLOR"] = "true"  # plain "RAM: / Flash:" lines for the build driver
    return env


def scons_dir(root: Path) -> Path:
    return root / CORE_DIR_NAME / "packages" / "tool-scons"


def is_provisioned(root: Path) -> bool:
    folder = scons_dir(root)
    try:
        meta = json.loads((folder / ".piopm").read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("version") == SCONS_PIO_VERSION
        and (folder / "scons.py").is_file()
        and (folder / "package.json").is_file()
        and (folder / "SCons" / "Script" / "__init__.py").is_file()
    )


def check_toolchain() -> Path:
    """arm-none-eabi-gcc on PATH with newlib's nano C library next to it."""
    gcc = shutil.which("arm-none-eabi-gcc")
    hint = (
        "install the GNU Arm toolchain with newlib: `sudo apt-get install gcc-arm-none-eabi "
        "libnewlib-arm-none-eabi` (or run ./dev.sh setup)"
    )
    if gcc is None:
        raise InfraError("arm-none-eabi-gcc is not on PATH", hint=hint)
    try:
        out = subprocess.run(
            [
                gcc,
                "-mcpu=cortex-m7",
                "-mthumb",
                "-mfloat-abi=hard",
                "-mfpu=fpv5-d16",
                "-print-file-name=libc_nano.a",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"could not run {gcc}: {exc}", hint=hint) from exc
    # gcc echoes the bare name back when it cannot find the file
    if not os.path.isabs(out) or not os.path.isfile(out):
        raise InfraError("newlib (libc_nano.a) is missing for arm-none-eabi-gcc", hint=hint)
    return Path(gcc)


def _download_wheel(python: str, dest: Path) -> Path:
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        f"scons=={SCONS_PYPI_VERSION}",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(
            f"pip download of scons failed: {exc}", hint="check that pip can reach its package index"
        ) from exc
    wheels = sorted(dest.glob("scons-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise InfraError(
            f"could not download scons=={SCONS_PYPI_VERSION} from the pip index:\n{tail}",
            hint="PlatformIO needs tool-scons offline; check that `pip download scons==4.11.1` works "
            "(pip's index or a local mirror must be reachable)",
        )
    return wheels[0]


def provision(root: Path, python: str | None = None) -> None:
    """Make `pio run` work offline in `root` (idempotent; quick when already done).

    Raises InfraError with a hint when the toolchain is missing or the scons wheel cannot be had.
    """
    check_toolchain()
    if is_provisioned(root):
        return
    target = scons_dir(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tool-scons-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = _download_wheel(python or sys.executable, tmp_path / "dl")
        staging = tmp_path / "tool-scons"
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(staging)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InfraError(
                f"could not unpack {wheel.name}: {exc}",
                hint="delete .pio-core/packages and run `harness setup` again",
            ) from exc
        (staging / "scons.py").write_text(_LAUNCHER)
        (staging / "package.json").write_text(json.dumps(_PACKAGE_JSON, indent=2) + "\n")
        (staging / ".piopm").write_text(json.dumps(_PIOPM) + "\n")
        # Swap in atomically so a concurrent or interrupted run never sees a half-unpacked package.
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    if not is_provisioned(root):
        raise InfraError(
            f"tool-scons is incomplete after unpacking into {target}",
            hint="delete .pio-core/packages/tool-scons and run `harness setup` again",
        )
