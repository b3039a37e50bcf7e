"""The target catalog: one PlatformIO env in platformio.ini is one target.

An env names its board (a manifest under the project's own PlatformIO platform, or the project's
`boards_dir`) and the harness keys `custom_nestbench_backend` and `custom_cycle_source`; every other
`custom_*` key is kept in `Target.options` under its full name (`custom_qemu_args`,
`custom_pyocd_target`, ...). Keys are inherited the way PlatformIO does it: `[env:NAME]`, then the
sections it `extends`, then `[env]`. PlatformIO's own `${...}` references are left unexpanded: no
harness key uses them.
"""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import provision, tools
from harness.backends.base import Backend
from harness.errors import InfraError, InputError

INI = "platformio.ini"
BACKENDS = ("qemu", "board", "renode")
CYCLE_SOURCES = ("qemu-icount", "dwt", "renode-dwt")
EMULATOR_BACKENDS = ("qemu", "renode")
# Keys each backend needs from its env.
REQUIRED_OPTIONS = {"qemu": ("custom_qemu_args",), "board": ("custom_pyocd_target",), "renode": ()}
# Options of a board backend a hardware map (or the env, as custom_probe, ...) may set.
BOARD_OPTIONS = ("probe", "port", "baud", "pyocd_target")
DEFAULT_PLATFORM_DIR = Path("targets") / "platform"


@dataclass(frozen=True)
class Target:
    name: str  # the env name, e.g. "qemu_mps2_an500"
    board: str  # board manifest id
    backend: str  # "qemu" | "board" | "renode"
    cycle_source: str  # "qemu-icount" | "dwt" | "renode-dwt"
    is_emulator: bool
    options: dict[str, str] = field(default_factory=dict, hash=False)  # every custom_* key, full name
    max_flash: int = 0  # bytes, from the board manifest (or board_upload.maximum_size)
    max_ram: int = 0
    clock_hz: int = 0  # board's f_cpu
    image_env: str = ""  # the env whose image this target runs (custom_image_env; default: its own)

    @property
    def image(self) -> str:
        return self.image_env or self.name


@dataclass(frozen=True)
class Availability:
    usable: bool
    reason: str  # why not, or what makes it usable (tool version, probe) for `harness targets`


# --- platformio.ini ----------------------------------------------------------------------------


class _Ini:
    """platformio.ini parsed like PlatformIO does (inline comments, lower-case keys), plus line numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("no platformio.ini here", file=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read: {exc}", file=path) from exc
        try:
            self.parser.read_string(text, source=str(path))
        except configparser.Error as exc:
            raise InputError(_parse_message(exc), file=path, line=_parse_line(exc)) from exc
        self.lines = _line_index(text)

    def line(self, section: str, key: str | None = None) -> int | None:
        return self.lines.get((section, key))

    def chain(self, section: str) -> list[str]:
        """Sections a value of `section` is looked up in, in PlatformIO's order."""
        queue = ["env", section]
        seen: list[str] = []
        while queue:
            sec = queue.pop()
            if sec in seen:
                continue
            seen.append(sec)
            if self.parser.has_option(sec, "extends"):
                parents = self.parser.get(sec, "extends")
                queue.extend(p.strip() for p in re.split(r"[,\n]", parents) if p.strip())
        return [s for s in seen if self.parser.has_section(s)]

    def env_options(self, section: str) -> tuple[dict[str, str], dict[str, str]]:
        """(key -> value, key -> section it came from) for an env section, inheritance applied."""
        values: dict[str, str] = {}
        origin: dict[str, str] = {}
        for sec in self.chain(section):
            for key in self.parser.options(sec):
                if key not in values:
                    values[key] = self.parser.get(sec, key).strip()
                    origin[key] = sec
        return values, origin

    def error(self, message: str, section: str, key: str | None = None) -> InputError:
        line = self.line(section, key) if key else None
        return InputError(message, file=self.path, line=line or self.line(section), field=key or section)


def _parse_line(exc: configparser.Error) -> int | None:
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        return int(exc.errors[0][0])
    lineno = getattr(exc, "lineno", None)
    return int(lineno) if lineno else None


def _parse_message(exc: configparser.Error) -> str:
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        return f"cannot parse line {exc.errors[0][1]}"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return "a key before any [section] header"
    return exc.message.splitlines()[0] if hasattr(exc, "message") else str(exc)


