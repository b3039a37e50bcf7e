"""The Renode target. Renode itself is not installable here (no package in the reachable registries),
so the tests that need it skip with that reason; everything else — the platform description against
the firmware's registers, the generated script, the target catalog, the protocol over a TCP socket,
and the backend's whole session lifecycle (with a thin stand-in for the `renode` launcher) — runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import serial
from conftest import ROOT
from fw import fwbuild
from fw.default_model import build_qmodel
from fw.stand_in_renode import QEMU

from harness import reference, targets
from harness.backends import renode
from harness.errors import InfraError
from harness.protocol import DeviceClient

REPL = ROOT / "targets" / "renode" / "nucleo_f767zi.repl"
REGS = ROOT / "targets" / "firmware" / "boards" / "nucleo_f767zi" / "stm32f767_regs.h"
NO_RENODE = "Renode is not installed (not packaged for Debian or PyPI; see README, 'Renode')"


def registrations(repl: str) -> dict[str, int]:
    """peripheral name -> base address, from `name: Type @ sysbus ADDR` or `@ sysbus <ADDR, +SIZE>`."""
    found = re.findall(r"^(\w+): [\w.]+ @ sysbus <?(0x[0-9A-Fa-f]+)", repl, flags=re.M)
    return {name: int(addr, 16) for name, addr in found}


def test_platform_covers_every_peripheral_the_firmware_touches() -> None:
    regs = REGS.read_text()
    bases = {m[0]: int(m[1], 16) for m in re.findall(r"#define (\w+_BASE\w*) (0x[0-9A-Fa-f]+)u", regs)}
    placed = set(registrations(REPL.read_text()).values())
    for name in ("RCC_BASE", "PWR_BASE", "FLASH_BASE_REG", "GPIOD_BASE", "USART3_BASE"):
        assert bases[name] in placed, f"{name} 0x{bases[name]:08x} is not modelled in {REPL.name}"
    text = REPL.read_text()
    mips = int(re.search(r"PerformanceInMips: (\d+)", text)[1])  # type: ignore[index]
    dwt = int(re.search(r"dwt: Miscellaneous\.DWT @ sysbus 0xE0001000\s+frequency: (\d+)", text)[1])  # type: ignore[index]
    assert dwt == mips * 1_000_000  # one CYCCNT tick per executed instruction
    mem = registrations(text)
    assert mem["flash"] == 0x08000000 and mem["sram"] == 0x20000000


@pytest.mark.e2e
def test_script_loads_the_nucleo_image_at_its_vector_table(tmp_path: Path) -> None:
    elf = fwbuild.built("nucleo_f767zi").elf
    target = targets.load_targets(ROOT)["renode_nucleo_f767zi"]
    backend = renode.RenodeBackend(target, ROOT)
    script = backend.script(elf, 4321).render()
    assert f"machine LoadPlatformDescription @{REPL.resolve()}" in script
    assert 'emulation CreateServerSocketTerminal 4321 "uart" false' in script
    assert "connector Connect sysbus.usart3 uart" in script
    assert f"sysbus LoadELF @{elf}" in script
    assert "sysbus.cpu VectorTableOffset 0x08000000" in script
    assert script.index("LoadELF") < script.index("VectorTableOffset") < script.index("start")
    with pytest.raises(ValueError, match="spaces"):
        renode.RenodeScript("m", REPL, tmp_path / "with space.elf", 0, "sysbus.usart3", 1).render()


def test_renode_target_runs_the_nucleo_image() -> None:
    catalog = targets.load_targets(ROOT)
    target = catalog["renode_nucleo_f767zi"]
    assert (target.backend, target.cycle_source, target.is_emulator) == ("renode", "renode-dwt", True)
    assert target.image == "nucleo_f767zi" and catalog["nucleo_f767zi"].image == "nucleo_f767zi"


@pytest.mark.skipif(shutil.which("renode") is not None, reason="Renode is installed here")
def test_without_renode_the_target_says_how_to_install_it() -> None:
    target = targets.load_targets(ROOT)["renode_nucleo_f767zi"]
    avail = targets.availability(target, ROOT)
    assert not avail.usable
    assert "github.com/renode/renode/releases" in avail.reason
    with pytest.raises(InfraError, match="Renode"):
        targets.make_backend(target, ROOT, timeout_s=5)


@pytest.mark.e2e
def test_protocol_client_over_a_tcp_socket() -> None:
    """The Renode and farm links are sockets: the same client, through pyserial's socket:// URL, to a
    real firmware (QEMU with its UART on a TCP server)."""
    elf = fwbuild.built("qemu_mps2_an500").elf
    port = renode.free_port()
    qemu = subprocess.Popen(
        [*QEMU, "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on", "-kernel", str(elf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        link = _connect(port)
        client = DeviceClient(link, timeout=10)
        qm = build_qmodel()
        assert client.hello()["model"] == qm.content_hash()
        x = np.random.default_rng(3).integers(-128, 128, qm.tensors[qm.input].shape, dtype=np.int8)
        client.load_input(x.tobytes())
        assert client.infer(2, 1, zlib.crc32(x.tobytes()))[0] > 0
        out = np.frombuffer(client.read_output(), np.int8)
        assert np.array_equal(out, reference.run_int8(qm, x[None])[0])
        link.close()
    finally:
        qemu.kill()
        qemu.wait()


def _connect(port: int) -> serial.SerialBase:
    for _ in range(100):
        try:
            return serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=0.05)
        except serial.SerialException:
            time.sleep(0.05)
    raise AssertionError("QEMU's UART socket never opened")


@pytest.mark.e2e
def test_session_lifecycle_with_a_stand_in_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Script written, process started, UART socket reached, protocol spoken, clean `quit` through the
    monitor. The stand-in (tests/fw/stand_in_renode.py) runs the ELF in QEMU instead of Renode."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "renode").symlink_to(Path(__file__).parent / "fw" / "stand_in_renode.py")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    elf = fwbuild.built("qemu_mps2_an500").elf  # the stand-in runs mps2 images
    backend = renode.RenodeBackend(
        targets.load_targets(ROOT)["renode_nucleo_f767zi"], ROOT, boot_timeout_s=20
    )
    with backend.session(elf) as link:
        assert "127.0.0.1" in link.description
        info = DeviceClient(link.port, timeout=10).hello()
        assert info["model"] == build_qmodel().content_hash()
        log = link.diagnostics()
    assert "stand-in renode: uart on" in log
    leftover = subprocess.run(["pgrep", "-f", str(elf)], capture_output=True, text=True).stdout
    assert not leftover.strip(), "the emulator outlived the session"


@pytest.mark.skipif(shutil.which("renode") is None, reason=NO_RENODE)
@pytest.mark.e2e
def test_nucleo_image_in_real_renode_is_bit_exact() -> None:
    elf = fwbuild.built("nucleo_f767zi").elf
    backend = renode.RenodeBackend(targets.load_targets(ROOT)["renode_nucleo_f767zi"], ROOT)
    qm = build_qmodel()
    with backend.session(elf) as link:
        client = DeviceClient(link.port, timeout=60)
        info = client.hello()
        assert (info["board"], info["cycles"]) == ("nucleo_f767zi", "dwt")
        x = np.random.default_rng(5).integers(-128, 128, qm.tensors[qm.input].shape, dtype=np.int8)
        client.load_input(x.tobytes())
        counts = client.infer(3, 1, zlib.crc32(x.tobytes()))
        assert min(counts) > 0 and len(set(counts)) == 1  # instruction counts: deterministic
        assert np.array_equal(
            np.frombuffer(client.read_output(), np.int8), reference.run_int8(qm, x[None])[0]
        )
