"""The `harness` command.

  harness run SUITE.yaml [--target NAME ...] [--emulator-only] [--out DIR] [--resume] [--no-cache]
                         [--update-baselines] [--quiet]
  harness targets        which targets exist and whether each is usable on this machine
  harness setup          provision PlatformIO for offline builds (called by ./dev.sh)

Exit codes (DESIGN.md §3): 0 all within baselines, 1 a regression, 2 bad input, 3 infrastructure.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import EXIT_INFRA, EXIT_INPUT, EXIT_OK, InfraError, InputError, NestbenchError
from harness.paths import ROOT


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
    run.add_argument("--out", type=Path, help="put the run folder under DIR (default results/runs)")
    run.add_argument("--resume", action="store_true", help="finish the latest interrupted run of this suite")
    run.add_argument("--no-cache", action="store_true", help="retrain and rebuild everything")
    run.add_argument(
        "--update-baselines",
        action="store_true",
        help="rewrite results/baselines/<suite>/<target>.csv from this run",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")

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
    )
    return run(options, console)


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
        if args.command == "targets":
            return _cmd_targets(console)
        return _cmd_setup(console)
    except InputError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_INPUT
    except InfraError as exc:
        err.print(f"[red]infrastructure error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_INFRA
    except NestbenchError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
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
