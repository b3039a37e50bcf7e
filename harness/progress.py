"""Progress of a run's long stages (training, builds, inference sweeps) and its log lines.

Three modes, chosen once per run:

- ``rich``: the console is a terminal. Each long stage shows a transient rich progress bar (it
  disappears when the stage ends, so the final screen is the log lines and the summary).
- ``plain``: not a terminal (CI logs, pipes). No bars: a stage prints a plain line when it passes a
  quarter of its work, once it has run `plain_interval` seconds, so long stages show life without
  flooding the log; short ones print nothing.
- ``quiet`` (``--quiet``): no progress and no log lines; only the summary and errors.

Stages report through callbacks of the shapes the stages already offer: a trainer's
``(fraction, status)`` and `measure.run_session`'s ``(done, total)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

RICH, PLAIN, QUIET = "rich", "plain", "quiet"


class Task:
    """One running stage. `update` takes the work done so far (any unit; `total` sets the scale)."""

    def __init__(self, owner: Progress, label: str, total: float | None) -> None:
        self._owner = owner
        self.label = label
        self.total = total
        self.completed = 0.0
        self._rich: RichProgress | None = None
        self._rich_id: TaskID | None = None
        self._started = time.monotonic()
        self._quarter = 0  # quarters announced in plain mode

    def update(self, completed: float, total: float | None = None, status: str = "") -> None:
        if total is not None:
            self.total = total
        self.completed = completed
        if self._rich is not None and self._rich_id is not None:
            self._rich.update(
                self._rich_id, completed=completed, total=self.total, status=status, refresh=False
            )
        elif self._owner.mode == PLAIN and self.total:
            quarter = int(4 * min(completed / self.total, 1.0))
            now = time.monotonic()
            if 0 < quarter < 4 and quarter > self._quarter:
                self._quarter = quarter
                if now - self._started >= self._owner.plain_interval:
                    detail = f" {status}" if status else ""
                    self._owner.say(f"  {self.label}: {quarter * 25}%{detail}")

    def fraction_callback(self) -> Callable[[float, str], None]:
        """For trainers: ``progress(fraction in [0, 1], status text)``."""

        def report(fraction: float, status: str = "") -> None:
            self.update(fraction, 1.0, status)

        return report

    def count_callback(self) -> Callable[[int, int], None]:
        """For `measure.run_session`: ``progress(done, total)``."""

        def report(done: int, total: int) -> None:
            self.update(done, total, f"{done}/{total}")

        return report


class Progress:
    """Log lines and progress bars of one run, on one console."""

    def __init__(self, console: Console, *, quiet: bool = False, plain_interval: float = 2.0) -> None:
        self.console = console
        self.plain_interval = plain_interval
        if quiet:
            self.mode = QUIET
        elif console.is_terminal and not console.is_dumb_terminal:
            self.mode = RICH
        else:
            self.mode = PLAIN

    def say(self, text: str, *, markup: bool = False) -> None:
        """A log line (hidden with --quiet). `markup=True` lets rich styles through."""
        if self.mode != QUIET:
            self.console.print(text, markup=markup, highlight=False, soft_wrap=not markup)

    def error(self, text: str, *, markup: bool = False) -> None:
        """A line that is shown in every mode: a failed entry, a target that cannot be used."""
        self.console.print(text, markup=markup, highlight=False, soft_wrap=not markup)

    @contextlib.contextmanager
    def task(self, label: str, total: float | None = None) -> Iterator[Task]:
        """A stage with a progress bar on a terminal (a spinner while `total` is unknown)."""
        task = Task(self, label, total)
        if self.mode != RICH:
            yield task
            return
        bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=True,
        )
        with bar:
            task._rich = bar
            task._rich_id = bar.add_task(label, total=total, status="")
            yield task


__all__ = ["PLAIN", "QUIET", "RICH", "Progress", "Task"]
