"""The firmware builds offline with PlatformIO for both envs, and the images look like what the
boards need: vector tables where the cores look for them, the F767's clock/DWT set-up really linked
in, no heap. Also the offline provisioning of tool-scons."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from fw import fwbuild
from fw.default_model import MODEL_DIR, write_model

from harness import provision
from harness.errors import InfraError

ROOT = fwbuild.ROOT


def _symbols(elf: ELFFile) -> dict[str, tuple[int, int]]:
    table = elf.get_section_by_name(".symtab")
    assert table is not None
    return {s.name: (s["st_value"], s["st_size"]) for s in table.iter_symbols() if s.name}


def _read(elf: ELFFile, addr: int, size: int) -> bytes:
    for section in elf.iter_sections():
        start = section["sh_addr"]
        if (
            section["sh_type"] == "SHT_PROGBITS"
            and start <= addr
            and addr + size <= start + section["sh_size"]
        ):
            data: bytes = section.data()
            return data[addr - start : addr - start + size]
    raise AssertionError(f"0x{addr:08x} is not in a loaded section")


def _usage(output: str) -> dict[str, int]:
    used = {}
    for kind in ("RAM", "Flash"):
        match = re.search(rf"^{kind}:.*\(used (\d+) bytes from (\d+) bytes\)", output, re.M)
        assert match, f"no {kind} usage line in:\n{output[-2000:]}"
        used[kind] = int(match.group(1))
        assert int(match.group(1)) <= int(match.group(2))
    return used


# -- provisioning ---------------------------------------------------------------------------------


def test_provision_is_idempotent_and_complete() -> None:
    provision.provision(ROOT)
    folder = provision.scons_dir(ROOT)
    stamp = (folder / "package.json").stat().st_mtime_ns
    provision.provision(ROOT)  # second call: nothing to do, nothing rewritten
    assert (folder / "package.json").stat().st_mtime_ns == stamp
    piopm = json.loads((folder / ".piopm").read_text())
    assert piopm["spec"]["owner"] == "platformio" and piopm["version"] == "4.41101.0"
    assert json.loads((folder / "package.json").read_text())["version"] == "4.41101.0"
    # the launcher really starts the unpacked SCons
    out = subprocess.run(
        [sys.executable, str(folder / "scons.py"), "--version"], capture_output=True, text=True, check=False
    )
    assert "SCons" in out.stdout and "4.11.1" in out.stdout


@pytest.mark.e2e
def test_provision_into_a_fresh_root(tmp_path: Path) -> None:
    provision.provision(tmp_path)
    assert provision.is_provisioned(tmp_path)
    # a damaged package is noticed and replaced
    (provision.scons_dir(tmp_path) / "scons.py").unlink()
    assert not provision.is_provisioned(tmp_path)
    provision.provision(tmp_path)
    assert provision.is_provisioned(tmp_path)


def test_missing_tools_are_infra_errors_with_install_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InfraError) as err:
        provision.provision(tmp_path, python=str(tmp_path / "no-python"))  # pip cannot run
    assert "scons" in str(err.value) and err.value.hint
    assert not provision.is_provisioned(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no arm-none-eabi-gcc anywhere
    with pytest.raises(InfraError) as err:
        provision.provision(tmp_path)
    assert "gcc-arm-none-eabi" in (err.value.hint or "") and "libnewlib-arm-none-eabi" in (
        err.value.hint or ""
    )


def test_pio_env_turns_off_phoning_home() -> None:
    env = provision.pio_env({"PATH": "/usr/bin"})
    assert env["PATH"] == "/usr/bin"
    assert env["PLATFORMIO_SETTING_ENABLE_TELEMETRY"] == "no"
    assert int(env["PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL"]) >= 365


def test_default_model_source_is_up_to_date(tmp_path: Path) -> None:
    write_model(tmp_path)
    for name in ("model.c", "model.h"):
        assert (MODEL_DIR / name).read_text() == (tmp_path / name).read_text(), (
            f"targets/firmware/model_default/{name} is stale; regenerate: "
            "cd tests && ../.venv/bin/python -m fw.default_model"
        )


# -- builds ---------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_qemu_image() -> None:
    build = fwbuild.built("qemu_mps2_an500")
    used = _usage(build.output)
    with build.elf.open("rb") as fh:
        elf = ELFFile(fh)
        syms = _symbols(elf)
        vectors = elf.get_section_by_name(".isr_vector")
        assert vectors is not None and vectors["sh_addr"] == 0x00000000  # QEMU reads the reset vector here
        sp, reset = struct.unpack("<II", vectors.data()[:8])
        assert sp == syms["__stack_end"][0] and 0x20000000 <= sp <= 0x20400000
        assert reset == syms["Reset_Handler"][0] | 1  # Thumb bit
        # the build ID from NESTBENCH_BUILD_ID is compiled in
        assert fwbuild.TEST_BUILD_ID.encode() in elf.get_section_by_name(".rodata").data()
        assert "nb_model" in syms and "nb_conv2d_s8" in syms
    assert used["Flash"] > 1000 and used["RAM"] >= 16 * 1024  # stack reserve counts as RAM


@pytest.mark.e2e
def test_nucleo_image_has_its_board_bring_up() -> None:
    build = fwbuild.built("nucleo_f767zi")
    used = _usage(build.output)
    assert used["RAM"] <= 128 * 1024
    with build.elf.open("rb") as fh:
        elf = ELFFile(fh)
        syms = _symbols(elf)
        vectors = elf.get_section_by_name(".isr_vector")
        assert vectors is not None and vectors["sh_addr"] == 0x08000000
        sp, reset = struct.unpack("<II", vectors.data()[:8])
        assert sp == syms["__stack_end"][0] and 0x20000000 < sp <= 0x20020000  # top of the stack in DTCM
        assert 0x08000000 <= reset < 0x08200000 and reset & 1
        assert vectors["sh_size"] == 4 * (16 + 110)

        def code_of(name: str) -> bytes:
            addr, size = syms[name]
            assert size > 0, name
            return _read(elf, addr & ~1, size)

        def words(blob: bytes) -> set[int]:
            return {struct.unpack_from("<I", blob, i)[0] for i in range(0, len(blob) - 3, 2)}

        # the clock set-up programs the PLL for 216 MHz from the 8 MHz MCO (HSE bypass: M=4, N=216,
        # P=2, Q=9) and touches PWR (over-drive) and the RCC/FLASH block; the DWT unlock key and
        # the DWT are really linked in
        pll_hse = (1 << 22) | 4 | (216 << 6) | (0 << 16) | (9 << 24) | (2 << 28)
        clock = words(code_of("nb_board_clock_init"))
        assert {pll_hse, 0x40007000} <= clock
        assert clock & {0x40023000, 0x40023800, 0x40023C00}
        cyccnt = words(code_of("nb_armv7m_enable_cyccnt"))
        assert {0xC5ACCE55, 0xE0001000} <= cyccnt  # LAR key, DWT base
        assert code_of("nb_board_uart_init")
        for name in ("hal_init", "nb_armv7m_enable_dcache", "nb_armv7m_enable_icache", "HardFault_Handler"):
            assert name in syms


@pytest.mark.e2e
def test_malloc_cannot_link(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.c", "model.h"):
        (model / name).write_text((MODEL_DIR / name).read_text())
    (model / "heap.c").write_text(
        "#include <stdlib.h>\nvoid *nb_grab(size_t n);\nvoid *nb_grab(size_t n) { return malloc(n); }\n"
    )
    # --undefined makes nb_grab a root the linker's garbage collection keeps, as a real call would
    result = fwbuild.pio_run(
        "qemu_mps2_an500",
        tmp_path / "build",
        model_dir=model,
        extra_env={"PLATFORMIO_BUILD_FLAGS": "-Wl,--undefined=nb_grab"},
    )
    assert result.returncode != 0
    assert "_sbrk" in result.output


@pytest.mark.e2e
def test_bad_build_inputs_fail_with_a_message(tmp_path: Path) -> None:
    missing = fwbuild.pio_run("qemu_mps2_an500", tmp_path / "b1", model_dir=tmp_path / "nowhere")
    assert missing.returncode != 0 and "NESTBENCH_MODEL_DIR" in missing.output
    bad_id = fwbuild.pio_run("qemu_mps2_an500", tmp_path / "b2", build_id="has space")
    assert bad_id.returncode != 0 and "NESTBENCH_BUILD_ID" in bad_id.output
