"""The `harness` command.

  harness run SUITE.yaml [--target NAME ...] [--emulator-only] [--out DIR] [--resume] [--no-cache]
                         [--update-baselines] [--baselines DIR] [--junit PATH] [--summary-json PATH]
                         [--quiet]
  harness report RUN [RUN ...] [--out DIR] [--quiet]
                         render saved runs again (plots, report.md/html); with several runs, also
                         compare them side by side
  harness targets        which targets exist and whether each is usable on this machine
  harness setup          provision PlatformIO for offline builds (called by ./dev.sh)

Exit codes (DESIGN.md §3): 0 all within baselines, 1 a regression, 2 bad input, 3 infrastructure.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import interrupts
from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_OK, InfraError, InputError, NestbenchError
from harness.paths import ROOT

COMPARE_ROOT = ROOT / "results" / "compare"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark nested sparse ConvNets on MCUs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite end to end")
    run.add_argument("suite", type=Path, help="suite file (YAML)")
    run.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME",
        help="run only on this target (repeatable); default: the suite's targets",
    )
    run.add_argument(
        "--emulator-only",
        action="store_true",
        help="CI mode: only emulator targets usable here; fails if there is none",
    )
    run.add_argument(
        "--out", type=Path, metavar="DIR", help="put the run folder under DIR (default results/runs)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish the latest interrupted run of this suite (refused if the suite or targets changed)",
    )
    run.add_argument("--no-cache", action="store_true", help="retrain and rebuild everything")
    run.add_argument(
        "--update-baselines",
        action="store_true",
        help="rewrite <baselines>/<suite>/<target>.csv from this run and show what changed",
    )
    run.add_argument(
        "--baselines",
        type=Path,
        metavar="DIR",
        help="folder of stored baselines, <DIR>/<suite>/<target>.csv (default results/baselines)",
    )
    run.add_argument("--junit", type=Path, metavar="PATH", help="also write the JUnit XML here")
    run.add_argument("--summary-json", type=Path, metavar="PATH", help="also write the JSON summary here")
    run.add_argument("--quiet", action="store_true", help="print only the summary and errors")
    farm = run.add_mutually_exclusive_group()
    farm.add_argument(
        "--hardware-map",
        type=Path,
        metavar="MAP",
        help="farm mode: run on the boards this YAML file lists, one worker and one lock per board",
    )
    farm.add_argument(
        "--labgrid",
        metavar="COORDINATOR[:PORT]",
        help="farm mode: run on the places of this labgrid coordinator tagged kind=<target>",
    )
    run.add_argument(
        "--board-wait",
        type=_positive_seconds,
        metavar="SECONDS",
        help="farm mode: how long a job waits for a busy board (default: the suite's farm.board_wait_s)",
    )

    rep = sub.add_parser(
        "report", help="render saved runs again; with several runs, compare them side by side"
    )
    rep.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN", help="run folders (the first is the reference)"
    )
    rep.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the comparison of several runs goes (default results/compare/<time>)",
    )
    rep.add_argument("--quiet", action="store_true", help="print only the paths written")

    sub.add_parser("targets", help="list targets and whether each is usable here")
    sub.add_parser("setup", help="provision PlatformIO for offline builds")
    return parser


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from harness.pipeline import RunOptions, run

    if not args.suite.is_file():
        raise InputError("no such suite file", file=args.suite)
    options = RunOptions(
        suite=args.suite,
        targets=args.target,
        emulator_only=args.emulator_only,
        out=args.out,
        resume=args.resume,
        no_cache=args.no_cache,
        update_baselines=args.update_baselines,
        quiet=args.quiet,
        baselines=args.baselines,
        junit=args.junit,
        summary_json=args.summary_json,
        hardware_map=args.hardware_map,
        labgrid=args.labgrid,
        board_wait_s=args.board_wait,
    )
    with interrupts.stop_on_signals():
        return run(options, console)


def _write_error_outputs(args: argparse.Namespace, exc: NestbenchError, code: int) -> None:
    """CI asked for a JUnit file or a summary but the run stopped before producing records: write
    documents that say why, so the CI job shows the error instead of a missing report."""
    if args.command != "run" or not (args.junit or args.summary_json):
        return
    from harness import ci_outputs

    suite = args.suite.stem if args.suite else None
    with contextlib.suppress(OSError):
        if args.junit:
            ci_outputs.write_junit(args.junit, ci_outputs.error_junit(suite, str(exc), code))
        if args.summary_json:
            ci_outputs.write_summary(args.summary_json, ci_outputs.error_summary(code, str(exc), suite=suite))


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from harness import report

    runs = [report.load_run(path) for path in args.runs]  # every folder is checked before any writing
    for run in runs:
        files = report.rerender(run)
        if not args.quiet:
            report.print_summary(console, run.frame, run.comparisons)
        console.print(
            f"report: {files.html} ({files.md.name}, {len(files.plot_paths())} plots)",
            markup=False,
            soft_wrap=True,
        )
    if len(runs) > 1:
        folder = args.out or report.default_compare_folder(COMPARE_ROOT)
        if folder.exists() and not folder.is_dir():
            raise InputError("not a folder", file=folder, field="--out")
        if not args.quiet:
            report.print_comparison(console, runs)
        compared = report.compare_runs(runs, folder)
        console.print(
            f"comparison: {compared.html} ({compared.md.name}, {len(compared.plots)} plots)",
            markup=False,
            soft_wrap=True,
        )
    return EXIT_OK


def _cmd_targets(console: Console) -> int:
    from harness.targets import targets_report

    table = Table(title="targets (platformio.ini)")
    for col in ("target", "backend", "cycles", "usable", "why / why not"):
        table.add_column(col)
    for target, avail in targets_report(ROOT):
        table.add_row(
            target.name,
            target.backend,
            target.cycle_source,
            "[green]yes[/]" if avail.usable else "[red]no[/]",
            avail.reason,
        )
    console.print(table)
    return EXIT_OK


def _cmd_setup(console: Console) -> int:
    from harness.provision import provision

    provision(ROOT)
    console.print("PlatformIO is provisioned for offline builds.")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        if args.command == "run":
            return _cmd_run(args, console)
        if args.command == "report":
            return _cmd_report(args, console)
        if args.command == "targets":
            return _cmd_targets(console)
        return _cmd_setup(console)
    except InputError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        _write_error_outputs(args, exc, EXIT_INPUT)
        return EXIT_INPUT
    except InfraError as exc:
        err.print(f"[red]infrastructure error:[/] {escape(str(exc))}", soft_wrap=True)
        _write_error_outputs(args, exc, EXIT_INFRA)
        return EXIT_INFRA
    except NestbenchError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        _write_error_outputs(args, exc, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted: `harness run SUITE --resume` finishes the run")
        return EXIT_INFRA
    except Exception:  # a bug in the harness itself: show it, but keep the documented exit code
        err.print("[red]internal error[/] (a bug in nestbench; please report it with this traceback):")
        err.print(traceback.format_exc(), markup=False)
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
