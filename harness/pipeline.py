"""`harness run`: one suite, end to end (DESIGN.md §1).

suite → validate → per entry: train, quantize, evaluate on host, pack, generate C (harness.prepare)
→ per target: build (cached), deploy, UART session (harness.measure) → records → baselines → report.
A failing entry or target is recorded as failed and the others still run; records are rewritten
atomically after every measured model, so an interrupted run keeps what it measured and `--resume`
finishes it.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from harness import baselines, build, elfsize, provenance, records, report, targets
from harness.atomic import atomic_write_text
from harness.cache import ArtifactCache, hash_tree
from harness.catalog import build_catalog
from harness.errors import EXIT_INFRA, EXIT_OK, EXIT_REGRESSION, DeviceError, InfraError, InputError
from harness.measure import Expected, run_session
from harness.paths import BASELINES, ROOT, RUNS, cache_root
from harness.prepare import PreparedEntry, PreparedModel, prepare_entry
from harness.protocol import DeviceClient
from harness.quantize import quantize_input
from harness.suite import Suite, load_suite
from trainers.datasets import Dataset, DatasetNotFound, load_dataset


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


@dataclass
class BuiltImage:
    elf: Path
    build_id: str
    flash_bytes: int
    ram_bytes: int
    symbol_sizes: dict[str, int]
    flags: list[str]


def _row_key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return (str(row["entry"]), str(row["format"]), int(row["level"]), str(row["target"]))


class Run:
    def __init__(self, options: RunOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.catalog = build_catalog(ROOT)
        self.suite: Suite = load_suite(options.suite, self.catalog)
        self.all_targets = targets.load_targets(ROOT)
        self.targets = self._select_targets()
        out_root = options.out if options.out is not None else RUNS
        self.cache = ArtifactCache(cache_root(out_root))
        self.run_dir = self._run_dir(out_root / self.suite.name)
        self.rows: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        self.provenance: dict[str, Any] = {}
        self.eval_x = np.empty(0)
        if options.resume:
            self._load_previous_rows()

    # -- set-up -------------------------------------------------------------------------------

    def _select_targets(self) -> list[targets.Target]:
        names = list(self.suite.targets)
        for name in self.options.targets:
            if name not in self.all_targets:
                known = ", ".join(sorted(self.all_targets))
                raise InputError(f"unknown target {name!r}; known targets: {known}", field="--target")
        if self.options.targets:
            names = list(self.options.targets)
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

    def _run_dir(self, suite_root: Path) -> Path:
        if self.options.resume:
            previous = self._latest_incomplete(suite_root)
            if previous is not None:
                return previous
            self.console.print("[yellow]--resume: no interrupted run of this suite; starting a new one[/]")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = suite_root / f"{stamp}-{secrets.token_hex(2)}"
        run_dir.mkdir(parents=True)
        return run_dir

    @staticmethod
    def _latest_incomplete(suite_root: Path) -> Path | None:
        if not suite_root.is_dir():
            return None
        for run_dir in sorted((p for p in suite_root.iterdir() if p.is_dir()), reverse=True):
            info = run_dir / "run.json"
            try:
                status = json.loads(info.read_text()).get("status")
            except (OSError, ValueError):
                status = None
            if status != "complete":
                return run_dir
        return None

    def _load_previous_rows(self) -> None:
        path = self.run_dir / "records.parquet"
        if not path.exists():
            return
        frame = records.read_records(path)
        for row in frame.to_dict("records"):
            if row.get("status") in ("ok", "mismatch"):
                self.rows[_row_key(row)] = row
        self.console.print(f"resuming {self.run_dir} with {len(self.rows)} measured rows", markup=False)

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
        self, prepared: PreparedModel, image: BuiltImage, target: targets.Target, eval_x_q: np.ndarray
    ) -> tuple[dict[int, dict[str, Any]], int]:
        """Run the image; returns per device level the measured figures, and the stack high-water mark."""
        qm = prepared.qmodel
        expected = Expected(
            model_hash=prepared.model_hash,
            build_id=image.build_id,
            levels=len(qm.levels),
            input_bytes=qm.tensors[qm.input].size,
            output_bytes=qm.tensors[qm.output].size,
            cycle_source=target.cycle_source,
        )
        log_dir = self.run_dir / target.name
        log_dir.mkdir(exist_ok=True)
        backend = targets.make_backend(target, ROOT, timeout_s=self.suite.measure.timeout_s)
        measure = self.suite.measure
        with (log_dir / "uart.log").open("a", encoding="utf-8") as log, backend.session(image.elf) as link:
            log.write(f"# {dt.datetime.now(dt.timezone.utc).isoformat()} {qm.name} on {link.description}\n")
            client = DeviceClient(link.port, timeout=measure.timeout_s, log=log)
            try:
                result = run_session(
                    client,
                    expected,
                    eval_x_q,
                    [lv.device_level for lv in prepared.levels],
                    repetitions=measure.repetitions,
                    warmup=measure.warmup,
                )
            except DeviceError as exc:
                extra = link.diagnostics().strip()
                if extra:
                    exc.last_lines = [*exc.last_lines, *extra.splitlines()[-5:]]
                raise
        figures = {}
        for lv in result.levels:
            figures[lv.level] = {
                "outputs": lv.outputs,
                "cycles": lv.cycles,
                "layer_cycles": lv.layer_cycles,
            }
        return figures, result.stack_bytes

    # -- records ------------------------------------------------------------------------------

    def _base_row(
        self, prep: PreparedEntry, model: PreparedModel, level_index: int, target: targets.Target
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
            "cycle_source": target.cycle_source,
            "accuracy_float": lv.accuracy_float,
            "accuracy_host": lv.accuracy_host,
            "samples": len(lv.host_outputs),
            "model_hash": model.model_hash,
            **model.storage,
        }

    def _failed_rows(
        self, prep: PreparedEntry, model: PreparedModel, target: targets.Target, error: str
    ) -> None:
        for i in range(len(model.levels)):
            row = self._base_row(prep, model, i, target) | {"status": "failed", "error": error}
            self.rows[_row_key(row)] = row

    def _write_records(self) -> pd.DataFrame:
        frame = records.records_frame(list(self.rows.values()))
        records.write_records(self.run_dir, frame)
        return frame

    def _write_run_json(self, status: str) -> None:
        doc = {"status": status, "suite": str(self.options.suite), **self.provenance}
        atomic_write_text(self.run_dir / "run.json", json.dumps(doc, indent=1, sort_keys=True, default=str))

    # -- the run ------------------------------------------------------------------------------

    def execute(self) -> int:
        started = time.time()
        self.provenance = {
            "run_dir": str(self.run_dir),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(),
            "git": provenance.git_state(ROOT),
            "tools": provenance.tool_versions(),
            "targets": {
                t.name: {
                    "board": t.board,
                    "backend": t.backend,
                    "cycle_source": t.cycle_source,
                    "clock_hz": t.clock_hz,
                }
                for t in self.targets
            },
            "models": {},
            "builds": {},
        }
        self._write_run_json("running")
        dataset = self._load_dataset()
        n = self.suite.samples or len(dataset.x_test)
        eval_x, eval_y = dataset.x_test[:n], dataset.y_test[:n]
        say = self.console.print

        self.eval_x = eval_x
        for entry in self.suite.models:
            say(f"[bold]{escape(entry.name)}[/]: {entry.trainer} · {entry.arch} · {entry.format}")
            prep = prepare_entry(
                self.cache,
                self.suite,
                entry,
                dataset,
                eval_x,
                eval_y,
                refresh=self.options.no_cache,
                progress=self._progress(f"train {entry.name}"),
            )
            note = "cached" if prep.cached else f"{prep.train_seconds:.1f} s"
            accuracies = [(lv.sparsity, lv.accuracy_host) for m in prep.models for lv in m.levels]
            if len(accuracies) == 1:
                summary = f"{accuracies[0][1]:.2%}"
            else:
                summary = ", ".join(f"{s:.0%} sparse {a:.2%}" for s, a in accuracies)
            say(f"  trained ({note}); int8 host accuracy {summary}", markup=False)
            for model in prep.models:
                self.provenance["models"][f"{entry.name}/{model.qmodel.name}"] = model.model_hash
                self._run_model_on_targets(prep, model, eval_y)

        frame = self._write_records()
        verdicts = self._compare(frame)
        self.provenance["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
        self.provenance["wall_time_s"] = round(time.time() - started, 2)
        report.write_report_md(self.run_dir, frame, verdicts, self.provenance)
        self._write_run_json("complete")
        report.print_summary(self.console, frame, verdicts)
        say(f"run folder: {self.run_dir}", markup=False)
        return self._exit_code(frame, verdicts)

    def _progress(self, label: str) -> Callable[[float, str], None] | None:
        if self.options.quiet or not self.console.is_terminal:
            return None
        last = [-1]

        def show(fraction: float, status: str) -> None:
            pct = int(fraction * 100)
            if pct // 10 != last[0] // 10:
                last[0] = pct
                self.console.print(f"  {label}: {pct:3d}% {status}", highlight=False, markup=False)

        return show

    def _run_model_on_targets(self, prep: PreparedEntry, model: PreparedModel, eval_y: np.ndarray) -> None:
        x_q = None
        for target in self.targets:
            keys = [_row_key(self._base_row(prep, model, i, target)) for i in range(len(model.levels))]
            if all(k in self.rows for k in keys):
                self.console.print(f"  {target.name}: already measured (resume)", markup=False)
                continue
            availability = targets.availability(target, ROOT)
            if not availability.usable:
                self.console.print(f"  [red]{target.name}: not usable here: {escape(availability.reason)}[/]")
                self._failed_rows(prep, model, target, f"target not usable: {availability.reason}")
                continue
            try:
                image = self._build(model, target)
                self.provenance["builds"][f"{prep.entry.name}@{target.name}"] = {
                    "build_id": image.build_id,
                    "flags": image.flags,
                }
                if x_q is None:
                    x_q = quantize_input(self.eval_x, model.qmodel.tensors[model.qmodel.input])
                figures, stack = self._measure(model, image, target, x_q)
            except InfraError as exc:
                lines = getattr(exc, "last_lines", [])
                detail = str(exc) + (
                    "\n    last UART lines:\n      " + "\n      ".join(lines[-8:]) if lines else ""
                )
                self.console.print(f"  [red]{target.name}: FAILED: {escape(detail)}[/]")
                self._failed_rows(prep, model, target, _one_line(exc))
                self._write_records()
                continue
            for i, lv in enumerate(model.levels):
                fig = figures[lv.device_level]
                outputs: np.ndarray = fig["outputs"]
                same = np.array_equal(outputs, lv.host_outputs)
                cycles = sorted(fig["cycles"])
                names = [layer.name for layer in model.qmodel.layers]
                row = self._base_row(prep, model, i, target) | {
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
                self.rows[_row_key(row)] = row
                mark = "bit-exact" if same else "[red]MISMATCH with host reference[/]"
                self.console.print(
                    f"  {target.name} level {lv.level} ({lv.sparsity:.2f}): "
                    f"{row['cycles']:,} {target.cycle_source}, accuracy {row['accuracy_device']:.3f}, {mark}"
                )
            self._write_records()

    def _compare(self, frame: pd.DataFrame) -> dict[str, baselines.Comparison]:
        verdicts = {}
        for target in self.targets:
            current = frame[frame["target"] == target.name]
            path = BASELINES / self.suite.name / f"{target.name}.csv"
            base = baselines.load_baseline(path) if path.exists() else None
            verdicts[target.name] = baselines.compare(current, base, self.suite.tolerances)
        if self.options.update_baselines:
            for line in baselines.update_baselines(frame, BASELINES, self.suite.name):
                self.console.print(f"baseline: {line}", markup=False)
        return verdicts

    @staticmethod
    def _exit_code(frame: pd.DataFrame, verdicts: dict[str, baselines.Comparison]) -> int:
        if any(v.regressions for v in verdicts.values()) or (frame["status"] == "mismatch").any():
            return EXIT_REGRESSION
        if (frame["status"] == "failed").any():
            return EXIT_INFRA
        return EXIT_OK


def _one_line(exc: Exception, limit: int = 400) -> str:
    """The gist of an error for the record's `error` cell: its first lines, joined."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("hint:")
    ]
    text = " ".join(lines[:3])
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
