"""Build firmware with the real `pio run` for the tests, once per test session and env.

The cache is module-level (not a pytest fixture) so every test module that imports it shares one
build per (env, model folder, build ID); the builds go to a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import configparser
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.provision import pio_env, provision

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "targets" / "firmware" / "model_default"
TEST_BUILD_ID = "nbtest-1"


@dataclass(frozen=True)
class Build:
    env: str
    elf: Path
    output: str  # pio's stdout + stderr
    returncode: int
    seconds: float


def qemu_args(env: str = "qemu_mps2_an500") -> str:
    """The QEMU command-line arguments of a platformio.ini env, as the harness reads them."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "platformio.ini")
    return ini[f"env:{env}"]["custom_qemu_args"]


_cache: dict[tuple[str, str, str], Build] = {}
_tmp: Path | None = None


def _scratch() -> Path:
    global _tmp
    if _tmp is None:
        _tmp = Path(tempfile.mkdtemp(prefix="nb-fwbuild-"))
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


def pio_run(
    env: str,
    build_dir: Path,
    *,
    model_dir: Path = DEFAULT_MODEL,
    build_id: str = TEST_BUILD_ID,
    extra_env: dict[str, str] | None = None,
) -> Build:
    """One real `pio run -e ENV` into `build_dir` (no caching)."""
    provision(ROOT)
    environ = pio_env()
    environ.update(
        PLATFORMIO_BUILD_DIR=str(build_dir),
        NESTBENCH_MODEL_DIR=str(model_dir),
        NESTBENCH_BUILD_ID=build_id,
        **(extra_env or {}),
    )
    pio = Path(sys.executable).parent / "pio"
    start = time.monotonic()
    proc = subprocess.run(
        [str(pio), "run", "-d", str(ROOT), "-e", env],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
        timeout=600,
    )
    return Build(
        env,
        build_dir / env / "firmware.elf",
        proc.stdout + proc.stderr,
        proc.returncode,
        time.monotonic() - start,
    )


def built(env: str, *, model_dir: Path = DEFAULT_MODEL, build_id: str = TEST_BUILD_ID) -> Build:
    """The session's build of `env` (built on first use); raises AssertionError when it fails."""
    key = (env, str(model_dir), build_id)
    if key not in _cache:
        build_dir = _scratch() / f"b{len(_cache)}"
        result = pio_run(env, build_dir, model_dir=model_dir, build_id=build_id)
        if result.returncode != 0 or not result.elf.is_file():
            raise AssertionError(f"pio run -e {env} failed:\n{result.output[-4000:]}")
        _cache[key] = result
    return _cache[key]
