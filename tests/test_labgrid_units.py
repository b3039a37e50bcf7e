"""The labgrid farm's parts that need no coordinator: addresses, option checks, the stand-in agent's
control protocol and its errors (tests/test_labgrid_farm.py runs the farm end to end)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from harness import targets
from harness.errors import InfraError, InputError
from harness.farm import open_source, standin
from harness.farm.labgrid_source import LabgridSource, parse_address


@pytest.mark.parametrize(
    ("text", "address"),
    [("lab", "lab:20408"), ("10.0.0.5:1234", "10.0.0.5:1234"), ("[::1]:20408", "[::1]:20408")],
)
def test_a_coordinator_address_defaults_to_labgrids_port(text: str, address: str) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", ":20408", "lab:", "lab:http", "lab:0", "lab:70000"])
def test_a_malformed_coordinator_address_is_bad_input(text: str) -> None:
    with pytest.raises(InputError, match="COORDINATOR"):
        parse_address(text)


def test_a_run_takes_one_board_source(tmp_path: Path) -> None:
    all_targets = targets.load_targets(ROOT)
    farm = tmp_path / "farm.yaml"
    farm.write_text("boards: []\n")
    with pytest.raises(InputError, match="either --hardware-map or --labgrid"):
        open_source(hardware_map=farm, labgrid="lab", all_targets=all_targets)
    with pytest.raises(InputError, match="COORDINATOR"):  # before any connection is tried
        open_source(hardware_map=None, labgrid="lab:port", all_targets=all_targets)


def test_an_unreachable_coordinator_is_an_infrastructure_error() -> None:
    started = time.monotonic()
    with pytest.raises(InfraError, match=re.escape("cannot reach the labgrid coordinator at 127.0.0.1:1")):
        LabgridSource("127.0.0.1:1", {}, connect_s=10.0)
    assert time.monotonic() - started < 10.0  # refused at once, not the connect bound


def test_the_stand_in_agent_answers_its_control_commands(tmp_path: Path) -> None:
    """An agent whose QEMU is missing: it still serves STATUS, refuses unknown commands, and says
    why a LOAD failed; SIGTERM ends it."""
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "harness.farm.standin", "--name", "t", "--qemu", "/nonexistent/qemu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 20
        while not (ready := re.search(r"control=([\d.]+):(\d+)", log.read_text())):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        host, port = ready[1], int(ready[2])
        assert standin.request(host, port, "STATUS") == "powered off"
        with pytest.raises(InfraError, match="unknown command"):
            standin.request(host, port, "FLY")
        elf = tmp_path / "firmware.elf"
        elf.write_bytes(b"\x7fELF" + bytes(60))
        with pytest.raises(InfraError, match=r"LOAD failed: ERR /nonexistent/qemu is not on PATH"):
            standin.load_image(host, port, elf)
        assert standin.request(host, port, "STATUS") == "powered off"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        assert "LOAD failed" in log.read_text()  # the agent's own log says so too
    finally:
        if agent.poll() is None:
            agent.kill()
    with pytest.raises(InfraError, match="unreachable"):
        standin.request(host, port, "STATUS", timeout_s=2.0)
