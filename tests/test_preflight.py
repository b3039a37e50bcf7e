"""Problems only the trainer, the architecture or the size estimate can see are still bad input found
before any training (exit 2, file:line: field), through the real `harness run` entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main

HEAD = """\
suite: pre
dataset: {dataset}
targets: [{target}]
models:
  - name: m
    arch: {arch}
    arch_options: {arch_options}
    trainer: {trainer}
    options: {options}
    format: {format}
"""


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], **fields: str) -> tuple[int, str]:
    values = {
        "dataset": "digits",
        "target": "qemu_mps2_an500",
        "arch": "digits_cnn",
        "arch_options": "{}",
        "trainer": "nested",
        "options": "{}",
        "format": "nested",
    } | fields
    suite = tmp_path / "pre.yaml"
    suite.write_text(HEAD.format(**values))
    code = main(["run", str(suite), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started
    return code, " ".join(err.split())


def test_a_nested_model_needs_the_nested_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(tmp_path, capsys, format="csr")
    assert code == 2
    assert "pre.yaml:10: models[0].format" in err and "nested" in err


def test_a_block_that_does_not_divide_a_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(tmp_path, capsys, arch_options="{channels: [8, 6, 32]}", options="{block: 4}")
    assert code == 2
    assert "pre.yaml:9: models[0].options.block" in err


def test_unknown_architecture_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(tmp_path, capsys, arch_options="{depth: 3}")
    assert code == 2
    assert "pre.yaml:7: models[0].arch_options" in err and "depth" in err


def test_a_model_too_large_for_the_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(
        tmp_path,
        capsys,
        dataset="{name: synthetic, options: {h: 32, w: 32, c: 3, classes: 10, n: 100}}",
        target="nucleo_f767zi",
        arch="mobilenet_v1",
        arch_options="{width: 1.0}",
        trainer="dense",
        format="dense",
    )
    assert code == 2
    assert "pre.yaml:6: models[0].arch" in err and "nucleo_f767zi" in err and "flash" in err
