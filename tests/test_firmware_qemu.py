"""The default-model firmware really running in QEMU (mps2-an500), driven through QemuBackend and
DeviceClient: handshake, errors, bit-exact outputs, deterministic instruction counts, retries,
faults and hangs."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from fw import fwbuild
from fw.default_model import arena_bytes, build_qmodel
from fw.hostlib import HostModel, build_host_lib
from fw.ref_int8 import run_output

from harness.backends.base import DeviceLink
from harness.backends.qemu import QemuBackend
from harness.errors import DeviceError, DeviceFault, DeviceTimeout, InfraError
from harness.protocol import DeviceClient, DeviceCommandError

pytestmark = pytest.mark.e2e

QM = build_qmodel()
IN_SHAPE = QM.tensors[QM.input].shape


@pytest.fixture(scope="module")
def elf() -> Path:
    return fwbuild.built("qemu_mps2_an500").elf


@dataclass
class Device:
    client: DeviceClient
    link: DeviceLink
    log: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _session(elf: Path, timeout: float = 10.0, port_wrapper: type | None = None) -> Iterator[Device]:
    with QemuBackend(fwbuild.qemu_args(), timeout_s=timeout).session(elf) as link:
        log: list[str] = []
        port = port_wrapper(link.port) if port_wrapper else link.port
        yield Device(DeviceClient(port, timeout=timeout, log=log.append), link, log)


@pytest.fixture
def device(elf: Path) -> Iterator[Device]:
    with _session(elf) as dev:
        yield dev


def _inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, size=IN_SHAPE).astype(np.int8) for _ in range(n)]


def test_hello_identifies_the_image(device: Device) -> None:
    info = device.client.hello()
    arena = arena_bytes()
    assert info == {
        "proto": "1",
        "fw": fwbuild.TEST_BUILD_ID,
        "model": QM.content_hash(),
        "name": "default",
        "levels": "1",
        "board": "qemu_mps2_an500",
        "cycles": "qemu-icount",
        "clock": "25000000",
        "in": str(QM.tensors[QM.input].size),
        "out": str(QM.tensors[QM.output].size),
        "layers": str(len(QM.layers)),
        "arena": str(arena),
        "maxline": "255",
    }
    assert set(device.client.help()) >= {
        "hello",
        "level",
        "load",
        "infer",
        "out",
        "layers",
        "mem",
        "help",
        "_fault",
        "_hang",
    }
    # the UART log saw every line both ways, framed
    assert any(" > " in e and "hello*" in e for e in device.log)
    assert any(" < " in e and "ok proto=1" in e for e in device.log)


def test_argument_and_state_errors(device: Device) -> None:
    c = device.client
    c.hello()
    with pytest.raises(DeviceCommandError) as err:
        c.read_output()  # nothing inferred yet
    assert err.value.code == "state"
    with pytest.raises(DeviceCommandError) as err:
        c.select_level(1)  # the default model has one level
    assert err.value.code == "range"
    c.select_level(0)
    with pytest.raises(DeviceCommandError) as err:
        c.raw("level x")
    assert err.value.code == "arg"
    with pytest.raises(DeviceCommandError) as err:
        c.raw("frobnicate 1 2")
    assert err.value.code == "unknown"
    with pytest.raises(DeviceCommandError) as err:
        c.raw("load 160 00112233")  # runs past the 162-byte input
    assert err.value.code == "range"
    with pytest.raises(DeviceCommandError) as err:
        c.raw("load 0 0g")
    assert err.value.code == "arg"
    data = _inputs(1, 3)[0].tobytes()
    c.load_input(data)
    with pytest.raises(DeviceCommandError) as err:
        c.infer(1, 0, zlib.crc32(data) ^ 1)
    assert err.value.code == "input-crc"
    with pytest.raises(DeviceCommandError) as err:
        c.infer(33, 0)
    assert err.value.code == "range"
    # a request longer than maxline is refused as a whole, not half-executed
    with pytest.raises(DeviceError, match="line limit"):
        c.raw("load 0 " + "00" * 200)
    assert c.infer(1, 0) and c.read_output()  # the device is still fine


def test_outputs_are_bit_exact(device: Device, tmp_path: Path) -> None:
    host = HostModel(build_host_lib(fwbuild.DEFAULT_MODEL, tmp_path / "libnb.so"))
    c = device.client
    c.hello()
    c.select_level(0)
    for x in _inputs(12, 11):
        c.load_input(x.tobytes())
        c.infer(1, 0)
        got = np.frombuffer(c.read_output(), np.int8)
        np.testing.assert_array_equal(got, run_output(QM, x))  # the TFLite-semantics reference
        np.testing.assert_array_equal(got, host.infer(x))  # the same sources built for the host


def _measure(dev: Device, x: np.ndarray) -> tuple[list[int], list[int], dict[str, int]]:
    c = dev.client
    c.hello()
    c.load_input(x.tobytes())
    cycles = c.infer(5, 2)
    layers = c.layer_cycles()
    # again after commands of other lengths: the firmware starts timing at another point of QEMU's
    # 5-instruction / 8-tick pattern, which must not change the counts by even one
    for pad in range(1, 4):
        c.raw("level" + " " * pad + "0")
        assert c.infer(2, 0) == cycles[:2]
        assert c.layer_cycles() == layers
    return cycles, layers, c.mem()


def test_instruction_counts_are_positive_consistent_and_deterministic(elf: Path) -> None:
    x = _inputs(1, 21)[0]
    with _session(elf) as first:
        cycles, layers, mem = _measure(first, x)
    with _session(elf) as second:
        cycles2, layers2, _ = _measure(second, x)
    assert len(set(cycles)) == 1, "repeated inferences must retire the same instruction count"
    assert cycles == cycles2 and layers == layers2, "two QEMU runs must give identical counts"
    assert len(layers) == len(QM.layers) and min(layers) > 0
    # the per-layer counts cover the run; the rest is the runner's own bookkeeping
    assert 0.9 * cycles[0] <= sum(layers) <= cycles[0]
    # the counts do not depend on the data (branch-free kernels)
    with _session(elf) as third:
        other, _, _ = _measure(third, _inputs(1, 99)[0])
    assert other == cycles
    assert 0 < mem["stack"] < 16 * 1024 and mem["arena"] == arena_bytes()


class _NoisyPort:
    """Wraps the real port; flips one bit of the next request once `corrupt_next` is set (a noisy
    line between host and device)."""

    def __init__(self, port: object) -> None:
        self._port = port
        self.corrupt_next = False

    def write(self, data: bytes) -> int | None:
        if self.corrupt_next:
            self.corrupt_next = False
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return self._port.write(data)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._port, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("_port", "corrupt_next"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._port, name, value)


def test_a_corrupted_request_is_retried(elf: Path) -> None:
    with _session(elf, port_wrapper=_NoisyPort) as dev:
        dev.client.hello()  # settles the start-up (a late boot banner also makes hello retry)
        before, logged = dev.client.retried, len(dev.log)
        dev.client.port.corrupt_next = True  # type: ignore[attr-defined]
        assert dev.client.hello()["model"] == QM.content_hash()
        assert dev.client.retried == before + 1
        new = dev.log[logged:]
        assert any("< ? err crc" in e for e in new)  # the device saw the bad frame and said so
        sent = [e.split(" > ")[1].split()[0] for e in new if " > " in e]
        assert len(sent) == 2 and sent[0] != sent[1]  # the resend carries a fresh sequence number


def test_fault_is_reported_with_registers(elf: Path) -> None:
    with elf.open("rb") as fh:
        syms = {s.name: s for s in ELFFile(fh).get_section_by_name(".symtab").iter_symbols()}
        trap = syms["nb_cmd_diag_fault"]
        lo, hi = trap["st_value"] & ~1, (trap["st_value"] & ~1) + trap["st_size"]
    with _session(elf) as dev:
        dev.client.hello()
        with pytest.raises(DeviceFault) as fault:
            dev.client.raw("_fault")
    regs = fault.value.registers
    assert lo <= regs["pc"] < hi, f"pc 0x{regs['pc']:08x} not in nb_cmd_diag_fault [0x{lo:x}, 0x{hi:x})"
    assert regs["cfsr"] & (1 << 16)  # UFSR.UNDEFINSTR: the UDF the diagnostic executes
    assert regs["hfsr"] & (1 << 30)  # FORCED: escalated to HardFault
    assert set(regs) == {"pc", "lr", "psr", "cfsr", "hfsr", "mmfar", "bfar"}


def test_hang_times_out_within_the_bound(elf: Path) -> None:
    with _session(elf, timeout=1.0) as dev:
        dev.client.hello()
        start = time.monotonic()
        with pytest.raises(DeviceTimeout) as err:
            dev.client.raw("_hang")
        elapsed = time.monotonic() - start
    assert any("_hang" in line for line in err.value.last_lines)
    assert elapsed < 10.0  # bounded by the 1 s command timeout, with room for a slow machine


def test_qemu_is_killed_when_the_session_body_fails(elf: Path) -> None:
    backend = QemuBackend(fwbuild.qemu_args(), timeout_s=5)
    with pytest.raises(RuntimeError, match="boom"), backend.session(elf) as link:
        pid = int(link.description.split()[2])
        assert Path(f"/proc/{pid}").exists()
        raise RuntimeError("boom")
    assert not Path(f"/proc/{pid}").exists()  # terminated and reaped


def test_qemu_start_failures_are_infra_errors(elf: Path, tmp_path: Path) -> None:
    missing = QemuBackend(fwbuild.qemu_args(), qemu="qemu-system-nonexistent")
    with pytest.raises(InfraError) as err, missing.session(elf):
        pass
    assert "qemu-system-arm" in (err.value.hint or "")
    with pytest.raises(InfraError, match="exited"), QemuBackend("-machine no-such-board").session(elf):
        pass
    with (
        pytest.raises(InfraError, match="does not exist"),
        QemuBackend(fwbuild.qemu_args()).session(tmp_path / "x.elf"),
    ):
        pass
