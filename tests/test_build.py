"""harness.build: real `pio run` builds of the QEMU target (offline PlatformIO, arm-none-eabi-gcc)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import build, provision, targets
from harness.elfsize import elf_sizes
from harness.errors import InfraError, InputError
from harness.paths import ROOT

FIRMWARE = ROOT / "targets" / "firmware"
MODEL_DEFAULT = FIRMWARE / "model_default"


@pytest.fixture(scope="module")
def qemu_target() -> targets.Target:
    if not (FIRMWARE / "core" / "main.c").is_file() or not list(MODEL_DEFAULT.glob("*.c")):
        pytest.skip("the firmware sources (targets/firmware/core, model_default) are not there yet")
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed: run ./dev.sh setup")
    provision.provision(ROOT)  # idempotent; raises InfraError with a hint if it cannot
    return targets.load_targets(ROOT)["qemu_mps2_an500"]


@pytest.fixture(scope="module")
def default_build(qemu_target: targets.Target, tmp_path_factory: pytest.TempPathFactory) -> build.BuildResult:
    folder = tmp_path_factory.mktemp("default_build")
    return build.build_firmware(
        ROOT, qemu_target, MODEL_DEFAULT, "t3stbuild", folder / "pio", folder / "logs" / "build.log"
    )


@pytest.mark.e2e
def test_build_default_model(qemu_target: targets.Target, default_build: build.BuildResult) -> None:
    result = default_build
    assert result.elf == result.log_path.parent.parent / "pio" / "qemu_mps2_an500" / "firmware.elf"
    assert result.elf.read_bytes()[:4] == b"\x7fELF"
    sizes = elf_sizes(result.elf)
    assert (result.flash_bytes, result.ram_bytes) == (sizes.flash_bytes, sizes.ram_bytes)
    assert 0 < result.flash_bytes <= qemu_target.max_flash
    assert 0 < result.ram_bytes <= qemu_target.max_ram
    assert b"t3stbuild" in result.elf.read_bytes()  # the build ID is compiled in
    assert "-mcpu=cortex-m7" in result.flags and not any(f.startswith("-I") for f in result.flags)
    assert "-Wl,--gc-sections" in result.link_flags
    assert any(f.startswith("-T") and f.endswith(".ld") for f in result.link_flags)
    assert result.pio_version and "PlatformIO" in result.pio_version
    assert result.gcc_version and "arm-none-eabi-gcc" in result.gcc_version
    assert result.duration_s > 0
    assert "firmware.elf" in result.log_path.read_text()


@pytest.mark.e2e
def test_rebuild_compiles_nothing_but_keeps_flags(
    qemu_target: targets.Target, default_build: build.BuildResult, tmp_path: Path
) -> None:
    log = tmp_path / "again.log"
    pio_dir = default_build.elf.parent.parent
    again = build.build_firmware(ROOT, qemu_target, MODEL_DEFAULT, "t3stbuild", pio_dir, log)
    assert "-c" not in log.read_text().split()  # nothing was compiled this time
    assert again.flags == default_build.flags
    assert again.link_flags == default_build.link_flags
    assert again.flash_bytes == default_build.flash_bytes


@pytest.mark.e2e
def test_built_image_boots_through_make_backend(
    qemu_target: targets.Target, default_build: build.BuildResult
) -> None:
    protocol = pytest.importorskip("harness.protocol", reason="the protocol client is not written yet")
    backend = targets.make_backend(qemu_target, ROOT, timeout_s=10)
    with backend.session(default_build.elf) as link:
        hello = protocol.DeviceClient(link.port, timeout=10).hello()
    assert hello["fw"] == "t3stbuild"  # the build ID this driver passed in
    assert hello["board"] == "qemu_mps2_an500"
    assert hello["cycles"] == qemu_target.cycle_source


@pytest.mark.e2e
def test_compile_error_is_reported(qemu_target: targets.Target, tmp_path: Path) -> None:
    model = tmp_path / "broken_model"
    shutil.copytree(MODEL_DEFAULT, model)
    (model / "zz_broken.c").write_text("int nb_broken(void) {\n    return 1 +;\n}\n")
    log = tmp_path / "build.log"
    with pytest.raises(InfraError) as info:
        build.build_firmware(ROOT, qemu_target, model, "broken", tmp_path / "pio", log)
    message = info.value.message
    assert "zz_broken.c:2" in message and "error:" in message
    assert str(log) in (info.value.hint or "")
    assert "zz_broken.c" in log.read_text()


@pytest.mark.e2e
def test_parallel_builds_do_not_interfere(qemu_target: targets.Target, tmp_path: Path) -> None:
    # Two model folders and two build IDs: if the builds shared anything, an image would carry the
    # other's build ID or miss its own.
    models = []
    for i in range(2):
        model = tmp_path / f"model{i}"
        shutil.copytree(MODEL_DEFAULT, model)
        models.append(model)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(
                build.build_firmware,
                ROOT,
                qemu_target,
                models[i],
                f"par{i}build",
                tmp_path / f"pio{i}",
                tmp_path / f"build{i}.log",
            )
            for i in range(2)
        ]
        results = [f.result() for f in futures]
    assert results[0].elf != results[1].elf
    assert b"par0build" in results[0].elf.read_bytes() and b"par1build" not in results[0].elf.read_bytes()
    assert b"par1build" in results[1].elf.read_bytes()
    assert b"par0build" not in results[1].elf.read_bytes()
    assert results[0].flash_bytes == results[1].flash_bytes  # same model, same-length build IDs


def test_missing_model_dir_is_input_error(tmp_path: Path) -> None:
    target = targets.load_targets(ROOT)["qemu_mps2_an500"]
    if not provision.is_provisioned(ROOT):
        pytest.skip("PlatformIO is not provisioned: run ./dev.sh setup")
    with pytest.raises(InputError, match="model folder does not exist"):
        build.build_firmware(ROOT, target, tmp_path / "nope", "x", tmp_path / "pio", tmp_path / "log")


def test_error_lines_skip_commands_and_keep_diagnostics() -> None:
    output = "\n".join(
        [
            "arm-none-eabi-gcc -o .pio/a.o -c -Wall -Wextra -Werror -O2 src/a.c",
            "src/a.c: In function 'f':",
            "src/a.c:3:12: error: expected expression before ';' token",
            "src/a.c:3:12: error: expected expression before ';' token",
            "cc1: all warnings being treated as errors",
            "*** [.pio/a.o] Error 1",
            "========== [FAILED] Took 0.4 seconds ==========",
        ]
    )
    assert build.error_lines(output) == [
        "src/a.c:3:12: error: expected expression before ';' token",
        "*** [.pio/a.o] Error 1",
    ]
    assert build.error_lines("something odd\nthen nothing") == ["something odd", "then nothing"]
