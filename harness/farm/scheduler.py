"""One worker per board: jobs (a built image to measure on a board kind) sharded over the boards of
their kind, or repeated on each of them.

- ``shard``: a job goes to the first board of its kind that is free (a queue per kind).
- ``repeat``: a job goes to every board of its kind (a queue per board); records keep a row per board.

A worker claims its board from the source for each job (a host-wide lock, or a labgrid place), so
two harness processes never share a board, and frees it after the job, also on failure. In shard
mode a worker claims its board *before* it takes a job: a board another process holds keeps no job
waiting while a free board of the kind could run it (a worker that finds its board busy lets an idle
one step in). A job that fails on a board records that board's rows as failed with the board ID and
the run carries on; in shard mode the job then goes back to the queue for the kind's boards that
have not tried it, and rows measured there replace the failed ones. A board whose jobs fail for
board reasons (flash error, no reply, busy beyond the wait bound) `max_failures` times in a row sits
out the rest of the run; its jobs go to the other boards of its kind (shard) or fail at once naming
the board (repeat). Firmware faults do not count against a board.

A kind with no board in the source runs on one local instance when it is an emulator (nothing to
lock), and fails its jobs with the reason otherwise.

`stop` (Ctrl-C, SIGTERM) stops every worker: waits are abandoned, the serial links of running sessions
are closed so blocked reads end at once, and every claim is freed by its context. Interrupted jobs
record nothing: ``--resume`` measures them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import InfraError
from harness.farm.boards import LOCAL, Board, BoardSource, Claim, local_board, local_claim
from harness.farm.locks import Stopped

SHARD, REPEAT = "shard", "repeat"
MODES = (SHARD, REPEAT)

# What a job's run reports about the board: its part went fine (or the firmware was at fault, which
# does not count against the board), or it failed for a reason that may be the board's.
OK, FIRMWARE, BOARD = "ok", "firmware", "board"


@dataclass(frozen=True)
class Verdict:
    status: str  # OK | FIRMWARE | BOARD
    reason: str = ""  # a failure's first line: for the log and for why a board sits out the run


@dataclass
class Job:
    kind: str  # target name
    label: str  # for logs, e.g. "nested (nested)"
    run: Callable[[Board, Claim, WorkerContext], Verdict]
    fail: Callable[[Board | None, str], None]  # record the job's rows as failed on a board
    boards: frozenset[str] | None = None  # repeat mode: the boards still to run it (None: all)
    tried: set[str] = field(default_factory=set)  # shard mode: boards it failed on for board reasons


class WorkerContext:
    """What a running job may use: the stop flag, log lines, and `watch` to register an open serial
    link that `stop` closes (so a blocked read ends at once)."""

    def __init__(self, board: Board, stop: threading.Event, say: Callable[[str], None]) -> None:
        self.board = board
        self.stop = stop
        self._say = say
        self._watched: list[Any] = []
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        self._say(text)

    @contextlib.contextmanager
    def watch(self, port: Any) -> Iterator[None]:
        with self._lock:
            self._watched.append(port)
        if self.stop.is_set():  # the stop came while the session started: end it now
            with contextlib.suppress(Exception):
                port.close()
        try:
            yield
        finally:
            with self._lock:
                self._watched.remove(port)

    def abort(self) -> None:
        with self._lock:
            watched = list(self._watched)
        for port in watched:
            with contextlib.suppress(Exception):
                port.close()


@dataclass
class _Worker:
    board: Board
    ctx: WorkerContext
    queue: deque[Job] = field(default_factory=deque)  # repeat mode
    thread: threading.Thread | None = None
    failures: int = 0
    benched: str = ""  # why the board sits out the rest of the run ("" = it works)
    busy: bool = False  # claiming its board or running a job
    blocked: bool = False  # claiming a board that another job holds
    job: Job | None = None  # the job it runs
    # Set to abandon the claim under way: the run stops, or other boards took every job it could run.
    abandon: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)  # its thread has ended


@dataclass
class _Outcome:
    verdict: str  # OK | FIRMWARE | BOARD
    reason: str = ""
    job: Job | None = None
    retry: bool = False  # shard mode: another board of the kind may run the job


_IDLE = _Outcome(OK)  # claimed the board, but another board took the last job meanwhile


class Scheduler:
    def __init__(
        self,
        source: BoardSource | None,
        kinds: list[str],
        *,
        is_emulator: Callable[[str], bool],
        mode: str = SHARD,
        wait_s: float = 3600.0,
        max_failures: int = 2,
        say: Callable[[str], None] = print,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"farm mode must be one of {MODES}, not {mode!r}")
        self.source = source
        self.mode = mode
        self.wait_s = wait_s
        self.max_failures = max_failures
        self._say = say
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._closed = False
        self._kind_queues: dict[str, deque[Job]] = {k: deque() for k in kinds}
        self.sessions: list[dict[str, Any]] = []  # the timeline, for run.json
        self.waits: list[dict[str, Any]] = []
        listed = source.boards() if source is not None else []
        self.workers: dict[str, list[_Worker]] = {}
        self.missing: dict[str, str] = {}  # kind -> why it has no board
        for kind in kinds:
            boards = [b for b in listed if b.kind == kind]
            if not boards and is_emulator(kind):
                boards = [local_board(kind)]
            if not boards:
                where = source.name if source is not None else "the board source"
                self.missing[kind] = f"no board of kind {kind} in {where}"
            self.workers[kind] = [self._worker(b) for b in boards]

    def _worker(self, board: Board) -> _Worker:
        def say(text: str) -> None:
            self._say(f"  [{board.label}] {text}")

        return _Worker(board=board, ctx=WorkerContext(board, self.stopping, say))

    @property
    def boards(self) -> list[Board]:
        return [w.board for ws in self.workers.values() for w in ws]

    def boards_of(self, kind: str) -> list[Board]:
        return [w.board for w in self.workers.get(kind, [])]

    # -- submitting ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job` for its kind's boards (failing it at once where no board can take it)."""
        failed_now: list[tuple[Board | None, str]] = []
        with self._cond:
            workers = self.workers.get(job.kind, [])
            if job.kind in self.missing:
                failed_now.append((None, self.missing[job.kind]))
            elif self.mode == SHARD:
                alive = [w for w in workers if not w.benched]
                if alive:
                    self._kind_queues[job.kind].append(job)
                else:
                    failed_now.append((None, self._none_left(job.kind)))
            else:
                for w in workers:
                    if job.boards is not None and w.board.id not in job.boards:
                        continue
                    if w.benched:
                        failed_now.append((w.board, _about(w.board, w.benched)))
                    else:
                        w.queue.append(job)
            self._start_threads()
            self._cond.notify_all()
        for board, why in failed_now:
            job.fail(board, why)

    def _none_left(self, kind: str) -> str:
        why = "; ".join(f"{w.board.label}: {w.benched}" for w in self.workers.get(kind, []))
        return f"no usable board of kind {kind} left ({why})"

    def _start_threads(self) -> None:
        for ws in self.workers.values():
            for w in ws:
                if w.thread is None:
                    w.thread = threading.Thread(
                        target=self._loop, args=(w,), name=f"board-{w.board.label}", daemon=True
                    )
                    w.thread.start()

    # -- finishing ----------------------------------------------------------------------------------

    def finish(self, poll_s: float = 0.2) -> None:
        """No more jobs: wait until every queued job has run (Ctrl-C still reaches the caller)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # Waits on the workers' own events, not Thread.join: a KeyboardInterrupt inside join marks
        # a running thread as stopped on Python 3.11 (CPython gh-90882), and `stop` would then not
        # wait for it.
        for w in [w for ws in self.workers.values() for w in ws]:
            while w.thread is not None and not w.done.wait(poll_s):
                pass

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop every worker now (Ctrl-C, SIGTERM) and free every board, waiting at most `grace_s`."""
        self.stopping.set()
        with self._cond:
            self._closed = True
            all_workers = [w for ws in self.workers.values() for w in ws]
            for w in all_workers:
                w.abandon.set()
            self._cond.notify_all()
        for w in all_workers:
            w.ctx.abort()
        deadline = time.monotonic() + grace_s
        for w in all_workers:
            if w.thread is not None:
                w.done.wait(max(0.0, deadline - time.monotonic()))
        if self.source is not None:
            self.source.close()

    # -- a worker -----------------------------------------------------------------------------------
    # Under `_cond`: the queues, every worker's busy/blocked/job/benched/failures.

    def _takeable(self, w: _Worker) -> list[Job]:
        if self.mode == REPEAT:
            return list(w.queue)
        return [job for job in self._kind_queues[w.board.kind] if w.board.id not in job.tried]

    def _peers(self, w: _Worker) -> list[_Worker]:
        return [o for o in self.workers[w.board.kind] if o is not w]

    def _has_work(self, w: _Worker) -> bool:
        takeable = len(self._takeable(w))
        if self.mode == REPEAT:
            return takeable > 0
        # Jobs for the workers already claiming a free board are theirs: claiming too would only
        # take and free the board again. A worker blocked on a busy board leaves its job to others.
        claiming = sum(1 for o in self._peers(w) if o.busy and o.job is None and not o.blocked)
        return takeable > claiming

    def _await_work(self, w: _Worker) -> bool:
        """Wait until `w` has a job to claim its board for (True), or will get none (False)."""
        with self._cond:
            while True:
                if self.stopping.is_set() or w.benched:
                    return False
                if self._has_work(w):
                    w.busy = True
                    w.abandon = threading.Event()
                    return True
                # A busy peer of a shard may still hand a job back (it failed on its board).
                if self._closed and (self.mode == REPEAT or not any(o.busy for o in self._peers(w))):
                    return False
                self._cond.wait()

    def _pop(self, w: _Worker) -> Job | None:
        with self._cond:
            w.blocked = False
            if self.mode == REPEAT:
                job = w.queue.popleft() if w.queue else None
            else:
                queue = self._kind_queues[w.board.kind]
                job = next((j for j in queue if w.board.id not in j.tried), None)
                if job is not None:
                    queue.remove(job)
                    self._release_blocked(w.board.kind)
            w.job = job
            return job

    def _release_blocked(self, kind: str) -> None:
        """Shard: a worker still waiting for its busy board gives up once no queued job is left for it
        (other boards took them), so a run never waits on a board it no longer needs."""
        for o in self.workers[kind]:
            if o.blocked and o.job is None and not self._takeable(o):
                o.abandon.set()

    def _loop(self, w: _Worker) -> None:
        try:
            while self._await_work(w):
                try:
                    outcome = self._turn(w)
                    if outcome is not None:
                        self._account(w, outcome)
                finally:
                    with self._cond:
                        w.busy = w.blocked = False
                        w.job = None
                        self._cond.notify_all()
                if outcome is None:  # stopped
                    break
            if w.benched:
                self._drain_benched(w)
        finally:
            w.done.set()

    def _claim(self, w: _Worker) -> contextlib.AbstractContextManager[Claim]:
        if w.board.source == LOCAL or self.source is None:
            return local_claim()

        def on_wait(text: str) -> None:
            with self._cond:
                if not w.blocked:
                    w.blocked = True
                    self._cond.notify_all()  # an idle board of the kind may take the job
                if self.mode == SHARD and not self._takeable(w):
                    w.abandon.set()  # the jobs went to other boards before this one found its busy
            w.ctx.say(text)

        return self.source.claim(w.board, wait_s=self.wait_s, stop=w.abandon, on_wait=on_wait)

    def _turn(self, w: _Worker) -> _Outcome | None:
        """Claim `w`'s board and run a job on it: the outcome, or None when the run is stopping."""
        board = w.board
        started = time.time()
        job: Job | None = None
        entry: dict[str, Any] = {"board": board.id, "kind": board.kind}
        try:
            with self._claim(w) as claim:
                job = self._pop(w)
                if job is None:
                    return _IDLE
                if self.stopping.is_set():
                    return None  # not started: --resume runs it
                entry["job"] = job.label
                if claim.waited_s >= 1.0:
                    w.ctx.say(f"got the board after waiting {claim.waited_s:.1f} s")
                    with self._cond:
                        self.waits.append(
                            {"board": board.id, "job": job.label, "waited_s": round(claim.waited_s, 2)}
                        )
                entry["start"] = _stamp(time.time())
                w.ctx.say(f"{job.label}: start")
                verdict = job.run(board, claim, w.ctx)
                entry["end"] = _stamp(time.time())
        except Stopped:
            return None if self.stopping.is_set() else _IDLE  # or the wait became pointless
        except InfraError as exc:  # the board could not be claimed (busy too long, place unusable)
            if self.stopping.is_set():
                return None
            reason = str(exc).splitlines()[0]
            if job is None:
                return self._claim_failed(w, reason, str(exc), started)
            w.ctx.say(f"{job.label}: FAILED: {reason}")
            job.fail(board, _about(board, str(exc)))
            self._note(entry, started, BOARD)
            return _Outcome(BOARD, reason, job, retry=True)
        except BaseException as exc:
            if self.stopping.is_set():
                return None  # a link closed under a running session by `stop`
            # A bug: the job's rows fail with the traceback, the other jobs still run.
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:]
            w.ctx.say(f"{job.label if job else 'claim'}: internal error: {exc!r}")
            if job is None:
                return self._claim_failed(w, repr(exc), f"internal error (a nestbench bug): {text}", started)
            job.fail(board, f"board {board.label}: internal error (a nestbench bug): {text}")
            self._note(entry, started, BOARD)
            return _Outcome(BOARD, repr(exc), job)
        if self.stopping.is_set():
            return None
        self._note(entry, started, verdict.status)
        return _Outcome(verdict.status, f"{job.label}: {verdict.reason or 'failed'}", job, retry=True)

    def _claim_failed(self, w: _Worker, reason: str, text: str, started: float) -> _Outcome:
        """The board could not be claimed (busy beyond the wait bound, place unusable) and no job was
        taken yet. A repeat job waits for this very board: the next one fails naming it. A shard job
        waits only when no other board of the kind can run it."""
        w.ctx.say(f"FAILED to claim the board: {reason}")
        with self._cond:
            self.waits.append(
                {
                    "board": w.board.id,
                    "job": "",
                    "waited_s": round(time.time() - started, 2),
                    "failed": reason,
                }
            )
            others = [o for o in self._peers(w) if not o.benched]
            job = None
            if self.mode == REPEAT or not others:
                takeable = self._takeable(w)
                if takeable:
                    job = takeable[0]
                    if self.mode == REPEAT:
                        w.queue.remove(job)
                    else:
                        self._kind_queues[w.board.kind].remove(job)
                        self._release_blocked(w.board.kind)
        if job is not None:
            job.fail(w.board, _about(w.board, text))
        return _Outcome(BOARD, reason)

    def _note(self, entry: dict[str, Any], started: float, verdict: str) -> None:
        entry.setdefault("start", _stamp(started))
        entry.setdefault("end", _stamp(time.time()))
        entry["status"] = verdict
        with self._cond:
            self.sessions.append(entry)

    def _account(self, w: _Worker, outcome: _Outcome) -> None:
        if outcome is _IDLE:
            return
        if outcome.verdict != BOARD:
            w.failures = 0
            return
        with self._cond:
            w.failures += 1
            if w.board.source != LOCAL and w.failures >= self.max_failures:
                n = w.failures
                w.benched = (
                    f"taken out of this run after {n} board failure{'s' * (n != 1)} in a row "
                    f"(last: {outcome.reason})"
                )
            job = outcome.job
            if self.mode == SHARD and job is not None and outcome.retry:
                job.tried.add(w.board.id)
                if any(not o.benched and o.board.id not in job.tried for o in self._peers(w)):
                    self._kind_queues[w.board.kind].appendleft(job)  # it has waited longest
                    w.ctx.say(f"{job.label}: handed to another board of kind {w.board.kind}")
            self._cond.notify_all()
        if w.benched:
            w.ctx.say(w.benched)

    def _drain_benched(self, w: _Worker) -> None:
        """Fail what only this board could run: its own queue (repeat), or its kind's queue when no
        board of the kind is left (shard)."""
        failed: list[tuple[Job, Board | None, str]] = []
        with self._cond:
            if self.mode == REPEAT:
                failed = [(job, w.board, _about(w.board, w.benched)) for job in w.queue]
                w.queue.clear()
            elif all(o.benched for o in self.workers[w.board.kind]):
                queue = self._kind_queues[w.board.kind]
                failed = [(job, None, self._none_left(w.board.kind)) for job in queue]
                queue.clear()
        for job, board, why in failed:
            job.fail(board, why)


def _about(board: Board, text: str) -> str:
    """A failure text that names the board."""
    return text if f"board {board.label}" in text else f"board {board.label}: {text}"


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def max_concurrency(sessions: list[dict[str, Any]]) -> int:
    """The most boards that ran sessions at the same time, from a timeline of ISO start/end stamps.
    A board runs one session at a time (its lock), so only other boards' sessions can overlap one: a
    session that ends as another starts does not overlap it, and sessions shorter than the stamps'
    resolution still count."""
    spans = [
        (str(s.get("board", "")), dt.datetime.fromisoformat(s["start"]), dt.datetime.fromisoformat(s["end"]))
        for s in sessions
        if "start" in s and "end" in s
    ]
    return max(
        (
            1 + len({other for other, a, b in spans if other != board and a <= start < b})
            for board, start, _ in spans
        ),
        default=0,
    )


__all__ = [
    "BOARD",
    "FIRMWARE",
    "MODES",
    "OK",
    "REPEAT",
    "SHARD",
    "Job",
    "Scheduler",
    "WorkerContext",
    "max_concurrency",
]
