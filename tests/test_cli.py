"""The `harness` command's contract: exit codes and messages (DESIGN.md §3), no tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import HARNESS, ROOT


def harness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HARNESS), *args], capture_output=True, text=True, env=env, timeout=300)


def test_malformed_suite_exits_2_with_file_line_field(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "suite: bad\ntargets: [qemu_mps2_an500]\nmodels:\n  - name: m\n    arch: digits_cnn\n"
        "    trainer: dense\n    options: {epochs: ten}\n"
    )
    proc = harness("run", str(suite))
    assert proc.returncode == 2
    assert f"{suite}:7" in proc.stderr
    assert "models[0].options.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_yaml_syntax_error_exits_2(tmp_path: Path) -> None:
    suite = tmp_path / "broken.yaml"
    suite.write_text("suite: x\nmodels: [\n")
    proc = harness("run", str(suite))
    assert proc.returncode == 2
    assert "broken.yaml:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_suite_file_and_unknown_target_exit_2(tmp_path: Path) -> None:
    proc = harness("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr
    proc = harness("run", str(ROOT / "suites" / "quickstart.yaml"), "--target", "stm32_unknown")
    assert proc.returncode == 2
    assert "stm32_unknown" in proc.stderr and "qemu_mps2_an500" in proc.stderr


def test_unknown_option_exits_2() -> None:
    proc = harness("run", "--frobnicate")
    assert proc.returncode == 2


def test_targets_lists_every_env_and_says_why_not() -> None:
    proc = harness("targets")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.count("│") >= 5}
    assert "yes" in lines["qemu_mps2_an500"]
    assert "no" in lines["nucleo_f767zi"] and "probe" in lines["nucleo_f767zi"]


def test_missing_qemu_exits_3_naming_the_package(tmp_path: Path) -> None:
    # A PATH with the toolchain and the venv but without qemu-system-arm.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("arm-none-eabi-gcc", "git"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    env = os.environ | {"PATH": f"{HARNESS.parent}:{bin_dir}"}
    proc = harness(
        "run", str(ROOT / "suites" / "quickstart.yaml"), "--emulator-only", "--out", str(tmp_path), env=env
    )
    assert proc.returncode == 3
    assert "qemu-system-arm" in proc.stderr
    assert "apt" in proc.stderr or "./dev.sh setup" in proc.stderr
    assert "Traceback" not in proc.stderr
