"""The target catalog (harness.targets) and tool checks (harness.tools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import targets, tools
from harness.backends.board import BoardBackend
from harness.errors import InfraError, InputError
from harness.paths import ROOT

BOARD_JSON = {
    "build": {"cpu": "cortex-m7", "f_cpu": "480000000L", "mcu": "stm32h743zit6"},
    "name": "A new board",
    "upload": {"maximum_size": 1048576, "maximum_ram_size": 262144},
}

BASE_INI = """\
[platformio]
core_dir = .pio-core
src_dir = targets/firmware

[env]
platform = symlink://targets/platform
build_src_filter = +<core/>  ; inline comments are allowed, like PlatformIO
custom_cycle_source = dwt

[env:nucleo_h743zi]
board = nucleo_h743zi
custom_nestbench_backend = board
custom_pyocd_target = stm32h743zitx
"""


def _project(tmp: Path, ini: str, boards: dict[str, dict] | None = None) -> Path:
    (tmp / "platformio.ini").write_text(ini)
    folder = tmp / "targets" / "platform" / "boards"
    folder.mkdir(parents=True)
    for name, data in (boards or {"nucleo_h743zi": BOARD_JSON}).items():
        (folder / f"{name}.json").write_text(json.dumps(data))
    return tmp


def test_repository_targets() -> None:
    found = targets.load_targets(ROOT)
    qemu = found["qemu_mps2_an500"]
    assert (qemu.backend, qemu.cycle_source, qemu.is_emulator) == ("qemu", "qemu-icount", True)
    assert qemu.board == "mps2_an500"
    assert "-icount" in qemu.options["custom_qemu_args"]
    nucleo = found["nucleo_f767zi"]
    assert (nucleo.backend, nucleo.cycle_source, nucleo.is_emulator) == ("board", "dwt", False)
    assert nucleo.options["custom_pyocd_target"] == "stm32f767zi"
    assert nucleo.clock_hz == 216_000_000
    assert nucleo.max_flash == 2 * 1024 * 1024
    assert 0 < nucleo.max_ram <= 512 * 1024


def test_adding_a_board_is_one_env(tmp_path: Path) -> None:
    root = _project(tmp_path, BASE_INI)
    found = targets.load_targets(root)
    assert list(found) == ["nucleo_h743zi"]
    t = found["nucleo_h743zi"]
    assert t.cycle_source == "dwt"  # inherited from [env]
    assert (t.backend, t.is_emulator, t.clock_hz, t.max_flash, t.max_ram) == (
        "board",
        False,
        480_000_000,
        1048576,
        262144,
    )
    assert t.options == {
        "custom_cycle_source": "dwt",
        "custom_nestbench_backend": "board",
        "custom_pyocd_target": "stm32h743zitx",
    }


def test_extends_and_board_overrides(tmp_path: Path) -> None:
    ini = (
        BASE_INI
        + """
[qemu_common]
custom_nestbench_backend = qemu
custom_cycle_source = qemu-icount
custom_qemu_args = -machine mps2-an500

[env:emu_small]
extends = qemu_common
board = nucleo_h743zi
board_upload.maximum_size = 65536
board_build.f_cpu = 25000000L
"""
    )
    found = targets.load_targets(_project(tmp_path, ini))
    assert list(found) == ["nucleo_h743zi", "emu_small"]
    emu = found["emu_small"]
    # The extended section wins over [env], like PlatformIO.
    assert (emu.backend, emu.cycle_source, emu.is_emulator) == ("qemu", "qemu-icount", True)
    assert (emu.max_flash, emu.max_ram, emu.clock_hz) == (65536, 262144, 25_000_000)


@pytest.mark.parametrize(
    ("ini", "line", "field", "words"),
    [
        (BASE_INI.replace("= board\n", "= jtag\n"), 12, "custom_nestbench_backend", "unknown backend"),
        (
            BASE_INI.replace("custom_cycle_source = dwt", "custom_cycle_source = wallclock"),
            8,
            "custom_cycle_source",
            "unknown cycle source",
        ),
        (
            BASE_INI.replace("board = nucleo_h743zi", "board = no_such_board"),
            11,
            "board",
            "no board manifest",
        ),
        (BASE_INI.replace("custom_pyocd_target = stm32h743zitx\n", ""), 10, "custom_pyocd_target", "needs"),
        (BASE_INI.replace("board = nucleo_h743zi\n", ""), 10, "board", "has no board"),
        (BASE_INI + "this line is not a key\n", 14, None, "cannot parse"),
    ],
)
def test_bad_ini_names_file_line_and_field(
    tmp_path: Path, ini: str, line: int, field: str | None, words: str
) -> None:
    root = _project(tmp_path, ini)
    with pytest.raises(InputError) as info:
        targets.load_targets(root)
    err = info.value
    assert Path(str(err.file)) == root / "platformio.ini"
    assert err.line == line
    assert err.field == field
    assert words in str(err)


def test_bad_board_manifest(tmp_path: Path) -> None:
    broken = dict(BOARD_JSON, upload={"maximum_size": 1048576})
    root = _project(tmp_path, BASE_INI, {"nucleo_h743zi": broken})
    with pytest.raises(InputError, match="maximum_ram_size") as info:
        targets.load_targets(root)
    assert str(info.value.file).endswith("nucleo_h743zi.json")
    (root / "targets/platform/boards/nucleo_h743zi.json").write_text('{"build": {\n  "f_cpu": }')
    with pytest.raises(InputError, match="invalid JSON") as info:
        targets.load_targets(root)
    assert info.value.line == 2


def test_board_target_not_available_without_probe() -> None:
    nucleo = targets.load_targets(ROOT)["nucleo_f767zi"]
    from harness.backends.board import list_probes

    if list_probes():
        pytest.skip("a debug probe is attached to this machine")
    avail = targets.availability(nucleo, ROOT)
    assert not avail.usable
    assert "probe" in avail.reason
    report = dict((t.name, a) for t, a in targets.targets_report(ROOT))
    assert report["nucleo_f767zi"].usable is False
    assert set(report) == {"qemu_mps2_an500", "nucleo_f767zi", "renode_nucleo_f767zi"}


def test_qemu_target_needs_provisioned_platformio(tmp_path: Path) -> None:
    ini = (
        BASE_INI
        + """
