"""The multi-host farm on labgrid, end to end on loopback (issue 6).

A real `labgrid-coordinator` (a free port on 127.0.0.1), four QEMU stand-in boards
(`python -m harness.farm.standin`: two good ones, one whose QEMU cannot start, one whose QEMU never
runs), a real `labgrid-exporter` exporting each stand-in's serial port as a NetworkSerialPort (raw TCP)
and its flasher as a NestbenchStandIn (targets/labgrid/exporter-standin.yaml), and places made with
`labgrid-client`. Then `harness run --labgrid 127.0.0.1:PORT` runs suites across the places.

What is stood in: the debug probe and the flash algorithm (the stand-in restarts QEMU with the ELF
instead of writing it to flash) and ser2net (the stand-in relays the QEMU UART over TCP itself).
Everything labgrid does — reservations, acquiring, releasing, resource export, its SerialDriver and a
BootstrapProtocol driver — is real. The "users" are labgrid's LG_USERNAME/LG_HOSTNAME, set per process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import HARNESS, ROOT
from fw.liveoutput import LiveOutput

from harness import targets
from harness.backends.base import dying_with_parent
from harness.errors import InfraError
from harness.farm.labgrid_source import LabgridSource, PlaceClaim
from harness.farm.locks import LOCK_DIR_ENV, BoardBusy, Stopped

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
TOOLS = ("labgrid-coordinator", "labgrid-exporter", "labgrid-client")
KIND = "qemu_mps2_an500"
EXPORTER = "nb-exporter"
GOOD = ("qemu-a", "qemu-b")
BROKEN = "qemu-broken"  # its QEMU refuses to start: every image "fails to flash"
FROZEN = "qemu-frozen"  # its QEMU starts halted (-S): flashing works, the firmware never answers
STANDINS = {
    "qemu-a": [],
    "qemu-b": [],
    BROKEN: ["--extra-qemu-args=--no-such-option"],
    FROZEN: ["--extra-qemu-args=-S"],
}
# Two NUCLEO places as an exporter publishes real boards (a probe, a ser2net port), as static entries
# with nothing behind them: flashing reaches labgrid's SSH step towards the exporter host and stops.
BOARD_KIND = "nucleo_f767zi"
BOARDS_EXPORTER = "nb-boards"
BOARDS_CONFIG = """
nucleo-ocd:
  NetworkUSBDebugger: {host: 127.0.0.1, busnum: 1, devnum: 9, path: "1-1.4", vendor_id: 1155, model_id: 14155}
  NetworkSerialPort: {host: 127.0.0.1, port: 1, protocol: rfc2217}
nucleo-pyocd:
  NetworkUSBFlashableDevice:
    {host: 127.0.0.1, busnum: 1, devnum: 10, path: "1-1.5", vendor_id: 1155, model_id: 14155,
     devnode: /dev/null}
  NetworkSerialPort: {host: 127.0.0.1, port: 1, protocol: rfc2217}
"""
BOARD_PLACES = {"nucleo-ocd": [], "nucleo-pyocd": ["probe=066dff485550755187121234"]}
HARNESS_USER = {"LG_USERNAME": "nightly", "LG_HOSTNAME": "ci-runner"}
ALICE = {"LG_USERNAME": "alice", "LG_HOSTNAME": "alice-desk"}
Command = tuple[dict[str, str], list[str]]  # (user, labgrid-client arguments)


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.is_file() else shutil.which(name)


def _missing() -> str:
    missing = [t for t in TOOLS if _tool(t) is None]
    if missing:
        return f"labgrid's commands are not installed ({', '.join(missing)}): run ./dev.sh setup"
    return ""


def _wait_line(
    path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> re.Match[str]:
    """The first match of `pattern` in a process's log file, waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path.name}: no {pattern!r} (exit {proc.poll()}):\n{path.read_text()[-3000:]}")