_SECTION_RE = re.compile(r"^\[(?P<name>[^\]]+)\]")
_KEY_RE = re.compile(r"^(?P<key>[^\s=:;#\[][^=:]*?)\s*[=:]")


def _line_index(text: str) -> dict[tuple[str, str | None], int]:
    index: dict[tuple[str, str | None], int] = {}
    section: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _SECTION_RE.match(line):
            section = m["name"].strip()
            index.setdefault((section, None), number)
        elif section is not None and (m := _KEY_RE.match(line)):
            index.setdefault((section, m["key"].strip().lower()), number)
    return index


# --- board manifests ---------------------------------------------------------------------------


def _platform_dir(root: Path, platform: str | None) -> Path:
    if platform:
        for scheme in ("symlink://", "file://"):
            if platform.startswith(scheme):
                path = Path(platform[len(scheme) :])
                return path if path.is_absolute() else root / path
    return root / DEFAULT_PLATFORM_DIR


def _manifest_path(root: Path, ini: _Ini, board: str, platform: str | None) -> Path | None:
    boards_dir = ini.parser.get("platformio", "boards_dir", fallback="").strip()
    candidates = [root / boards_dir / f"{board}.json"] if boards_dir else []
    candidates.append(_platform_dir(root, platform) / "boards" / f"{board}.json")
    return next((p for p in candidates if p.is_file()), None)


