"""harness.backends.board: probe selection and port matching (against fake lists of probes and ports,
the one thin fake allowed: no board is attached here), the real pyOCD path without a probe, and the
real-board test that runs only when a NUCLEO-F767ZI is attached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import build, targets
from harness.backends.board import BoardBackend, PortInfo, ProbeInfo, list_probes, match_port, select_probe
from harness.errors import InfraError
from harness.paths import ROOT

UID_A = "066DFF495051717867154024"
UID_B = "0670FF383930434B43084315"
STLINK_A = ProbeInfo(UID_A, "NUCLEO-F767ZI")
STLINK_B = ProbeInfo(UID_B, "NUCLEO-F767ZI")
PORTS = [
    PortInfo("/dev/ttyS0", None, "ttyS0"),
    PortInfo("/dev/ttyACM0", UID_B, "STM32 STLink"),
    PortInfo("/dev/ttyACM1", UID_A.lower(), "STM32 STLink"),  # same ID, other case
    PortInfo("/dev/ttyUSB0", "A50285BI", "FT232R USB UART"),
]


def test_single_probe_is_used_when_none_requested() -> None:
    assert select_probe([STLINK_A], None) == STLINK_A


def test_several_probes_need_a_choice() -> None:
    with pytest.raises(InfraError) as info:
        select_probe([STLINK_A, STLINK_B], None)
    text = str(info.value)
    assert UID_A in text and UID_B in text and "pick one" in text
    assert "probe" in (info.value.hint or "")


def test_requested_probe_must_match_exactly() -> None:
    assert select_probe([STLINK_A, STLINK_B], UID_B) == STLINK_B
    assert select_probe([STLINK_A, STLINK_B], UID_B.lower()) == STLINK_B
    # pyOCD would take a substring; we never do: a prefix of a UID names no board.
    with pytest.raises(InfraError, match="not attached") as info:
        select_probe([STLINK_A, STLINK_B], UID_A[:10])
    assert UID_A in str(info.value) and UID_B in str(info.value)  # the probes seen


def test_no_probe_at_all() -> None:
    with pytest.raises(InfraError, match="no debug probe attached") as info:
        select_probe([], None)
    assert "pyocd list" in (info.value.hint or "")
    with pytest.raises(InfraError, match="no debug probe attached"):
        select_probe([], UID_A)


def test_port_matched_by_usb_serial_number() -> None:
    assert match_port(PORTS, UID_A) == "/dev/ttyACM1"
    assert match_port(PORTS, UID_B) == "/dev/ttyACM0"


def test_port_override_and_failures(tmp_path: Path) -> None:
    assert match_port(PORTS, UID_A, "/dev/ttyUSB0") == "/dev/ttyUSB0"
    assert match_port(PORTS, UID_A, "socket://localhost:3456") == "socket://localhost:3456"
    link = tmp_path / "nucleo-3"  # e.g. a udev symlink that list_ports does not enumerate
    link.touch()
    assert match_port(PORTS, UID_A, str(link)) == str(link)
    with pytest.raises(InfraError, match="/dev/ttyACM9 not found") as info:
        match_port(PORTS, UID_A, "/dev/ttyACM9")
    assert "/dev/ttyACM0" in str(info.value)
    with pytest.raises(InfraError, match="no serial port has USB serial number") as info:
        match_port(PORTS, "0999FF000000000000000000")
    assert "port" in (info.value.hint or "")
    twins = [PortInfo("/dev/ttyACM0", UID_A), PortInfo("/dev/ttyACM1", UID_A)]
    with pytest.raises(InfraError, match="several serial ports"):
        match_port(twins, UID_A)


def test_resolve_uses_both_lists() -> None:
    backend = BoardBackend(
        pyocd_target="stm32f767zi", probe=UID_B, probes=lambda: [STLINK_A, STLINK_B], ports=lambda: PORTS
    )
    assert backend.resolve() == (STLINK_B, "/dev/ttyACM0")


def _elf(tmp: Path) -> Path:
    elf = tmp / "firmware.elf"
    elf.write_bytes(b"\x7fELF")  # never flashed: every path below stops before pyOCD programs
    return elf


def test_session_without_probe_is_an_infra_error(tmp_path: Path) -> None:
    if list_probes():
        pytest.skip("a debug probe is attached to this machine")
    backend = BoardBackend(pyocd_target="stm32f767zi")  # real pyOCD enumeration, real serial ports
    with pytest.raises(InfraError, match="no debug probe attached"), backend.session(_elf(tmp_path)):
        pytest.fail("a session opened without a board")


def test_listed_probe_that_pyocd_cannot_open_is_not_flashed(tmp_path: Path) -> None:
    if list_probes():
        pytest.skip("a debug probe is attached to this machine")
    # The lists claim a board; the real pyOCD finds no such probe, so nothing can be flashed.
    backend = BoardBackend(pyocd_target="stm32f767zi", probes=lambda: [STLINK_A], ports=lambda: PORTS)
    with pytest.raises(InfraError, match=f"pyOCD cannot find probe {UID_A}"), backend.session(_elf(tmp_path)):
        pytest.fail("a session opened without a board")


def test_missing_image(tmp_path: Path) -> None:
    backend = BoardBackend(pyocd_target="stm32f767zi", probes=lambda: [STLINK_A], ports=lambda: PORTS)
    with pytest.raises(InfraError, match="no firmware image"), backend.session(tmp_path / "nope.elf"):
        pytest.fail("a session opened without an image")


@pytest.mark.board
def test_real_board_handshake(tmp_path: Path) -> None:
    # NESTBENCH_BOARD_PROBE names the probe when pyOCD cannot tell which board it sits on.
    wanted = os.environ.get("NESTBENCH_BOARD_PROBE")
    probes = list_probes()
    nucleo = [p for p in probes if (p.unique_id == wanted if wanted else p.board_target == "stm32f767zi")]
    if not nucleo:
        pytest.skip("no NUCLEO-F767ZI probe attached")
    from harness.protocol import DeviceClient

    target = targets.load_targets(ROOT)["nucleo_f767zi"]
    result = build.build_firmware(
        ROOT,
        target,
        ROOT / "targets/firmware/model_default",
        "boardtest",
        tmp_path / "pio",
        tmp_path / "build.log",
    )
    backend = targets.make_backend(target, ROOT, timeout_s=10, board_options={"probe": nucleo[0].unique_id})
    with backend.session(result.elf) as link:
        hello = DeviceClient(link.port, timeout=10).hello()
    assert hello["board"] == "nucleo_f767zi"
    assert hello["fw"] == "boardtest"
    assert hello["cycles"] == "dwt"