class Farm:
    """The running coordinator, stand-ins and exporter, and labgrid-client as any user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            dying_with_parent(cmd),  # nothing outlives the test session
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder if name == "coordinator" else ROOT,  # the coordinator keeps its state in cwd
            env=env,
        )
        self.procs.append(proc)
        return proc

    def env(self, user: dict[str, str]) -> dict[str, str]:
        # The marks of acquired places live in the lock folder: one of the farm's own, not the host's.
        locks = str(self.folder / "locks")
        return {**os.environ, **user, "LG_COORDINATOR": self.address, "COLUMNS": "200", LOCK_DIR_ENV: locks}

    def clients(self, *commands: Command, check: bool = True) -> list[str]:
        """labgrid-client commands, run at once (each costs a second of start-up); their outputs."""
        procs = [
            subprocess.Popen(
                [str(_tool("labgrid-client")), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env(user),
            )
            for user, args in commands
        ]
        outputs = []
        for (_, args), proc in zip(commands, procs, strict=True):
            out = proc.communicate(timeout=60)[0].decode(errors="replace")
            if check:
                assert proc.returncode == 0, f"labgrid-client {' '.join(args)}:\n{out}"
            outputs.append(out)
        return outputs

    def client(self, *args: str, user: dict[str, str] = HARNESS_USER) -> str:
        return self.clients((user, list(args)))[0]

    def held(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        """(user, host, place) of every acquired place, and the owner of every reservation."""
        who, reservations = self.clients((HARNESS_USER, ["who"]), (HARNESS_USER, ["reservations"]))
        rows = [line.split() for line in who.splitlines()[1:] if line.strip()]
        return sorted((r[0], r[1], r[2]) for r in rows), re.findall(r"owner: (\S+)", reservations)

    def who(self) -> list[tuple[str, str, str]]:
        return self.held()[0]

    def harness(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(HARNESS), "run", *args, "--labgrid", self.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(HARNESS_USER),
        )


def tag(place: str, kind: str) -> Command:
    return HARNESS_USER, ["-p", place, "set-tags", f"kind={kind}"]  # kind= (empty) removes the tag


def alice(place: str, what: str) -> Command:
    return ALICE, ["-p", place, what]


@pytest.fixture(scope="module")
def farm(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    why = _missing()
    if why:
        pytest.skip(why)
    f = Farm(tmp_path_factory.mktemp("labgrid"))
    try:
        coordinator = f.spawn("coordinator", [str(_tool("labgrid-coordinator")), "--listen", "127.0.0.1:0"])
        agents = {
            name: f.spawn(name, [sys.executable, "-m", "harness.farm.standin", "--name", name, *extra])
            for name, extra in STANDINS.items()
        }
        port = _wait_line(f.folder / "coordinator.log", r"listening on \S+:(\d+)", coordinator)[1]
        f.address = f"127.0.0.1:{port}"
        standins = []
        for name, proc in agents.items():
            ready = _wait_line(f.folder / f"{name}.log", r"serial=([\d.]+):(\d+) control=[\d.]+:(\d+)", proc)
            standins.append(f"{name}={ready[1]}:{ready[2]}:{ready[3]}")
        exporter = f.spawn(
            "exporter",
            [
                str(_tool("labgrid-exporter")),
                "--name",
                EXPORTER,
                "--hostname",
                "127.0.0.1",
                str(ROOT / "targets" / "labgrid" / "exporter-standin.yaml"),
            ],
            env={**f.env(HARNESS_USER), "NESTBENCH_STANDINS": " ".join(standins)},
        )
        (f.folder / "boards.yaml").write_text(BOARDS_CONFIG)
        boards = f.spawn(
            "boards",
            [str(_tool("labgrid-exporter")), "--name", BOARDS_EXPORTER, str(f.folder / "boards.yaml")],
            env=f.env(HARNESS_USER),
        )
        for name, proc in (("exporter", exporter), ("boards", boards)):
            _wait_line(f.folder / f"{name}.log", "creating poll task", proc)  # every resource is published
        places = {**{p: EXPORTER for p in STANDINS}, **{p: BOARDS_EXPORTER for p in BOARD_PLACES}}
        f.clients(*((HARNESS_USER, ["-p", p, "create"]) for p in places))
        f.clients(*((HARNESS_USER, ["-p", p, "add-match", f"{e}/{p}/*"]) for p, e in places.items()))
        f.clients(
            *(tag(p, KIND) for p in GOOD),  # the other two stand-ins get no kind (yet)
            *(
                (HARNESS_USER, ["-p", p, "set-tags", f"kind={BOARD_KIND}", *more])
                for p, more in BOARD_PLACES.items()
            ),
        )
        yield f
    finally:
        for proc in reversed(f.procs):
            proc.terminate()
        for proc in reversed(f.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def suite_file(folder: Path, name: str, *, nested: bool = True) -> Path:
    """digits, 40 samples, 1 repetition: a dense 1-epoch entry and an untrained nested one, every
    entry on every place of its kind (repeat), so every place is used."""
    entries = """
  - name: dense
    arch: digits_cnn
    trainer: dense
    options: {epochs: 1}
    format: dense