def _nested(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_int(value: Any) -> int | None:
    text = str(value).strip().rstrip("Ll")  # f_cpu is written "216000000L"
    try:
        return int(text, 0)
    except ValueError:
        return None


def _board_numbers(path: Path, env: dict[str, str]) -> tuple[int, int, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", file=path, line=exc.lineno) from exc
    except OSError as exc:
        raise InputError(f"cannot read board manifest: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise InputError("a board manifest is a JSON object", file=path)
    numbers = []
    for dotted in ("upload.maximum_size", "upload.maximum_ram_size", "build.f_cpu"):
        # An env may override a manifest value as board_upload.maximum_size = ..., like PlatformIO.
        override = env.get(f"board_{dotted}")
        raw = override if override is not None else _nested(data, dotted)
        value = _as_int(raw) if raw is not None else None
        if value is None or value <= 0:
            raise InputError(f"missing or not a positive integer: {raw!r}", file=path, field=dotted)
        numbers.append(value)
    return numbers[0], numbers[1], numbers[2]


# --- catalog -----------------------------------------------------------------------------------


def load_targets(root: Path) -> dict[str, Target]:
    """Every `[env:NAME]` of `<root>/platformio.ini` as a Target, in file order."""
    ini = _Ini(root / INI)
    found: dict[str, Target] = {}
    for section in ini.parser.sections():
        if section.startswith("env:"):
            target = _target(root, ini, section)
            found[target.name] = target
    for target in found.values():
        image = target.options.get("custom_image_env")
        if image is not None and (image not in found or found[image].image != image):
            section = f"env:{target.name}"
            raise ini.error(
                f"custom_image_env {image!r} is not an env that builds its own image",
                section,
                "custom_image_env",
            )
    return found


def _target(root: Path, ini: _Ini, section: str) -> Target:
    name = section[len("env:") :].strip()
    values, origin = ini.env_options(section)
    for key in ("board", "custom_nestbench_backend", "custom_cycle_source"):
        if not values.get(key):
            raise ini.error(f"env {name!r} has no {key}", section, key)
    # An error about an inherited key points at the section that set it.
    backend = values["custom_nestbench_backend"]
    if backend not in BACKENDS:
        key = "custom_nestbench_backend"
        raise ini.error(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}", origin[key], key)
    source = values["custom_cycle_source"]
    if source not in CYCLE_SOURCES:
        key = "custom_cycle_source"
        raise ini.error(
            f"unknown cycle source {source!r}; one of {', '.join(CYCLE_SOURCES)}", origin[key], key
        )
    for key in REQUIRED_OPTIONS[backend]:
        if not values.get(key):
            raise ini.error(f"a {backend} target needs {key}", section, key)
    board = values["board"]
    manifest = _manifest_path(root, ini, board, values.get("platform"))
    if manifest is None:
        expected = _platform_dir(root, values.get("platform")) / "boards" / f"{board}.json"
        raise ini.error(f"no board manifest for {board!r} (expected {expected})", origin["board"], "board")
    max_flash, max_ram, clock = _board_numbers(manifest, values)
    return Target(
        name=name,
        board=board,
        backend=backend,
        cycle_source=source,
        is_emulator=backend in EMULATOR_BACKENDS,
        options={k: v for k, v in values.items() if k.startswith("custom_")},
        max_flash=max_flash,
        max_ram=max_ram,
        clock_hz=clock,
        image_env=values.get("custom_image_env", ""),
    )


def _build_blocker(root: Path) -> str | None:
    for tool in ("arm-none-eabi-gcc", "pio"):
        try:
            tools.require(tool)
        except InfraError as exc:
            return f"{exc.message} ({exc.hint})"
    if not provision.is_provisioned(root):
        return (
            "PlatformIO is not provisioned for offline builds "
            f"(no tool-scons in {provision.scons_dir(root)}): run `./dev.sh setup`"
        )
    return None


def availability(target: Target, root: Path, *, board_options: dict[str, Any] | None = None) -> Availability:
    """Can `target` be built and run on this machine? `reason` says why not, or what it will use."""
    blocker = _build_blocker(root)
    if blocker:
        return Availability(False, blocker)
    if target.backend == "qemu":
        try:
            tools.require("qemu-system-arm")
        except InfraError as exc:
            return Availability(False, f"{exc.message} ({exc.hint})")
        return Availability(True, _short_version("qemu-system-arm"))
    if target.backend == "renode":
        try:
            tools.require("renode")
        except InfraError as exc:
            return Availability(False, f"renode is not installed: {exc.hint}")
        return Availability(True, _short_version("renode"))
    return _board_availability(target, board_options)


def _short_version(tool: str) -> str:
    found = re.search(r"\bv?(\d+\.\d+(?:\.\d+)?)", tools.version(tool) or "")
    return f"{tool} {found[1]}" if found else tool


def _board_availability(target: Target, board_options: dict[str, Any] | None) -> Availability:
    from harness.backends import board

    try:
        tools.require("pyocd")
        probes = board.list_probes()
    except InfraError as exc:
        return Availability(False, f"{exc.message} ({exc.hint})")
    wanted = _board_settings(target, board_options).get("probe")
    if not probes:
        return Availability(
            False, "no debug probe attached (pyOCD sees no probes; check USB, udev rules, `pyocd list`)"
        )
    seen = ", ".join(p.label for p in probes)
    try:
        chosen = board.select_probe(probes, wanted)
    except InfraError as exc:
        return Availability(False, f"{exc.message}")
    return Availability(True, f"probe {chosen.label} (probes seen: {seen})")


def _board_settings(target: Target, board_options: dict[str, Any] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"pyocd_target": target.options.get("custom_pyocd_target")}
    for key in ("probe", "port", "baud"):
        if f"custom_{key}" in target.options:
            settings[key] = target.options[f"custom_{key}"]
    for key, value in (board_options or {}).items():
        if key not in BOARD_OPTIONS:
            raise InputError(
                f"unknown board option {key!r} for {target.name}; known: {', '.join(BOARD_OPTIONS)}",
                field=key,
            )
        settings[key] = value
    if "baud" in settings:
        baud = _as_int(settings["baud"])
        if baud is None or baud <= 0:
            raise InputError(f"baud must be a positive integer, not {settings['baud']!r}", field="baud")
        settings["baud"] = baud
    return settings


def make_backend(
    target: Target, root: Path, *, timeout_s: float, board_options: dict[str, Any] | None = None
) -> Backend:
    """The backend that deploys images to `target`. Board settings come from the env's
    custom_probe/custom_port/custom_baud keys, overridden by `board_options` (e.g. a hardware map)."""
    if target.backend == "qemu":
        from harness.backends.qemu import QemuBackend

        return QemuBackend(target.options["custom_qemu_args"], timeout_s=timeout_s)
    if target.backend == "board":
        from harness.backends.board import BoardBackend

        return BoardBackend(timeout_s=timeout_s, **_board_settings(target, board_options))
    tools.require("renode")
    try:
        from harness.backends import renode
    except ImportError:
        raise InfraError(
            f"target {target.name}: the Renode backend is not part of this nestbench version",
            hint="use the qemu_mps2_an500 emulator target or a board",
        ) from None
    backend: Backend = renode.RenodeBackend(target, root, timeout_s=timeout_s)
    return backend


def targets_report(root: Path) -> list[tuple[Target, Availability]]:
    """Every target with whether it is usable here, for `harness targets`."""
    return [(t, availability(t, root)) for t in load_targets(root).values()]
