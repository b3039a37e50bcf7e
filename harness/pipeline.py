"""`harness run`: one suite, end to end (DESIGN.md §1).

suite → validate (suite, targets, baseline files: all before any work) → per entry: train, quantize,
evaluate on host, pack, generate C (harness.prepare) → per target: build (cached), deploy, UART
session (harness.measure) → records → baselines → plots and reports → summary.json, junit.xml.

A failing entry or target is recorded as failed and the others still run. Records are rewritten
atomically after every measured model, and ``run.json`` says how far the run got: ``running`` while
it runs (and after a SIGKILL), ``interrupted`` after Ctrl-C or SIGTERM, ``aborted`` after an error
that stopped the whole run, ``complete`` once everything is written (the last file written).

Resume (``--resume``) continues the latest run of the suite that is not complete: it keeps the rows
that were measured (``ok`` or ``mismatch``), measures what is missing or failed, and writes records
in the suite's order, so they equal those of an uninterrupted run. A run is resumed only with the
same suite and targets: ``run.json`` keeps a hash of the validated suite (comments and formatting
do not count) and the target names; if either changed, ``--resume`` refuses with exit 2 rather than
mixing figures of two different suites in one run. A lock file in the run folder keeps two harness
processes from running (or resuming) the same run at once.

Farm mode (``--hardware-map MAP`` or ``--labgrid COORDINATOR``, docs/farm.md): the main thread still
trains and builds entry after entry, but each built image becomes a job of `harness.farm.scheduler`,
run by one worker per board while the next entry trains. Every row carries the board that ran it;
with the suite's ``farm.mode: repeat`` every board of a kind runs every entry and the records keep a
row per board (the board is then part of the row's key, also for --resume). Ctrl-C or SIGTERM stops
every worker and frees every board (locks, labgrid places) before the records so far are written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from rich.console import Console
from rich.markup import escape

from harness import (
    baselines,
    build,
    ci_outputs,
    elfsize,
    fit,
    interrupts,
    provenance,
    records,
    report,
    targets,
)
from harness.atomic import atomic_write_text
from harness.backends.base import Backend
from harness.cache import ArtifactCache, canonical_json, hash_tree
from harness.catalog import build_catalog
from harness.errors import (
    EXIT_INFRA,
    EXIT_OK,
    EXIT_REGRESSION,
    DeviceError,
    DeviceFault,
    InfraError,
    InputError,
)
from harness.farm import open_source
from harness.farm.boards import LOCAL, Board, BoardSource, Claim
from harness.farm.scheduler import BOARD, FIRMWARE, OK, REPEAT, Job, Scheduler, Verdict, WorkerContext
from harness.measure import Expected, run_session
from harness.paths import BASELINES, ROOT, RUNS, cache_root
from harness.preflight import preflight
from harness.prepare import PreparedEntry, PreparedModel, prepare_entry
from harness.progress import Progress
from harness.protocol import DeviceClient, DeviceCommandError
from harness.quantize import quantize_input
from harness.suite import Suite, load_suite
from trainers.datasets import Dataset, DatasetNotFound, load_dataset

RUN_JSON = "run.json"
LOCK_FILE = ".run.lock"
COMPLETE = "complete"
_ERROR_LIMIT = 3000  # characters of a failed row's error cell
_UART_LINES = 8  # last UART lines kept with a failed row


@dataclass
class RunOptions:
    suite: Path
    targets: list[str] = field(default_factory=list)
    emulator_only: bool = False
    out: Path | None = None
    resume: bool = False
    no_cache: bool = False
    update_baselines: bool = False
    quiet: bool = False
    baselines: Path | None = None  # folder of <suite>/<target>.csv; default results/baselines
    junit: Path | None = None  # also write junit.xml here
    summary_json: Path | None = None  # also write summary.json here
    hardware_map: Path | None = None  # farm mode: the boards of this host
    labgrid: str | None = None  # farm mode: COORDINATOR[:PORT] of a labgrid farm
    board_wait_s: float | None = None  # how long a job waits for a busy board (default: the suite's)


@dataclass
class BuiltImage:
    elf: Path
    build_id: str
    flash_bytes: int
    ram_bytes: int
    symbol_sizes: dict[str, int]
    flags: list[str]


# entry, format, level, target, and the board when a farm repeats every entry on each board
RowKey = tuple[str, str, int, str, str]


def _row_key(row: dict[str, Any], *, per_board: bool = False) -> RowKey:
    board = row.get("board") if per_board else None
    board_text = "" if board is None or bool(pd.isna(board)) else str(board)
    return (str(row["entry"]), str(row["format"]), int(row["level"]), str(row["target"]), board_text)


def suite_hash(suite: Suite) -> str:
    """Hash of the validated suite: what the suite asks for, not how the file is written."""
    return hashlib.sha256(canonical_json(suite.model_dump(mode="json")).encode()).hexdigest()


class Run:
    def __init__(self, options: RunOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.progress = Progress(console, quiet=options.quiet)
        self.catalog = build_catalog(ROOT)
        self.suite: Suite = load_suite(options.suite, self.catalog)
        self.suite_hash = suite_hash(self.suite)
        self.all_targets = targets.load_targets(ROOT)
        self.targets = self._select_targets()
        self.baselines_root = self._baselines_root()
        # Bad baseline files are bad input: found before anything is trained or built.
        self.baselines = {t.name: self._load_baseline(t) for t in self.targets}
        # Everything that can be wrong with an entry is found before any training or build.
        self.dataset = self._load_dataset()
        preflight(self.suite, self.dataset.x_train.shape[1:], self.dataset.num_classes, self.targets)
        # A bad hardware map is bad input and an unreachable coordinator an infrastructure error:
        # both are found before any work.
        self.source: BoardSource | None = open_source(
            hardware_map=options.hardware_map,
            labgrid=options.labgrid,
            all_targets=self.all_targets,
            command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        )
        self.farm_mode: str | None = self.suite.farm.mode if self.source is not None else None
        self.scheduler: Scheduler | None = None
        self._lock_rows = threading.RLock()  # workers record rows and write files concurrently
        out_root = options.out if options.out is not None else RUNS
        self.cache = ArtifactCache(cache_root(out_root))
        self.rows: dict[RowKey, dict[str, Any]] = {}
        self.provenance: dict[str, Any] = {}
        self.previous: dict[str, Any] = {}  # run.json of the run being resumed
        self.eval_x = np.empty(0)
        self._lock: FileLock | None = None
        try:
            self.run_dir = self._run_dir(out_root / self.suite.name)
        except BaseException:
            if self.source is not None:
                self.source.close()
            raise
        if self.source is not None:
            self.source.run = self.run_dir.name  # named in the holder information of its boards
        if self.previous:
            self._load_previous_rows()

    # -- set-up -------------------------------------------------------------------------------

    def _select_targets(self) -> list[targets.Target]:
        names = list(self.suite.targets)
        for name in self.options.targets:
            if name not in self.all_targets:
                known = ", ".join(sorted(self.all_targets))
                raise InputError(f"unknown target {name!r}; known targets: {known}", field="--target")
        if self.options.targets:
            names = list(dict.fromkeys(self.options.targets))
        chosen = [self.all_targets[n] for n in names]
        if self.options.emulator_only:
            emulators = [t for t in chosen if t.is_emulator]
            usable = [t for t in emulators if targets.availability(t, ROOT).usable]
            if not usable:
                reasons = "; ".join(f"{t.name}: {targets.availability(t, ROOT).reason}" for t in emulators)
                raise InfraError(
                    "--emulator-only: none of the suite's emulator targets is usable here"
                    + (f" ({reasons})" if reasons else " (the suite names no emulator target)"),
                    hint="run `./dev.sh setup` to install QEMU and the toolchain, or add "
                    "qemu_mps2_an500 to the suite's targets",
                )
            chosen = usable
        return chosen

    def _baselines_root(self) -> Path:
        root = self.options.baselines
        if root is None:
            return BASELINES
        if root.exists() and not root.is_dir():
            raise InputError(
                "not a folder (expected <folder>/<suite>/<target>.csv)", file=root, field="--baselines"
            )
        if not root.exists() and not self.options.update_baselines:
            raise InputError(
                "no such folder (it is created only with --update-baselines)", file=root, field="--baselines"
            )
        return root

    def _load_baseline(self, target: targets.Target) -> pd.DataFrame | None:
        folder = self.baselines_root / self.suite.name
        if folder.exists() and not folder.is_dir():
            raise InputError(
                f"expected a folder of <target>.csv baselines for suite {self.suite.name}",
                file=folder,
                field="--baselines",
            )
        path = baselines.baseline_path(self.baselines_root, self.suite.name, target.name)
        if not path.exists() and not path.is_symlink():
            return None
        return baselines.load_baseline(path, self.suite.name)

    def _run_dir(self, suite_root: Path) -> Path:
        if self.options.resume:
            previous = self._latest_incomplete(suite_root)
            if previous is not None:
                self._check_resumable(previous)
                self._acquire(previous)
                return previous
            self.progress.say("--resume: no interrupted run of this suite; starting a new one")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = suite_root / f"{stamp}-{secrets.token_hex(2)}"
        run_dir.mkdir(parents=True)
        self._acquire(run_dir)
        return run_dir

    def _acquire(self, run_dir: Path) -> None:
        lock = FileLock(run_dir / LOCK_FILE)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise InfraError(
                f"run folder {run_dir} is in use by another harness process",
                hint="wait for that run to finish (or stop it), then run with --resume again",
            ) from None
        self._lock = lock

    @staticmethod
    def _latest_incomplete(suite_root: Path) -> Path | None:
        if not suite_root.is_dir():
            return None
        for run_dir in sorted((p for p in suite_root.iterdir() if p.is_dir()), reverse=True):
            try:
                info = json.loads((run_dir / RUN_JSON).read_text())
            except (OSError, ValueError):
                continue  # killed before its run.json was written: nothing to resume there
            if isinstance(info, dict) and info.get("status") != COMPLETE:
                return run_dir
        return None

    def _check_resumable(self, run_dir: Path) -> None:
        info = json.loads((run_dir / RUN_JSON).read_text())
        old_hash = str(info.get("suite_hash") or "")
        if old_hash != self.suite_hash:
            raise InputError(
                f"the suite changed since run {run_dir.name} was interrupted (suite hash "
                f"{old_hash[:12] or 'unknown'} then, {self.suite_hash[:12]} now); a run is resumed only "
                "with the suite it started with. Run without --resume to start a new run",
                file=self.options.suite,
                field="--resume",
            )
        old_mode = (info.get("farm") or {}).get("mode")
        if old_mode != self.farm_mode:
            raise InputError(
                f"run {run_dir.name} was started "
                + (f"on a farm in {old_mode} mode" if old_mode else "without a farm")
                + ", this command runs "
                + (f"on a farm in {self.farm_mode} mode" if self.farm_mode else "without a farm")
                + "; resume it with the same --hardware-map/--labgrid choice",
                file=self.options.suite,
                field="--resume",
            )
        names = [t.name for t in self.targets]
        if info.get("target_names") != names:
            raise InputError(
                f"run {run_dir.name} was started for targets {info.get('target_names')}, this command "
                f"selects {names}; resume it with the same --target/--emulator-only options",
                file=self.options.suite,
                field="--resume",
            )
        self.previous = info

    def _load_previous_rows(self) -> None:
        path = self.run_dir / "records.parquet"
        if not path.exists() and not (self.run_dir / "records.csv").exists():
            self.progress.say(f"resuming {self.run_dir}: nothing was measured yet")
            return
        frame = records.read_records(self.run_dir)
        for row in frame.to_dict("records"):
            # failed rows are measured again: their failure may have been the interruption itself
            if row.get("status") in ("ok", "mismatch"):
                self.rows[self._key(row)] = row
        self.progress.say(f"resuming {self.run_dir} with {len(self.rows)} measured rows")

    # -- stages -------------------------------------------------------------------------------

    def _load_dataset(self) -> Dataset:
        ds = self.suite.dataset
        kwargs: dict[str, Any] = dict(ds.options)
        if ds.test_fraction is not None:
            kwargs["test_fraction"] = ds.test_fraction
        try:
            return load_dataset(ds.name, root=ds.root, seed=self.suite.seed, **kwargs)
        except DatasetNotFound as exc:
            raise InputError(str(exc), file=self.options.suite, line=ds.line, field="dataset.root") from exc
        except (TypeError, ValueError) as exc:
            raise InputError(
                str(exc), file=self.options.suite, line=ds.line, field="dataset.options"
            ) from exc

    def _build(self, prepared: PreparedModel, target: targets.Target) -> BuiltImage:
        key = self.cache.key(
            stage="build",
            model=hash_tree([prepared.model_dir], (".c", ".h")),
            firmware=hash_tree([ROOT / "targets"], (".c", ".h", ".S", ".ld", ".json", ".py")),
            ini=hash_tree([ROOT / "platformio.ini"], (".ini",)),
            target=target.name,
            gcc=provenance.tools.version("arm-none-eabi-gcc"),
        )
        build_id = key[:12]

        # The log goes to the run folder, so it outlives a failed build (whose cache folder is dropped).
        log_path = self.run_dir / target.name / f"build-{prepared.qmodel.name}-{build_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def produce(folder: Path) -> None:
            result = build.build_firmware(
                ROOT, target, prepared.model_dir, build_id, folder / "pio", log_path
            )
            sizes = elfsize.elf_sizes(result.elf)
            elf = folder / "firmware.elf"
            elf.write_bytes(result.elf.read_bytes())
            info = {
                "build_id": build_id,
                "flash_bytes": sizes.flash_bytes,
                "ram_bytes": sizes.ram_bytes,
                "symbols": sizes.symbol_sizes,
                "flags": list(result.flags),
            }
            (folder / "image.json").write_text(json.dumps(info, indent=1, sort_keys=True))

        folder = self.cache.get_or_create("build", key, produce, refresh=self.options.no_cache)
        info = json.loads((folder / "image.json").read_text())
        image = BuiltImage(
            elf=folder / "firmware.elf",
            build_id=info["build_id"],
            flash_bytes=int(info["flash_bytes"]),
            ram_bytes=int(info["ram_bytes"]),
            symbol_sizes={k: int(v) for k, v in info["symbols"].items()},
            flags=info["flags"],
        )
        wrong = {
            sym: (size, image.symbol_sizes.get(sym))
            for sym, size in prepared.symbol_sizes.items()
            if image.symbol_sizes.get(sym) != size
        }
        if wrong:
            raise InfraError(
                f"storage figures disagree with the linked ELF for {len(wrong)} symbols "
                f"(symbol: (emitted, in ELF)), e.g. {next(iter(wrong.items()))}",
                hint="the generated model and the ELF differ: a code-generation bug; rebuild with --no-cache",
            )
        return image

    def _measure(
        self,
        prepared: PreparedModel,
        image: BuiltImage,
        target: targets.Target,
        eval_x_q: np.ndarray,
        *,
        name: str,
        backend: Backend | None = None,
        ctx: WorkerContext | None = None,
    ) -> tuple[dict[int, dict[str, Any]], int]:
        """Run the image; returns per device level the measured figures, and the stack high-water mark.
        A farm worker passes the backend of its claimed board and its context (log lines, stop)."""
        qm = prepared.qmodel
        expected = Expected(
            model_hash=prepared.model_hash,
            build_id=image.build_id,
            levels=len(qm.levels),
            input_bytes=qm.tensors[qm.input].size,
            output_bytes=qm.tensors[qm.output].size,
            # what the image reports: Renode runs the board's image, whose handshake says `dwt`
            cycle_source=self.all_targets[target.image].cycle_source,
        )
        log_dir = self.run_dir / target.name
        log_dir.mkdir(exist_ok=True)
        if backend is None:
            backend = targets.make_backend(target, ROOT, timeout_s=self.suite.measure.timeout_s)
            self._note_board_id(target, backend)
        measure = self.suite.measure
        levels = [lv.device_level for lv in prepared.levels]
        # Boards of one target run at once on a farm: one UART log per board.
        board_id = ctx.board.id if ctx is not None else ""
        log_name = f"uart-{_safe(board_id)}.log" if board_id else "uart.log"
        with (log_dir / log_name).open("a", encoding="utf-8") as log, backend.session(image.elf) as link:
            log.write(f"# {dt.datetime.now(dt.timezone.utc).isoformat()} {name} on {link.description}\n")
            client = DeviceClient(link.port, timeout=measure.timeout_s, log=log)
            label = f"{target.name}: {name}, {len(levels)} level(s) × {len(eval_x_q)} samples"
            try:
                with contextlib.ExitStack() as stack:
                    if ctx is None:
                        task = stack.enter_context(
                            self.progress.task(label, total=len(levels) * len(eval_x_q))
                        )
                        counter = task.count_callback()
                    else:
                        stack.enter_context(ctx.watch(link.port))  # closed by a stop: reads end at once
                        counter = _quarters(ctx, name)
                    result = run_session(
                        client,
                        expected,
                        eval_x_q,
                        levels,
                        repetitions=measure.repetitions,
                        warmup=measure.warmup,
                        progress=counter,
                    )
            except DeviceError as exc:
                extra = link.diagnostics().strip()
                if extra:
                    exc.last_lines = [*exc.last_lines, *extra.splitlines()[-5:]]
                raise
            finally:
                # How often a command was sent again: a corrupt reply, a request the device read
                # corrupted (`? err crc`), or the boot banner arriving during `hello`.
                log.write(f"# session end: {client.retried} command(s) resent\n")
                with self._lock_rows:
                    info = self.provenance["targets"][target.name]
                    info["uart_retries"] = int(info.get("uart_retries", 0)) + client.retried
        figures = {}
        for lv in result.levels:
            figures[lv.level] = {
                "outputs": lv.outputs,
                "cycles": lv.cycles,
                "layer_cycles": lv.layer_cycles,
            }
        return figures, result.stack_bytes

    def _note_board_id(self, target: targets.Target, backend: Backend) -> None:
        """The unique ID of the board that runs the target (None for an emulator) into run.json."""
        info = self.provenance["targets"][target.name]
        if info.get("board_id") is not None:
            return
        info["board_id"] = board_id(backend)

    # -- records ------------------------------------------------------------------------------

    def _key(self, row: dict[str, Any]) -> RowKey:
        return _row_key(row, per_board=self.farm_mode == REPEAT)

    def _base_row(
        self,
        prep: PreparedEntry,
        model: PreparedModel,
        level_index: int,
        target: targets.Target,
        board: str | None = None,
    ) -> dict[str, Any]:
        lv = model.levels[level_index]
        return {
            "suite": self.suite.name,
            "entry": prep.entry.name,
            "trainer": prep.trainer,
            "arch": prep.entry.arch,
            "dataset": self.suite.dataset.name,
            "format": prep.entry.format,
            "level": lv.level,
            "sparsity": lv.sparsity,
            "target": target.name,
            "board": board or None,
            "cycle_source": target.cycle_source,
            "accuracy_float": lv.accuracy_float,
            "accuracy_host": lv.accuracy_host,
            "samples": len(lv.host_outputs),
            "model_hash": model.model_hash,
            **model.storage,
        }

    def _failed_rows(
        self,
        prep: PreparedEntry,
        model: PreparedModel,
        target: targets.Target,
        error: str,
        board: str | None = None,
    ) -> None:
        with self._lock_rows:
            for i in range(len(model.levels)):
                row = self._base_row(prep, model, i, target, board) | {"status": "failed", "error": error}
                self.rows[self._key(row)] = row

    def _ordered_rows(self) -> list[dict[str, Any]]:
        """Rows in the suite's order (entry, then target, then level), however they were measured:
        a resumed run writes the same file as an uninterrupted one."""
        entries = {e.name: i for i, e in enumerate(self.suite.models)}
        target_order = {t.name: i for i, t in enumerate(self.targets)}

        def order(key: RowKey) -> tuple[int, int, int, str, str, str]:
            entry, fmt, level, target, board = key
            return (entries.get(entry, len(entries)), target_order.get(target, 99), level, entry, fmt, board)

        with self._lock_rows:
            return [self.rows[k] for k in sorted(self.rows, key=order)]

    def _write_records(self) -> pd.DataFrame:
        with self._lock_rows:
            frame = records.records_frame(self._ordered_rows())
            records.write_records(self.run_dir, frame)
        return frame

    def _write_run_json(self, status: str) -> None:
        with self._lock_rows:
            if self.scheduler is not None:
                farm = self.provenance["farm"]
                farm["sessions"] = list(self.scheduler.sessions)
                farm["waits"] = list(self.scheduler.waits)
                farm["benched"] = {
                    w.board.label: w.benched
                    for ws in self.scheduler.workers.values()
                    for w in ws
                    if w.benched
                }
            text = json.dumps({**self.provenance, "status": status}, indent=1, sort_keys=True, default=str)
            atomic_write_text(self.run_dir / RUN_JSON, text)

    def _start_provenance(self) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        targets_info = {
            t.name: {
                "board": t.board,
                "backend": t.backend,
                "cycle_source": t.cycle_source,
                "clock_hz": t.clock_hz,
                "board_id": None,
                "uart_retries": 0,
            }
            for t in self.targets
        }
        self.provenance = {
            "run_id": self.run_dir.name,
            "run_dir": str(self.run_dir),
            "suite": str(self.options.suite),
            "suite_name": self.suite.name,
            "suite_hash": self.suite_hash,
            "target_names": [t.name for t in self.targets],
            "started": now,
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "host": platform.node(),
            "pid": os.getpid(),
            "git": provenance.git_state(ROOT),
            "tools": provenance.tool_versions(),
            "targets": targets_info,
            "baselines": str(self.baselines_root / self.suite.name),
            "models": {},
            "builds": {},
            "resumed": [],
        }
        if self.previous:
            # Keep what the interrupted part measured with: its start, builds and board IDs.
            self.provenance["started"] = self.previous.get("started", now)
            self.provenance["builds"] = dict(self.previous.get("builds") or {})
            self.provenance["resumed"] = [*(self.previous.get("resumed") or []), now]
            for name, info in (self.previous.get("targets") or {}).items():
                if name in targets_info and isinstance(info, dict):
                    targets_info[name]["board_id"] = info.get("board_id")
                    targets_info[name]["uart_retries"] = int(info.get("uart_retries") or 0)
        if self.source is not None:
            self._start_farm(targets_info)

    def _start_farm(self, targets_info: dict[str, dict[str, Any]]) -> None:
        """The scheduler, its workers' boards, and the farm section of run.json."""
        assert self.source is not None
        farm = self.suite.farm
        wait_s = self.options.board_wait_s if self.options.board_wait_s is not None else farm.board_wait_s
        self.scheduler = Scheduler(
            self.source,
            [t.name for t in self.targets],
            is_emulator=lambda kind: self.all_targets[kind].is_emulator,
            mode=farm.mode,
            wait_s=wait_s,
            max_failures=farm.max_board_failures,
            say=self.progress.say,
        )
        boards: dict[str, Any] = {}
        for target in self.targets:
            mine = self.scheduler.boards_of(target.name)
            targets_info[target.name]["boards"] = [b.id for b in mine if b.id]
            for board in mine:
                boards[board.label] = board.describe()
            why = self.scheduler.missing.get(target.name)
            note = why or ", ".join(b.label for b in mine)
            self.progress.say(f"farm: {target.name}: {note}")
        notices = self.source.notices()
        for notice in notices:
            self.progress.say(f"farm: {notice}")
        previous = self.previous.get("farm") or {}
        self.provenance["farm"] = {
            **self.source.describe(),
            **({"notices": notices} if notices else {}),
            "mode": farm.mode,
            "board_wait_s": wait_s,
            "max_board_failures": farm.max_board_failures,
            "boards": boards,
            "earlier_sessions": [
                *(previous.get("earlier_sessions") or []),
                *(previous.get("sessions") or []),
            ],
            "sessions": [],
            "waits": [],
        }

    # -- the run ------------------------------------------------------------------------------

    def execute(self) -> int:
        try:
            return self._execute()
        finally:
            if self.source is not None:
                self.source.close()  # idempotent: frees anything a stopped scheduler left
            if self._lock is not None:
                self._lock.release()
                with contextlib.suppress(OSError):
                    (self.run_dir / LOCK_FILE).unlink()

    def _execute(self) -> int:
        started = time.time()
        self._start_provenance()
        self._write_run_json("running")
        try:
            self._measure_all()
        except BaseException as exc:
            if self.scheduler is not None:
                # Every worker stops and frees its board (lock, labgrid place) before anything is written.
                self.progress.error("stopping: every board worker stops and frees its board")
                self.scheduler.stop()
            # Keep what was measured and say why the run stopped; --resume continues from here.
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "aborted"
            self.provenance["stopped"] = dt.datetime.now(dt.timezone.utc).isoformat()
            if not isinstance(exc, KeyboardInterrupt):
                self.provenance["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.rows:
                self._write_records()
            self._write_run_json(status)
            raise
        return self._finish(started)

    def _measure_all(self) -> None:
        dataset = self.dataset
        n = self.suite.samples or len(dataset.x_test)
        eval_x, eval_y = dataset.x_test[:n], dataset.y_test[:n]
        self.eval_x = eval_x
        say = self.progress.say
        for entry in self.suite.models:
            say(
                f"[bold]{escape(entry.name)}[/]: {entry.trainer} · {entry.arch} · {entry.format}", markup=True
            )
            with self.progress.task(f"train {entry.name}", total=1.0) as task:
                prep = prepare_entry(
                    self.cache,
                    self.suite,
                    entry,
                    dataset,
                    eval_x,
                    eval_y,
                    refresh=self.options.no_cache,
                    progress=task.fraction_callback(),
                )
            note = "cached" if prep.cached else f"{prep.train_seconds:.1f} s"
            accuracies = [(lv.sparsity, lv.accuracy_host) for m in prep.models for lv in m.levels]
            if len(accuracies) == 1:
                summary = f"{accuracies[0][1]:.2%}"
            else:
                summary = ", ".join(f"{s:.0%} sparse {a:.2%}" for s, a in accuracies)
            say(f"  trained ({note}); int8 host accuracy {summary}")
            for model in prep.models:
                interrupts.check()
                self.provenance["models"][model_label(prep, model)] = model.model_hash
                if self.scheduler is not None:
                    for target in self.targets:
                        self._submit(prep, model, target, eval_y)
                else:
                    self._run_model_on_targets(prep, model, eval_y)
        if self.scheduler is not None:
            self.progress.say("waiting for the board workers to finish")
            self.scheduler.finish()

    def _finish(self, started: float) -> int:
        interrupts.check()
        frame = self._write_records()
        verdicts = self._compare(frame)
        atomic_write_text(
            self.run_dir / "comparison.json",
            json.dumps(baselines.comparisons_to_json(verdicts), indent=1) + "\n",
        )
        code = self._exit_code(frame, verdicts)
        updates = (
            baselines.update_baselines(frame, self.baselines_root, self.suite.name)
            if self.options.update_baselines
            else []
        )
        self.provenance["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
        self.provenance["wall_time_s"] = round(time.time() - started, 2)
        self.provenance["exit_code"] = code
        shown = {**self.provenance, "status": COMPLETE}
        files = report.write_report(self.run_dir, frame, verdicts, shown)
        paths: dict[str, Any] = {
            "run_dir": self.run_dir,
            "records_csv": self.run_dir / "records.csv",
            "records_parquet": self.run_dir / "records.parquet",
            "run_json": self.run_dir / RUN_JSON,
            "comparison": self.run_dir / "comparison.json",
            "report_md": files.md,
            "report_html": files.html,
            "plots": [str(p) for p in files.plot_paths()],
            "uart_logs": sorted(
                str(p) for t in self.targets for p in (self.run_dir / t.name).glob("uart*.log")
            ),
            "junit": self.run_dir / "junit.xml",
            "summary": self.run_dir / "summary.json",
        }
        if self.options.junit:
            paths["junit_copy"] = self.options.junit
        if self.options.summary_json:
            paths["summary_copy"] = self.options.summary_json
        summary = ci_outputs.build_summary(
            frame, verdicts, exit_code=code, suite=self.suite.name, run_id=self.run_dir.name, paths=paths
        )
        junit = ci_outputs.junit_xml(frame, verdicts, suite=self.suite.name, run_dir=self.run_dir)
        ci_outputs.write_outputs(
            self.run_dir,
            summary,
            junit,
            extra_summary=self.options.summary_json,
            extra_junit=self.options.junit,
        )
        self._write_run_json(COMPLETE)  # last: a complete run.json means every file is there
        report.print_summary(self.console, frame, verdicts)
        if self.options.update_baselines:
            self.console.print(f"baselines updated in {self.baselines_root}:", markup=False, highlight=False)
            for line in updates:
                self.console.print(f"  {line}", markup=False, highlight=False)
        self.console.print(f"run folder: {self.run_dir}", markup=False, highlight=False)
        return code

    def _run_model_on_targets(self, prep: PreparedEntry, model: PreparedModel, eval_y: np.ndarray) -> None:
        for target in self.targets:
            interrupts.check()
            if self._measured(prep, model, target):
                self.progress.say(f"  {target.name}: already measured (resume)")
                continue
            image = self._image_for(prep, model, target, check_here=True)
            if image is None:
                continue
            try:
                figures, stack = self._measure(
                    model, image, target, self._eval_q(model), name=model_label(prep, model)
                )
            except InfraError as exc:
                self._record_failure(prep, model, target, exc)
                continue
            self._record_figures(prep, model, target, image, figures, stack, eval_y)

    def _measured(
        self, prep: PreparedEntry, model: PreparedModel, target: targets.Target, board: str = ""
    ) -> bool:
        """Every level of `model` on `target` (on `board`, when rows are kept per board) has a row
        from an earlier attempt of this run (--resume)."""
        keys = [self._key(self._base_row(prep, model, i, target, board)) for i in range(len(model.levels))]
        with self._lock_rows:
            return all(k in self.rows for k in keys)

    def _eval_q(self, model: PreparedModel) -> np.ndarray:
        return quantize_input(self.eval_x, model.qmodel.tensors[model.qmodel.input])

    def _image_for(
        self, prep: PreparedEntry, model: PreparedModel, target: targets.Target, *, check_here: bool
    ) -> BuiltImage | None:
        """Check `target` can run here (`check_here`; a farm's boards are checked when claimed) and
        the model fits it, then build its image. None (the rows recorded as failed) when it cannot."""
        if check_here:
            availability = targets.availability(target, ROOT)
            if not availability.usable:
                self.progress.error(
                    f"  [red]{target.name}: not usable here: {escape(availability.reason)}[/]", markup=True
                )
                self._failed_rows(prep, model, target, f"target not usable: {availability.reason}")
                return None
        try:
            image_target = self.all_targets[target.image]  # e.g. Renode runs the board's image
            fit.check_fit(
                model,
                image_target,
                file=self.options.suite,
                line=prep.entry.line,
                field=f"models[{self.suite.models.index(prep.entry)}]",
            )
            with self.progress.task(f"build {model_label(prep, model)} for {target.name}"):
                image = self._build(model, image_target)
        except InfraError as exc:
            self._record_failure(prep, model, target, exc)
            return None
        with self._lock_rows:
            self.provenance["builds"][f"{model_label(prep, model)}@{target.name}"] = {
                "build_id": image.build_id,
                "flags": image.flags,
                "flash_bytes": image.flash_bytes,
                "ram_bytes": image.ram_bytes,
            }
        return image

    def _record_failure(
        self,
        prep: PreparedEntry,
        model: PreparedModel,
        target: targets.Target,
        exc: InfraError,
        board: str | None = None,
    ) -> None:
        lines = getattr(exc, "last_lines", [])
        detail = str(exc) + (
            "\n    last UART lines:\n      " + "\n      ".join(lines[-_UART_LINES:]) if lines else ""
        )
        where = f"{target.name} on {board}" if board else target.name
        self.progress.error(f"  [red]{escape(where)}: FAILED: {escape(detail)}[/]", markup=True)
        text = failure_text(exc)
        self._failed_rows(prep, model, target, f"board {board}: {text}" if board else text, board)
        self._write_records()

    def _record_figures(
        self,
        prep: PreparedEntry,
        model: PreparedModel,
        target: targets.Target,
        image: BuiltImage,
        figures: dict[int, dict[str, Any]],
        stack: int,
        eval_y: np.ndarray,
        board: str | None = None,
    ) -> None:
        where = f"{target.name} on {board}" if board else target.name
        names = [layer.name for layer in model.qmodel.layers]
        for i, lv in enumerate(model.levels):
            fig = figures[lv.device_level]
            outputs: np.ndarray = fig["outputs"]
            same = np.array_equal(outputs, lv.host_outputs)
            cycles = sorted(fig["cycles"])
            row = self._base_row(prep, model, i, target, board) | {
                "cycles": int(np.median(cycles)),
                "cycles_min": cycles[0],
                "cycles_max": cycles[-1],
                "repetitions": len(cycles),
                "cycles_per_layer": ";".join(
                    f"{n}={c}" for n, c in zip(names, fig["layer_cycles"], strict=False)
                ),
                "accuracy_device": float(np.mean(np.argmax(outputs, axis=1) == eval_y[: len(outputs)])),
                "flash_bytes": image.flash_bytes,
                "ram_bytes": image.ram_bytes + stack,
                "stack_bytes": stack,
                "fw_build": image.build_id,
                "status": "ok" if same else "mismatch",
                "error": "" if same else _mismatch_detail(outputs, lv.host_outputs),
            }
            with self._lock_rows:
                self.rows[self._key(row)] = row
            mark = "bit-exact" if same else "[red]MISMATCH with host reference[/]"
            line = (
                f"  {escape(where)} level {lv.level} ({lv.sparsity:.2f}): "
                f"{row['cycles']:,} {target.cycle_source}, accuracy {row['accuracy_device']:.3f}, {mark}"
            )
            if same:
                self.progress.say(line, markup=True)
            else:
                self.progress.error(line, markup=True)
        self._write_records()

    # -- farm mode ----------------------------------------------------------------------------

    def _submit(
        self, prep: PreparedEntry, model: PreparedModel, target: targets.Target, eval_y: np.ndarray
    ) -> None:
        """Build `model` for `target` here, then hand the measurement to the scheduler: a board of
        the kind runs it (shard), or each board does (repeat)."""
        assert self.scheduler is not None
        boards = self.scheduler.boards_of(target.name)
        todo: frozenset[str] | None = None
        if self.farm_mode == REPEAT:
            todo = frozenset(b.id for b in boards if not self._measured(prep, model, target, b.id))
            if boards and not todo:
                self.progress.say(f"  {target.name}: already measured on every board (resume)")
                return
        elif self._measured(prep, model, target):
            self.progress.say(f"  {target.name}: already measured (resume)")
            return
        if target.name in self.scheduler.missing:
            # No board to run it: fail its rows now, without building an image nobody runs.
            self._failed_rows(prep, model, target, self.scheduler.missing[target.name])
            self.progress.error(
                f"  [red]{target.name}: {escape(self.scheduler.missing[target.name])}[/]", markup=True
            )
            return
        # A kind with boards of its own is checked when a board is claimed; a local emulator here.
        local = all(b.source == LOCAL for b in boards)
        image = self._image_for(prep, model, target, check_here=local)
        if image is None:
            return
        x_q = self._eval_q(model)
        label = model_label(prep, model)

        def run_job(board: Board, claim: Claim, ctx: WorkerContext) -> Verdict:
            backend = claim.backend(target, ROOT, timeout_s=self.suite.measure.timeout_s)
            try:
                figures, stack = self._measure(
                    model, image, target, x_q, name=label, backend=backend, ctx=ctx
                )
            except InfraError as exc:
                if ctx.stop.is_set():
                    raise  # the link was closed by a stop: nothing to record, --resume measures it
                self._record_failure(prep, model, target, exc, board.id or None)
                # A fault or an error answer is the firmware's doing, not the board's.
                culprit = FIRMWARE if isinstance(exc, DeviceFault | DeviceCommandError) else BOARD
                return Verdict(culprit, str(exc).splitlines()[0])
            self._record_figures(prep, model, target, image, figures, stack, eval_y, board.id or None)
            return Verdict(OK)

        def fail_job(board: Board | None, why: str) -> None:
            where = f"{target.name} on {board.label}" if board is not None else target.name
            self.progress.error(
                f"  [red]{escape(where)}: {escape(label)} FAILED: {escape(why)}[/]", markup=True
            )
            self._failed_rows(prep, model, target, why, board.id if board is not None else None)
            self._write_records()

        self.scheduler.submit(Job(kind=target.name, label=label, run=run_job, fail=fail_job, boards=todo))

    def _compare(self, frame: pd.DataFrame) -> dict[str, baselines.Comparison]:
        verdicts = {}
        for target in self.targets:
            current = frame[frame["target"] == target.name]
            verdicts[target.name] = baselines.compare(
                current, self.baselines.get(target.name), self.suite.tolerances
            )
        return verdicts

    @staticmethod
    def _exit_code(frame: pd.DataFrame, verdicts: dict[str, baselines.Comparison]) -> int:
        if any(v.regressions for v in verdicts.values()) or (frame["status"] == "mismatch").any():
            return EXIT_REGRESSION
        if (frame["status"] == "failed").any():
            return EXIT_INFRA
        return EXIT_OK


def board_id(backend: Backend) -> str | None:
    """The unique ID of the board behind a backend: a board backend's probe UID (which also names
    its serial port), None for an emulator. Resolving lists probes and ports, nothing is flashed."""
    resolve = getattr(backend, "resolve", None)
    if backend.kind != "board" or resolve is None:
        return None
    probe, _port = resolve()
    return str(probe.unique_id)


def failure_text(exc: Exception) -> str:
    """A failed row's error cell: the error (without its hint) and the last UART lines."""
    lines = [line.rstrip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.strip().startswith("hint:")]
    text = "\n".join(lines[:6])
    last = getattr(exc, "last_lines", None) or []
    if last:
        text += "\nlast UART lines:\n" + "\n".join(f"  {line}" for line in last[-_UART_LINES:])
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


def model_label(prep: PreparedEntry, model: PreparedModel) -> str:
    """How logs and run.json name a deployable model: its entry, and the level of a standalone
    entry's per-level models (a cached model keeps the name of the entry that first made it)."""
    if len(prep.models) == 1:
        return prep.entry.name
    return f"{prep.entry.name}@{model.levels[0].sparsity:g}"


def _safe(text: str) -> str:
    """A board ID as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "board"


def _quarters(ctx: WorkerContext, name: str) -> Callable[[int, int], None]:
    """A farm worker's progress: a log line at each quarter of the sweep (bars of parallel workers
    would fight over the terminal)."""
    said = [0]

    def report(done: int, total: int) -> None:
        quarter = 4 * done // max(total, 1)
        if quarter > said[0]:
            said[0] = quarter
            ctx.say(f"{name}: {done}/{total} inferences")

    return report


def _mismatch_detail(device: np.ndarray, host: np.ndarray) -> str:
    bad = np.nonzero((device != host).any(axis=1))[0]
    first = int(bad[0])
    return (
        f"{len(bad)} of {len(device)} samples differ from the host reference; first: sample {first}, "
        f"device {device[first].tolist()} vs host {host[first].tolist()}"
    )


def run(options: RunOptions, console: Console) -> int:
    runner = Run(options, console)
    return runner.execute()