"""
    if nested:
        entries += """
  - name: nested
    arch: digits_cnn
    trainer: untrained
    format: nested
"""
    path = folder / f"{name}.yaml"
    path.write_text(
        f"""suite: {name}
dataset: digits
seed: 0
samples: 40
levels: [0.7, 0.9]
targets: [{KIND}]
measure: {{repetitions: 1, warmup: 0, timeout_s: 30}}
farm: {{mode: repeat, board_wait_s: 120}}
models:{entries}"""
    )
    return path


def run_dir(out: Path, suite: str) -> Path:
    runs = sorted(p for p in (out / suite).iterdir() if p.is_dir())
    assert runs, f"no run folder under {out / suite}"
    return runs[-1]


def assert_nothing_held(farm: Farm, *, but: list[tuple[str, str, str]] | None = None) -> None:
    """No place acquired (but `but`, others' places) and no reservation of the harness's user left."""
    who, owners = farm.held()
    assert who == (but or []), "a place is still acquired"
    assert f"{HARNESS_USER['LG_HOSTNAME']}/{HARNESS_USER['LG_USERNAME']}" not in owners


# -- the board source, in process (no harness start-up) --------------------------------------------------


@pytest.fixture
def source(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabgridSource]:
    for key, value in HARNESS_USER.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(LOCK_DIR_ENV, str(farm.folder / "locks"))
    src = LabgridSource(farm.address, targets.load_targets(ROOT))
    yield src
    src.close()
    assert src.held() == []


def test_the_places_tagged_with_a_kind_are_the_boards(farm: Farm, source: LabgridSource) -> None:
    farm.clients(tag(FROZEN, "no_such_target"))
    try:
        boards = {b.id: b for b in source.boards()}
    finally:
        farm.clients(tag(FROZEN, ""))
    assert sorted(boards) == sorted([*GOOD, *BOARD_PLACES])
    for name in GOOD:
        board = boards[name]
        assert board.kind == KIND and board.source == "labgrid"
        assert board.host == EXPORTER
        assert board.serial is not None and board.serial.startswith("socket://127.0.0.1:")
    assert boards["nucleo-ocd"].kind == BOARD_KIND and boards["nucleo-ocd"].host == BOARDS_EXPORTER
    assert boards["nucleo-pyocd"].options["probe"] == "066dff485550755187121234"
    assert source.ignored == {
        BROKEN: "no kind tag",
        FROZEN: "kind=no_such_target is not a target of platformio.ini",
    }


def test_a_claim_holds_the_place_and_frees_it_also_on_errors(farm: Farm, source: LabgridSource) -> None:
    board = next(b for b in source.boards() if b.id == "qemu-b")
    notes: list[str] = []
    with source.claim(board, wait_s=10.0, stop=threading.Event(), on_wait=notes.append) as claim:
        assert farm.who() == [("nightly", "ci-runner", "qemu-b")]
        assert isinstance(claim, PlaceClaim)
        assert sorted(cls for _, cls, _ in claim.resources) == ["NestbenchStandIn", "NetworkSerialPort"]
    assert_nothing_held(farm)
    with (
        pytest.raises(RuntimeError, match="a job failing"),
        source.claim(board, wait_s=10.0, stop=threading.Event(), on_wait=notes.append),
    ):
        raise RuntimeError("a job failing")
    assert_nothing_held(farm)
    assert notes == []  # the place was free: nothing to wait for


def test_a_busy_place_is_waited_for_at_most_the_bound_naming_its_holder(
    farm: Farm, source: LabgridSource
) -> None:
    board = next(b for b in source.boards() if b.id == "qemu-a")
    farm.clients(alice("qemu-a", "acquire"))
    try:
        notes: list[str] = []
        with (
            pytest.raises(BoardBusy, match=r"qemu-a stayed busy .* acquired by alice-desk/alice"),
            source.claim(board, wait_s=1.5, stop=threading.Event(), on_wait=notes.append),
        ):
            pass
        assert notes and "acquired by alice-desk/alice" in notes[0]
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()  # Ctrl-C while waiting
        with pytest.raises(Stopped), source.claim(board, wait_s=60.0, stop=stop, on_wait=notes.append):
            pass
        assert source.held() == []
        assert_nothing_held(farm, but=[("alice", "alice-desk", "qemu-a")])
    finally:
        farm.clients(alice("qemu-a", "release"))


@pytest.mark.parametrize(
    ("place", "flasher"),
    [("nucleo-ocd", "OpenOCD (board/st_nucleo_f7.cfg)"), ("nucleo-pyocd", "pyOCD via flash script")],
)
def test_a_board_place_is_flashed_by_its_driver_on_the_exporter_host(
    farm: Farm, source: LabgridSource, place: str, flasher: str, tmp_path: Path
) -> None:
    """The real-board path up to where it needs the exporter host: labgrid's remote USB resources
    become available, the place's flash driver is chosen and activated, and the flash tool is run on
    the exporter host over SSH, which fails here (no SSH server): an infrastructure error naming the
    place and the driver, and the place is released."""
    board = next(b for b in source.boards() if b.id == place)
    target = targets.load_targets(ROOT)[BOARD_KIND]
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(b"\x7fELF")
    with (
        source.claim(board, wait_s=10.0, stop=threading.Event(), on_wait=print) as claim,
        pytest.raises(InfraError) as failure,
        claim.backend(target, ROOT, timeout_s=5.0).session(elf),
    ):
        pass
    message = str(failure.value)
    assert f"flashing firmware.elf on place {place} ({flasher}" in message
    assert "failed to connect to 127.0.0.1" in message  # labgrid tried to reach the exporter host by SSH
    assert_nothing_held(farm)


# -- harness runs --------------------------------------------------------------------------------------


def test_a_suite_runs_across_both_places_bit_exact(farm: Farm) -> None:
    out = farm.folder / "runs"
    output = LiveOutput(farm.harness(str(suite_file(farm.folder, "lgfarm")), "--out", str(out)))
    assert output.finish() == 0, output.text
    folder = run_dir(out, "lgfarm")
    rows = pd.read_csv(folder / "records.csv")
    assert len(rows) == 6  # (dense, nested at 0.7, nested at 0.9) × 2 places
    for _, row in rows.iterrows():
        assert row["status"] == "ok", row["error"]  # ok: every device output equals the host reference
        assert row["cycle_source"] == "qemu-icount" and row["cycles"] > 0
        assert row["accuracy_device"] == row["accuracy_host"]
    assert sorted(set(rows["board"])) == list(GOOD)
    for _, same in rows.groupby(["entry", "level"]):
        assert sorted(same["board"]) == list(GOOD)  # each place ran each entry...
        assert same["cycles"].nunique() == 1  # ...the same image: QEMU counts are deterministic
    for place in GOOD:
        assert (folder / KIND / f"uart-{place}.log").is_file()
    farm_info = json.loads((folder / "run.json").read_text())["farm"]
    assert farm_info["source"] == f"labgrid coordinator {farm.address}"
    assert farm_info["boards"]["qemu-a"]["host"] == EXPORTER
    assert farm_info["ignored_places"] == {BROKEN: "no kind tag", FROZEN: "no kind tag"}
    assert sorted(s["board"] for s in farm_info["sessions"]) == sorted([*GOOD, *GOOD])
    assert {s["status"] for s in farm_info["sessions"]} == {"ok"}
    assert_nothing_held(farm)


def test_a_job_waits_for_a_busy_place_and_a_broken_place_fails_alone(farm: Farm) -> None:
    """alice holds qemu-a: its job waits (saying who holds it) and runs once she releases it; the
    stand-in whose QEMU cannot start fails only its own rows; every place is released after."""
    out = farm.folder / "runs"
    farm.clients(alice("qemu-a", "acquire"), tag(BROKEN, KIND))
    released = 0.0
    try:
        output = LiveOutput(
            farm.harness(str(suite_file(farm.folder, "lgwait", nested=False)), "--out", str(out))
        )
        output.wait_for(r"place qemu-a is busy: acquired by alice-desk/alice")
        output.wait_for(r"on qemu-broken: .*FAILED")
        assert output.proc.poll() is None  # still waiting for qemu-a...
        assert ("alice", "alice-desk", "qemu-a") in farm.who()  # ...which nobody took from her
        released = time.time()
        farm.clients(alice("qemu-a", "release"))
        code = output.finish()
    finally:
        farm.clients(*([] if released else [alice("qemu-a", "release")]), tag(BROKEN, ""), check=False)
    assert code == 3, output.text  # the broken place's rows failed
    folder = run_dir(out, "lgwait")
    rows = pd.read_csv(folder / "records.csv").set_index("board")
    assert sorted(rows.index) == sorted([*GOOD, BROKEN])
    for place in GOOD:
        assert rows.loc[place, "status"] == "ok", rows.loc[place, "error"]
    assert rows.loc[BROKEN, "status"] == "failed"
    assert "invalid option" in rows.loc[BROKEN, "error"]  # what the stand-in's QEMU said
    sessions = {s["board"]: s for s in json.loads((folder / "run.json").read_text())["farm"]["sessions"]}
    assert pd.Timestamp(sessions["qemu-a"]["start"]).timestamp() >= released - 0.5  # ran once freed
    assert_nothing_held(farm)


def test_a_stopped_run_releases_every_place(farm: Farm) -> None:
    """SIGTERM (Ctrl-C takes the same path: both stop a run with KeyboardInterrupt) while one worker
    is mid-session (the frozen stand-in never answers) and another waits for a place alice holds:
    the harness frees what it holds and cancels its reservations."""
    out = farm.folder / "runs-stopped"
    farm.clients(alice("qemu-b", "acquire"), tag(FROZEN, KIND))
    try:
        output = LiveOutput(
            farm.harness(str(suite_file(farm.folder, "lgstop", nested=False)), "--out", str(out))
        )
        output.wait_for(r"\[qemu-frozen\] dense: start")
        output.wait_for(r"place qemu-b is busy")
        assert ("nightly", "ci-runner", FROZEN) in farm.who()
        output.proc.send_signal(signal.SIGTERM)
        code = output.finish(timeout=60)
        assert code == 3, output.text
        assert "interrupted" in output.text
        assert json.loads((run_dir(out, "lgstop") / "run.json").read_text())["status"] == "interrupted"
        assert_nothing_held(farm, but=[("alice", "alice-desk", "qemu-b")])
    finally:
        farm.clients(alice("qemu-b", "release"), tag(FROZEN, ""), check=False)


def test_places_a_killed_run_left_acquired_are_released_by_the_next_run(farm: Farm) -> None:
    """SIGKILL: nothing of the run frees its places, and their reservations, acquired, never expire.
    The next run on the host releases them, cancels those reservations, says so and uses the places."""
    suite = str(suite_file(farm.folder, "lgkill", nested=False))
    farm.clients(tag(FROZEN, KIND))
    try:
        killed = LiveOutput(farm.harness(suite, "--out", str(farm.folder / "runs-killed")))
        killed.wait_for(r"\[qemu-frozen\] dense: start")  # it never answers: held until the kill
        killed.proc.kill()
        killed.finish(timeout=30)
        left = [place for user, _, place in farm.who() if user == HARNESS_USER["LG_USERNAME"]]
        assert FROZEN in left
    finally:
        farm.clients(tag(FROZEN, ""))
    after = LiveOutput(farm.harness(suite, "--out", str(farm.folder / "runs-after")))
    assert after.finish() == 0, after.text
    for place in left:
        assert f"released place {place}: left acquired by pid {killed.proc.pid}" in after.text
    info = json.loads((run_dir(farm.folder / "runs-after", "lgkill") / "run.json").read_text())
    assert len(info["farm"]["notices"]) == len(left)
    assert_nothing_held(farm)  # and no reservation of the killed run is left either
    again = LiveOutput(farm.harness(suite, "--out", str(farm.folder / "runs-again")))
    assert again.finish() == 0 and "released place" not in again.text, again.text  # nothing left