[env:emu]
board = nucleo_h743zi
custom_nestbench_backend = qemu
custom_cycle_source = qemu-icount
custom_qemu_args = -machine mps2-an500
"""
    )
    root = _project(tmp_path, ini)  # a fresh project: no .pio-core/packages/tool-scons
    avail = targets.availability(targets.load_targets(root)["emu"], root)
    assert not avail.usable
    assert "tool-scons" in avail.reason and "setup" in avail.reason


def test_qemu_target_available_here() -> None:
    qemu = targets.load_targets(ROOT)["qemu_mps2_an500"]
    from harness import provision

    if not provision.is_provisioned(ROOT) or shutil.which("qemu-system-arm") is None:
        pytest.skip("PlatformIO is not provisioned or QEMU is missing: run ./dev.sh setup")
    avail = targets.availability(qemu, ROOT)
    assert avail.usable, avail.reason
    assert avail.reason.startswith("qemu-system-arm ")  # with its version, for `harness targets`
    assert any(c.isdigit() for c in avail.reason)


def test_renode_target_without_renode(tmp_path: Path) -> None:
    if shutil.which("renode"):
        pytest.skip("renode is installed here")
    ini = (
        BASE_INI
        + """
[env:renode_f767]
board = nucleo_h743zi
custom_nestbench_backend = renode
custom_cycle_source = renode-dwt
"""
    )
    root = _project(tmp_path, ini)
    (root / ".pio-core").symlink_to(ROOT / ".pio-core")  # provisioned, so only renode is missing
    t = targets.load_targets(root)["renode_f767"]
    assert t.is_emulator
    avail = targets.availability(t, root)
    if "tool-scons" in avail.reason:
        pytest.skip("PlatformIO is not provisioned in the repository: run ./dev.sh setup")
    assert not avail.usable
    assert "renode" in avail.reason.lower() and "github.com/renode/renode/releases" in avail.reason
    with pytest.raises(InfraError, match="renode"):
        targets.make_backend(t, root, timeout_s=5)


def test_make_board_backend_options() -> None:
    nucleo = targets.load_targets(ROOT)["nucleo_f767zi"]
    backend = targets.make_backend(nucleo, ROOT, timeout_s=7)
    assert isinstance(backend, BoardBackend) and backend.kind == "board"
    assert (backend.pyocd_target, backend.probe, backend.port, backend.baud) == (
        "stm32f767zi",
        None,
        None,
        115200,
    )
    backend = targets.make_backend(
        nucleo,
        ROOT,
        timeout_s=7,
        board_options={"probe": "066DFF3", "port": "/dev/ttyACM3", "baud": "230400"},
    )
    assert isinstance(backend, BoardBackend)
    assert (backend.probe, backend.port, backend.baud) == ("066DFF3", "/dev/ttyACM3", 230400)
    with pytest.raises(InputError, match="unknown board option") as info:
        targets.make_backend(nucleo, ROOT, timeout_s=7, board_options={"serial": "x"})
    assert info.value.field == "serial"


def test_make_qemu_backend() -> None:
    qemu = targets.load_targets(ROOT)["qemu_mps2_an500"]
    pytest.importorskip("harness.backends.qemu", reason="the QEMU backend is not written yet")
    backend = targets.make_backend(qemu, ROOT, timeout_s=5)
    assert backend.kind == "qemu"


def test_tools_require_and_version() -> None:
    gcc = tools.require("arm-none-eabi-gcc")
    assert gcc.name == "arm-none-eabi-gcc" and gcc.is_file()
    assert "arm-none-eabi-gcc" in (tools.version("arm-none-eabi-gcc") or "")
    pio = tools.require("pio")
    assert pio.parent == Path(__import__("sys").executable).parent
    assert "PlatformIO" in (tools.version("pio") or "")
    with pytest.raises(ValueError):
        tools.require("make-coffee")


def test_missing_tool_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # nothing on PATH: the real lookup finds nothing
    with pytest.raises(InfraError) as info:
        tools.require("qemu-system-arm")
    assert info.value.hint and "apt-get install qemu-system-arm" in info.value.hint
    with pytest.raises(InfraError) as info:
        tools.require("arm-none-eabi-gcc")
    assert info.value.hint and "gcc-arm-none-eabi libnewlib-arm-none-eabi" in info.value.hint
    with pytest.raises(InfraError) as info:
        tools.require("renode")
    assert info.value.hint and "renode" in info.value.hint.lower()
    assert tools.require("pio").is_file()  # the venv's pio does not depend on PATH
