"""The hardware map (harness/farm/hwmap.py): what a good map gives, and malformed maps through
`harness run SUITE --hardware-map MAP`.

Each ``tests/data/hwmaps/bad_*.yaml`` says on its first line what the error must name
(``# expect: line=N field=F contains=TEXT``, ``-`` where the error has no line or field); every one
exits 2 before anything is trained or built (no run folder), with no traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_malformed_inputs import assert_located, expectation, run_cli

from harness import targets
from harness.backends.board import BoardBackend
from harness.backends.qemu import QemuBackend
from harness.errors import EXIT_INPUT, InputError
from harness.farm import open_source
from harness.farm.hwmap import HardwareMapSource, board_backend, load_hardware_map, this_host
from harness.farm.locks import LOCK_DIR_ENV
from harness.paths import ROOT

DATA = Path(__file__).parent / "data"
SUITE = DATA / "suites" / "e2e_three.yaml"
BAD_MAPS = sorted((DATA / "hwmaps").glob("bad_*.yaml"))
TARGETS = targets.load_targets(ROOT)


def test_there_are_enough_malformed_maps() -> None:
    assert len(BAD_MAPS) >= 10


@pytest.mark.parametrize("path", BAD_MAPS, ids=lambda p: p.stem)
def test_malformed_hardware_map_exits_2(path: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("run", str(SUITE), "--hardware-map", str(path), "--out", str(tmp_path))
    assert code == EXIT_INPUT, err
    assert_located(err, path, *expectation(path.read_text()))
    assert not any(tmp_path.iterdir())  # no run folder: the map is checked before any work


def test_missing_map_and_every_problem_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, _, err = run_cli("run", str(SUITE), "--hardware-map", str(missing), "--out", str(tmp_path / "o"))
    assert code == EXIT_INPUT
    assert_located(err, missing, "-", "--hardware-map", "no such hardware map file")

    # Several mistakes: each is reported with its own line, in one go.
    several = tmp_path / "several.yaml"
    several.write_text(
        "boards:\n"
        "  - {id: qemu-a, kind: qemu_mps2_an500}\n"
        "  - {id: qemu-a, kind: qemu_mps2_an500}\n"
        "  - {id: b, kind: nucleo_f767zi, options: {baud: 0}}\n"
    )
    code, _, err = run_cli("run", str(SUITE), "--hardware-map", str(several), "--out", str(tmp_path / "o"))
    assert code == EXIT_INPUT
    assert f"{several}:3: boards[1].id: board ID 'qemu-a' appears twice" in err
    assert f"{several}:4: boards[2].options.baud: expected a positive integer, got 0" in err
    assert not (tmp_path / "o").exists()


def test_huge_map_reports_the_line_of_the_last_board(tmp_path: Path) -> None:
    lines = ["boards:", *(f"  - {{id: q{i}, kind: qemu_mps2_an500}}" for i in range(999))]
    lines.append("  - {id: last, kind: qemu_mps2_an5000}")
    path = tmp_path / "huge.yaml"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("run", str(SUITE), "--hardware-map", str(path), "--out", str(tmp_path / "o"))
    assert code == EXIT_INPUT
    assert_located(err, path, "1001", "boards[999].kind", "unknown board kind (target) 'qemu_mps2_an5000'")

    # more boards than a map may hold (1000)
    path.write_text(
        "\n".join(["boards:", *(f"  - {{id: q{i}, kind: qemu_mps2_an500}}" for i in range(1001))])
    )
    code, _, err = run_cli("run", str(SUITE), "--hardware-map", str(path), "--out", str(tmp_path / "o"))
    assert code == EXIT_INPUT
    assert_located(err, path, "1", "boards", "at most 1000 items")


def test_good_map_boards_hosts_lines_and_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)
    here = sorted(this_host())[0]
    path = tmp_path / "lab" / "farm.yaml"
    path.parent.mkdir()
    path.write_text(
        "# the lab\n"
        "lock_dir: locks\n"
        "boards:\n"
        "  - id: 0670FF383930434B43124922\n"
        "    kind: nucleo_f767zi\n"
        "    serial: /dev/ttyACM7\n"
        "    options: {baud: 230400, pyocd_target: stm32f767zitx}\n"
        f"  - {{id: qemu-a, kind: qemu_mps2_an500, host: {here.upper()}}}\n"
        "  - {id: far-away, kind: nucleo_f767zi, host: no-such-host.invalid}\n"
        "  - {id: qemu-b, kind: qemu_mps2_an500, options: {qemu_args: '-S'}}\n"
    )
    boards, elsewhere, lock_dir = load_hardware_map(path, TARGETS)
    assert [(b.id, b.kind, b.line) for b in boards] == [
        ("0670FF383930434B43124922", "nucleo_f767zi", 4),
        ("qemu-a", "qemu_mps2_an500", 8),  # host names compare without case
        ("qemu-b", "qemu_mps2_an500", 10),
    ]
    assert [(b.id, b.host) for b in elsewhere] == [("far-away", "no-such-host.invalid")]
    assert lock_dir == path.parent.absolute() / "locks"  # relative to the map, not the working folder
    assert boards[0].describe() == {
        "kind": "nucleo_f767zi",
        "source": "hwmap",
        "serial": "/dev/ttyACM7",
        "options": {"baud": 230400, "pyocd_target": "stm32f767zitx"},
    }

    source = open_source(hardware_map=path, labgrid=None, all_targets=TARGETS)
    assert isinstance(source, HardwareMapSource)
    assert source.lock_dir == path.parent.absolute() / "locks"
    assert source.describe()["other_hosts"] == {"far-away": "no-such-host.invalid"}
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "env-locks"))  # the environment wins
    assert HardwareMapSource(path, TARGETS).lock_dir == tmp_path / "env-locks"

    # the board's own options reach its backend: the probe, the port and the baud rate of a board,
    # the extra QEMU arguments of a stand-in (after the env's own)
    board = board_backend(boards[0], TARGETS["nucleo_f767zi"], ROOT, timeout_s=4.0)
    assert isinstance(board, BoardBackend)
    assert (board.probe, board.port, board.baud, board.pyocd_target) == (
        "0670FF383930434B43124922",
        "/dev/ttyACM7",
        230400,
        "stm32f767zitx",
    )
    qemu = TARGETS["qemu_mps2_an500"]
    plain = board_backend(boards[1], qemu, ROOT, timeout_s=4.0)
    hung = board_backend(boards[2], qemu, ROOT, timeout_s=4.0)
    assert isinstance(plain, QemuBackend) and isinstance(hung, QemuBackend)
    assert hung.qemu_args == [*plain.qemu_args, "-S"] and "-S" not in plain.qemu_args
    assert plain.command_timeout == 4.0


def test_both_sources_at_once_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "farm.yaml"
    path.write_text("boards: [{id: qemu-a, kind: qemu_mps2_an500}]\n")
    with pytest.raises(InputError, match="either --hardware-map or --labgrid"):
        open_source(hardware_map=path, labgrid="localhost:20408", all_targets=TARGETS)
    assert os.path.exists(path)
