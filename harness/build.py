"""Build one firmware image: `pio run -e <env>` for one model into one build folder.

A pure "build this" step (the pipeline caches): the model sources come from `NESTBENCH_MODEL_DIR`,
the build ID is compiled in from `NESTBENCH_BUILD_ID`, and `PLATFORMIO_BUILD_DIR` keeps every build
in its own folder, so builds of different models never share object files and can run in parallel.
PlatformIO runs verbosely (`-v`): the compile and link commands in its output are the provenance
record of the flags, at no extra cost.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import provision, tools
from harness.elfsize import ElfSizes, elf_sizes
from harness.errors import InfraError, InputError
from harness.targets import Target

BUILD_TIMEOUT_S = 900.0
FLAGS_FILE = "nestbench-flags.json"  # flags of the last compile, for a build that compiled nothing
MAX_ERROR_LINES = 6
# Lines of a failed build worth showing: compiler and linker diagnostics, PlatformIO's own errors.
_ERROR_RE = re.compile(
    r"error:|undefined reference|multiple definition|overflowed by|will not fit in region|^Error:|"
    r"^\*\*\* \[",
    re.IGNORECASE,
)
_BUILD_ID_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")  # what the builder accepts and compiles in
_COMPILER_RE = re.compile(r"(^|/)arm-none-eabi-(gcc|g\+\+|c\+\+|cc)(-[\d.]+)?$")


@dataclass(frozen=True)
class BuildResult:
    elf: Path
    bin: Path | None  # firmware.bin / .hex when the platform produces them
    hex: Path | None
    flash_bytes: int
    ram_bytes: int  # static RAM (see harness.elfsize), without the reserved stack
    duration_s: float
    pio_version: str | None
    gcc_version: str | None
    flags: tuple[str, ...]  # C compile flags (no include paths), for provenance
    link_flags: tuple[str, ...]
    log_path: Path
    sizes: ElfSizes


def build_firmware(
    root: Path, target: Target, model_dir: Path, build_id: str, build_dir: Path, log_path: Path
) -> BuildResult:
    """Build `target`'s firmware with the model in `model_dir`; InfraError with the compiler's error
    lines (full output in `log_path`) when the build fails."""
    pio = tools.require("pio")
    tools.require("arm-none-eabi-gcc")
    if not provision.is_provisioned(root):
        raise InfraError(
            f"PlatformIO is not provisioned for offline builds (no {provision.scons_dir(root)})",
            hint="run `./dev.sh setup` (or `harness setup`)",
        )
    if not model_dir.is_dir():
        raise InputError("model folder does not exist", file=model_dir)
    if not _BUILD_ID_RE.fullmatch(build_id):
        raise InputError(f"build ID {build_id!r}: use 1-64 characters from [A-Za-z0-9._+-]", field="build_id")
    build_dir = build_dir.resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)

    env = provision.pio_env()
    env.update(
        PLATFORMIO_BUILD_DIR=str(build_dir),
        NESTBENCH_MODEL_DIR=str(model_dir.resolve()),
        NESTBENCH_BUILD_ID=build_id,
    )
    cmd = [str(pio), "run", "-d", str(root), "-e", target.name, "-v"]
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {shlex.join(cmd)}\n# PLATFORMIO_BUILD_DIR={build_dir}\n")
        log.write(f"# NESTBENCH_MODEL_DIR={env['NESTBENCH_MODEL_DIR']}\n# NESTBENCH_BUILD_ID={build_id}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InfraError(
                f"build of {target.name} did not finish within {BUILD_TIMEOUT_S:.0f} s",
                hint=f"log: {log_path}",
            ) from None
        except OSError as exc:
            raise InfraError(f"cannot run {pio}: {exc}", hint=tools.install_hint("pio")) from exc
    duration = time.monotonic() - started
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise InfraError(
            f"build of {target.name} failed (pio exit {proc.returncode}):\n  "
            + "\n  ".join(error_lines(output)),
            hint=f"full build log: {log_path}",
        )

    out_dir = build_dir / target.name
    elf = out_dir / "firmware.elf"
    if not elf.is_file():
        raise InfraError(
            f"build of {target.name} reported success but made no {elf}", hint=f"log: {log_path}"
        )
    flags, link_flags = _flags(output, root, build_dir, out_dir)
    sizes = elf_sizes(elf)
    return BuildResult(
        elf=elf,
        bin=_existing(out_dir / "firmware.bin"),
        hex=_existing(out_dir / "firmware.hex"),
        flash_bytes=sizes.flash_bytes,
        ram_bytes=sizes.ram_bytes,
        duration_s=duration,
        pio_version=tools.version("pio"),
        gcc_version=tools.version("arm-none-eabi-gcc"),
        flags=flags,
        link_flags=link_flags,
        log_path=log_path,
        sizes=sizes,
    )


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def error_lines(output: str, limit: int = MAX_ERROR_LINES) -> list[str]:
    """The first few diagnostic lines of a failed build, else its last lines."""
    picked: list[str] = []
    for line in output.splitlines():
        text = line.strip()
        if not text or _is_command(text) or text in picked:
            continue
        if _ERROR_RE.search(text):
            picked.append(text)
            if len(picked) == limit:
                break
    if picked:
        return picked
    tail = [line.strip() for line in output.splitlines() if line.strip()]
    return tail[-limit:] or ["(pio printed nothing)"]


def _is_command(line: str) -> bool:
    first = line.split(maxsplit=1)[0] if line else ""
    return bool(_COMPILER_RE.search(first)) or first.endswith(("-ar", "-objcopy", "-size", "-ranlib"))


def _flags(
    output: str, root: Path, build_dir: Path, out_dir: Path
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(compile flags, link flags) from the verbose commands; an up-to-date build compiled nothing,
    so the flags of the last real compile into this folder are kept next to the objects."""
    compile_flags: tuple[str, ...] = ()
    link_flags: tuple[str, ...] = ()
    for line in output.splitlines():
        text = line.strip()
        if not text or not _is_command(text):
            continue
        try:
            argv = shlex.split(text)
        except ValueError:
            continue
        if not _COMPILER_RE.search(argv[0]):
            continue  # objcopy, size, ar
        if not compile_flags and "-c" in argv and any(a.endswith(".c") for a in argv):
            compile_flags = _clean(argv, root, build_dir)
        elif not link_flags and "-c" not in argv and any(a.endswith("firmware.elf") for a in argv):
            link_flags = _clean(argv, root, build_dir)
    saved = out_dir / FLAGS_FILE
    if compile_flags:
        saved.write_text(json.dumps({"flags": compile_flags, "link_flags": link_flags}, indent=1))
    else:
        try:
            data = json.loads(saved.read_text())
            compile_flags = tuple(data["flags"])
            link_flags = link_flags or tuple(data["link_flags"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return compile_flags, link_flags


def _clean(argv: list[str], root: Path, build_dir: Path) -> tuple[str, ...]:
    """Options only: no compiler, sources, objects, include/library paths or dependency-file options.
    Paths left in options (linker script, map file) are written relative to the project or as
    $BUILD_DIR, so flags of builds into different folders compare equal."""
    keep: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-o", "-MF", "-MT", "-MQ"):
            next(args, None)
        elif arg == "-T":
            keep.append(f"-T{_portable(next(args, ''), root, build_dir)}")
        elif arg.startswith("-") and arg != "-c" and not arg.startswith(("-I", "-L", "-MMD", "-MD", "-MP")):
            keep.append(_portable(arg, root, build_dir))
    return tuple(keep)


def _portable(arg: str, root: Path, build_dir: Path) -> str:
    return arg.replace(str(build_dir), "$BUILD_DIR").replace(f"{root.resolve()}/", "")
