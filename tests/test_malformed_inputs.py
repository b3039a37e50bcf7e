"""Malformed suites and baseline files through `harness run`: each exits 2 naming the file, the line
and the field, before anything is trained or built, and none shows a traceback.

Inputs: every ``tests/data/suites/bad_*.yaml`` (its first line says what to expect:
``# expect: line=N field=F contains=TEXT``, ``-`` where the error has no line or field), every
``tests/data/baselines/<case>/`` (a baseline folder for the e2e suite, ``expect.txt`` alike), and huge
inputs made on the fly. The command runs in-process (`harness.cli.main`, the real entry point:
argument parsing, error handling, exit codes): a new process per case would spend its time importing
PyTorch. Two cases also run as real `harness` processes.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest
from conftest import HARNESS

from harness import cli
from harness.errors import EXIT_INPUT

DATA = Path(__file__).parent / "data"
SUITE = DATA / "suites" / "e2e_three.yaml"
BAD_SUITES = sorted((DATA / "suites").glob("bad_*.yaml"))
BAD_BASELINES = sorted(p for p in (DATA / "baselines").iterdir() if p.is_dir())
BASELINE_FILE = Path("e2e_three") / "qemu_mps2_an500.csv"
_EXPECT = re.compile(r"line=(?P<line>\S+) field=(?P<field>.+?) contains=(?P<contains>.+)$")


def expectation(text: str) -> tuple[str, str, str]:
    found = _EXPECT.search(text.strip().splitlines()[0])
    assert found, f"no expectation in {text[:80]!r}"
    return found["line"], found["field"], found["contains"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_located(err: str, file: Path, line: str, field: str, contains: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("error: "), err
    where = f"{file}:{line}: " if line != "-" else f"{file}: "
    if field != "-":
        where += f"{field}: "
    assert where in err, f"expected {where!r} in:\n{err}"
    assert contains in err, err


def test_there_are_at_least_30_of_each() -> None:
    assert len(BAD_SUITES) >= 30 and len(BAD_BASELINES) >= 30


@pytest.mark.parametrize("path", BAD_SUITES, ids=lambda p: p.stem)
def test_malformed_suite_exits_2(path: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("run", str(path), "--out", str(tmp_path))
    assert code == EXIT_INPUT, err
    assert_located(err, path, *expectation(path.read_text()))
    assert not any(tmp_path.iterdir())  # nothing started


@pytest.mark.parametrize("case", BAD_BASELINES, ids=lambda p: p.name)
def test_malformed_baseline_exits_2(case: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(case), "--out", str(tmp_path))
    assert code == EXIT_INPUT, err
    assert_located(err, case / BASELINE_FILE, *expectation((case / "expect.txt").read_text()))
    assert not any(tmp_path.iterdir())  # no run folder: nothing was trained, built or run


def _header() -> str:
    return (DATA / "baselines" / "bad_integer" / BASELINE_FILE).read_text().splitlines()[0]


def _row(entry: str, cycles: str = "310746", error: str = "") -> str:
    good = (DATA / "baselines" / "bad_integer" / BASELINE_FILE).read_text().splitlines()[1]
    cells = good.split(",")
    cells[1], cells[10], cells[-1] = entry, cycles, error
    return ",".join(cells)


def test_huge_baselines(tmp_path: Path) -> None:
    # 20,000 good rows and a bad cell on the last line: found, with its line number
    big = tmp_path / "big"
    (big / "e2e_three").mkdir(parents=True)
    lines = [_header(), *(_row(f"e{i}") for i in range(20_000)), _row("last", cycles="many")]
    (big / BASELINE_FILE).write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(big), "--out", str(tmp_path / "runs"))
    assert code == EXIT_INPUT
    assert_located(err, big / BASELINE_FILE, "20002", "cycles", "expected an integer, got 'many'")

    # one cell of 200,000 characters: the CSV reader's limit, reported without echoing the cell
    cell = tmp_path / "cell"
    (cell / "e2e_three").mkdir(parents=True)
    (cell / BASELINE_FILE).write_text(_header() + "\n" + _row("a", error="x" * 200_000) + "\n")
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(cell), "--out", str(tmp_path / "runs"))
    assert code == EXIT_INPUT
    assert_located(err, cell / BASELINE_FILE, "2", "CSV", "field larger than field limit")
    assert len(err) < 1000


def test_huge_suite(tmp_path: Path) -> None:
    head = SUITE.read_text().split("models:")[0]
    models = [
        f"  - {{name: m{i}, arch: digits_cnn, trainer: dense, options: {{epochs: 1}}}}" for i in range(3000)
    ]
    models.append("  - {name: last, arch: digits_cnn, trainer: dnese}")
    path = tmp_path / "huge.yaml"
    path.write_text(head + "models:\n" + "\n".join(models) + "\n")
    code, _, err = run_cli("run", str(path), "--out", str(tmp_path / "runs"))
    assert code == EXIT_INPUT
    line = head.count("\n") + 1 + 3001
    assert_located(err, path, str(line), "models[3000].trainer", "unknown trainer 'dnese'")


def test_bad_baselines_option(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(missing), "--out", str(tmp_path))
    assert code == EXIT_INPUT
    assert_located(err, missing, "-", "--baselines", "no such folder")

    a_file = tmp_path / "file.csv"
    a_file.write_text("x")
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(a_file), "--out", str(tmp_path))
    assert code == EXIT_INPUT
    assert_located(err, a_file, "-", "--baselines", "not a folder")

    (tmp_path / "bl").mkdir()
    (tmp_path / "bl" / "e2e_three").write_text("not a folder")
    code, _, err = run_cli("run", str(SUITE), "--baselines", str(tmp_path / "bl"), "--out", str(tmp_path))
    assert code == EXIT_INPUT
    assert_located(err, tmp_path / "bl" / "e2e_three", "-", "--baselines", "expected a folder")


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (
            ["run", str(DATA / "suites" / "bad_unknown_trainer.yaml")],
            "bad_unknown_trainer.yaml:7: models[0].trainer: ",
        ),
        (
            ["run", str(SUITE), "--baselines", str(DATA / "baselines" / "duplicate_key")],
            "qemu_mps2_an500.csv:4: entry: ",
        ),
    ],
    ids=["suite", "baseline"],
)
def test_real_process(argv: list[str], where: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(HARNESS), *argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == EXIT_INPUT
    assert where in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
