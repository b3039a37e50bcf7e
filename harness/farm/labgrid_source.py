"""Boards from a labgrid coordinator: the multi-host farm (docs/farm_labgrid.md).

Every place tagged ``kind=<target name>`` is a board of that kind (its name is the board ID in the
records). A worker claims its place the labgrid way: a reservation filtered by the place's tags
(``kind`` and its ``name``), polled until the coordinator allocates it — while another job holds the
place, the worker says who and waits, at most the wait bound — then the place is acquired, used and
released, and the reservation cancelled, also on failure and on Ctrl-C / SIGTERM (`close` is the
safety net for anything still held). A run killed by SIGKILL cannot release its places: every place
a process holds acquired is marked in a host-wide lock (`_PlaceMarks`), which the kernel frees when the
process dies, and the next run on the host releases the places that dead runs left acquired and
cancels their reservations.

Deploying to a claimed place uses labgrid's own drivers on the place's resources: the flash driver
its resources call for (`harness.farm.labgrid_drivers.make_flasher`: OpenOCD, pyOCD through a flash
script, or a QEMU stand-in's flasher) and labgrid's SerialDriver on its `NetworkSerialPort` (ser2net
rfc2217, or raw TCP); the protocol client then talks over that serial object like over any other.

The client runs labgrid's gRPC session (`labgrid.remote.client.ClientSession`) on an event loop in a
thread of its own; workers submit coroutines to it, so one session serves every worker, and the
session's view of places and resources is only ever read on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness import targets
from harness.backends.base import Backend, DeviceLink
from harness.errors import InfraError, InputError
from harness.farm.boards import Board, BoardSource, Claim
from harness.farm.locks import BoardBusy, BoardLock, Stopped, default_lock_dir, file_safe, holder_text

KIND_TAG = "kind"
DEFAULT_PORT = 20408
_POLL_S = 0.5
_RPC_TIMEOUT_S = 30.0
_REPEAT_NOTE_S = 30.0  # a long wait says again whom it waits for, this often
_READY_S = 15.0  # after acquiring: how long the exporter may take to start its resources (ser2net)
INSTALL_HINT = "install labgrid into the environment: .venv/bin/pip install labgrid==26.0.1"
T = TypeVar("T")

# (name, class, entry) of one resource of an acquired place; the entry is the session's
# `labgrid.remote.common.ResourceEntry`, which the loop keeps current (availability, parameters)
Resource = tuple[str, str, Any]


def parse_address(text: str) -> str:
    """``HOST[:PORT]`` (PORT defaults to labgrid's 20408); InputError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"expected COORDINATOR[:PORT], got {text!r}", field="--labgrid")
    return f"{host}:{int(port)}"


class _LabgridLogFilter(logging.Filter):
    """labgrid's client logs its gRPC troubles on the root logger, with tracebacks: keep one line
    (prefixed ``labgrid:``); our own error says what it means for the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "labgrid" in record.pathname.replace("\\", "/").split("/"):
            if record.levelno < logging.ERROR:
                return False
            record.msg = f"labgrid: {record.getMessage()}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_LOG_FILTER = _LabgridLogFilter()


class LabgridSource(BoardSource):
    def __init__(
        self,
        address: str,
        all_targets: Mapping[str, targets.Target],
        *,
        connect_s: float = 15.0,
        command: str = "",
    ) -> None:
        try:
            from labgrid.remote.client import ClientSession
        except ImportError as exc:
            raise InfraError(f"labgrid is not importable: {exc}", hint=INSTALL_HINT) from exc
        logging.getLogger().addFilter(_LOG_FILTER)
        self.address = parse_address(address)
        self.name = f"labgrid coordinator {self.address}"
        self.all_targets = all_targets
        self.command = command
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="labgrid-client", daemon=True)
        self._thread.start()
        self._held: dict[str, dict[str, Any]] = {}  # place -> {"token": ..., "acquired": bool}
        self._held_lock = threading.Lock()
        self._closed = False
        self.ignored: dict[str, str] = {}  # place -> why it is not a board

        async def start() -> Any:
            session = ClientSession(self.address, self._loop)
            await session.start()
            return session

        try:
            self._session = self._call(start(), timeout=connect_s)
        except Exception as exc:
            self._stop_loop()
            detail = exc.message if isinstance(exc, InfraError) else str(exc) or type(exc).__name__
            raise InfraError(
                f"cannot reach the labgrid coordinator at {self.address}: {detail}",
                hint="is `labgrid-coordinator --listen HOST:PORT` running there, and reachable from here?",
            ) from None
        from labgrid.resource.remote import RemotePlaceManager

        # labgrid's remote USB resources (NetworkUSBDebugger, NetworkUSBFlashableDevice) are managed:
        # the process-wide RemotePlaceManager keeps them current from a client session and its loop,
        # which labgrid's RemotePlace would start itself. It gets ours (running in our thread).
        manager = RemotePlaceManager.get()
        manager.session, manager.loop = self._session, self._loop
        # The coordinator knows a client as "host/user" (LG_HOSTNAME, LG_USERNAME override them).
        self.user = f"{self._session.gethostname()}/{self._session.getuser()}"
        self._marks = _PlaceMarks(self.address, self.user)
        self._notices = self._release_places_of_dead_runs()

    # -- the event loop -------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = _RPC_TIMEOUT_S) -> T:
        if self._closed:
            coro.close()
            raise InfraError("the labgrid session is closed", hint="a nestbench bug: please report it")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise InfraError(
                f"the labgrid coordinator at {self.address} did not answer within {timeout:g} s",
                hint="check the coordinator and the network",
            ) from None

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """`fn()` on the session's loop: the only thread that changes the session's places."""

        async def run() -> T:
            return fn()

        return self._call(run())

    def _rpc(self, what: str, method: str, request: Any) -> Any:
        """One coordinator call, then a sync so the session's view of places is current."""
        import grpc

        async def call() -> Any:
            answer = await getattr(self._session.stub, method)(request)
            await self._session.sync_with_coordinator()
            return answer

        try:
            return self._call(call())
        except grpc.aio.AioRpcError as exc:
            raise InfraError(
                f"labgrid: {what} failed: {exc.details()}", hint="see the coordinator's log"
            ) from None

    def _sync(self) -> None:
        self._call(self._session.sync_with_coordinator())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    # -- boards ---------------------------------------------------------------------------------------

    def boards(self) -> list[Board]:
        def snapshot() -> list[tuple[str, dict[str, str], list[tuple[str, str, str, str, dict[str, Any]]]]]:
            return [
                (name, dict(place.tags), self._matched(place))
                for name, place in sorted(self._session.places.items())
            ]

        out = []
        for name, tags, matched in self._on_loop(snapshot):
            kind = tags.get(KIND_TAG)
            if kind is None:
                self.ignored[name] = f"no {KIND_TAG} tag"
                continue
            if kind not in self.all_targets:
                self.ignored[name] = f"{KIND_TAG}={kind} is not a target of platformio.ini"
                continue
            exporters = sorted({exporter for exporter, *_ in matched})
            serial = next(
                (_serial_url(params) for _, _, cls, _, params in matched if cls == "NetworkSerialPort"), None
            )
            out.append(
                Board(
                    id=name,
                    kind=kind,
                    source="labgrid",
                    host=", ".join(exporters) or None,  # None: no exporter offers its resources now
                    serial=serial,
                    options=tags,
                )
            )
        return out

    def _matched(self, place: Any) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """(exporter, group, class, name, params) of every exported resource the place matches."""
        out = []
        for exporter, groups in sorted(self._session.resources.items()):
            for group, entries in sorted(groups.items()):
                for name, entry in sorted(entries.items()):
                    cls = entry.data.get("cls")  # a deleted resource keeps an empty entry
                    if cls and place.hasmatch((exporter, group, cls, name)):
                        out.append((exporter, group, cls, name, dict(entry.data.get("params") or {})))
        return out

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "user": self.user, "ignored_places": dict(self.ignored)}

    def notices(self) -> list[str]:
        return list(self._notices)

    def _release_places_of_dead_runs(self) -> list[str]:
        """Release the places that runs of this host and user left acquired when they died."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        said = []
        for mark in self._marks.left_by_dead_runs():
            place = str(mark.holder.get("board", ""))
            if self._acquirer(place) != self.user:
                mark.lock.release()  # freed by hand since, or it died before acquiring the place
                continue
            try:
                # The dead run's reservation of the place: acquired, it would not expire, and once
                # the place is released it would still keep it from others for a minute.
                tokens = self._reservations_of(place)
                # Only if it is still acquired by this host and user: the coordinator checks that.
                request = pb.ReleasePlaceRequest(placename=place, fromuser=self.user)
                self._rpc(f"releasing place {place}", "ReleasePlace", request)
                for token in tokens:
                    with contextlib.suppress(InfraError):  # expired meanwhile
                        self._rpc(
                            "cancelling a reservation",
                            "CancelReservation",
                            pb.CancelReservationRequest(token=token),
                        )
            except InfraError as exc:
                said.append(f"place {place} may still be acquired by a run that died: {exc.message}")
                mark.lock.release(keep_holder=True)  # the next run tries again
                continue
            said.append(f"released place {place}: left acquired by {holder_text(mark.holder)}, which died")
            mark.lock.release()
        return said

    def _acquirer(self, place: str) -> str | None:
        """Who holds `place` acquired ("host/user"), as the coordinator last said; None: nobody."""

        def look() -> str | None:
            info = self._session.places.get(place)
            return None if info is None else info.acquired

        return self._on_loop(look)

    def _reservations_of(self, place: str) -> list[str]:
        """The tokens of this host and user's reservations that hold `place` allocated."""
        from labgrid.remote.common import Reservation
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        answer = self._rpc("listing reservations", "GetReservations", pb.GetReservationsRequest())
        found = [Reservation.from_pb2(r) for r in answer.reservations]
        return [
            r.token
            for r in found
            if r.owner == self.user and any(place in names for names in r.allocations.values())
        ]

    # -- claiming -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claim(
        self,
        board: Board,
        *,
        wait_s: float,
        stop: threading.Event,
        on_wait: Callable[[str], None],
    ) -> Iterator[Claim]:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        place = board.id
        filters = {KIND_TAG: board.kind, "name": place}
        request = pb.CreateReservationRequest(
            filters={"main": pb.Reservation.Filter(filter=filters)}, prio=0.0
        )
        token = self._rpc(f"reserving place {place}", "CreateReservation", request).reservation.token
        with self._held_lock:
            self._held[place] = {"token": token, "acquired": False}
        try:
            waited = self._wait_allocated(place, token, wait_s, stop, on_wait)
            # Marked before it is acquired, so a place of this host and user acquired by a process
            # that has died always has a mark to show it; only the instant between another run's
            # release and its unmarking is waited for.
            mark = self._marks.lock(place, command=self.command, run=self.run)
            mark.acquire(wait_s=_READY_S, stop=stop)
            with self._held_lock:
                self._held[place]["mark"] = mark
            self._rpc(f"acquiring place {place}", "AcquirePlace", pb.AcquirePlaceRequest(placename=place))
            with self._held_lock:
                self._held[place]["acquired"] = True
            claim = PlaceClaim(place, self._ready_resources(place, stop), dict(board.options))
            claim.waited_s = waited
            yield claim
        except BaseException:
            with contextlib.suppress(InfraError):  # the error in flight says more than a failed release
                self._free(place)
            raise
        try:
            self._free(place)
        except InfraError as exc:  # the job's figures stand; the place needs a hand
            on_wait(f"could not free place {place}: {exc.message} ({exc.hint})")

    def _wait_allocated(
        self, place: str, token: str, wait_s: float, stop: threading.Event, on_wait: Callable[[str], None]
    ) -> float:
        from labgrid.remote.common import Reservation, ReservationState
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        start = time.monotonic()
        told = -_REPEAT_NOTE_S
        while True:
            answer = self._rpc(
                f"polling the reservation of {place}",
                "PollReservation",
                pb.PollReservationRequest(token=token),
            )
            state = Reservation.from_pb2(answer.reservation).state
            if state in (ReservationState.allocated, ReservationState.acquired):
                return time.monotonic() - start
            if state is not ReservationState.waiting:
                raise InfraError(
                    f"labgrid: the reservation for place {place} became {state.name}",
                    hint="see the coordinator's log (`labgrid-client reservations`)",
                )
            waited = time.monotonic() - start
            if stop.is_set():
                raise Stopped(f"stopped while waiting for place {place}")
            holder = self._holder(place)
            if waited >= wait_s:
                raise BoardBusy(
                    f"place {place} stayed busy for {waited:.0f} s (the wait bound), {holder}",
                    hint="raise the bound with --board-wait or the suite's farm.board_wait_s; "
                    "`labgrid-client who` shows who holds which place",
                )
            if waited - told >= _REPEAT_NOTE_S:
                told = waited
                on_wait(f"place {place} is busy: {holder}; waiting up to {wait_s:g} s")
            stop.wait(_POLL_S)

    def _holder(self, place: str) -> str:
        def look() -> tuple[bool, str | None, str | None, float]:
            info = self._session.places.get(place)
            if info is None:
                return False, None, None, 0.0
            return True, info.acquired, info.reservation, float(info.changed)

        exists, acquired, reservation, changed = self._on_loop(look)
        if not exists:
            return "the place is gone from the coordinator"
        since = dt.datetime.fromtimestamp(changed).astimezone().isoformat(timespec="seconds")
        if acquired:
            return f"acquired by {acquired} since {since}"
        if reservation:
            return f"reserved for another job (reservation {reservation})"
        return "being allocated"

    def _resources(self, place: str) -> tuple[list[Resource], list[str]]:
        """The acquired place's resources, and what is not ready about them yet."""

        def get() -> tuple[list[Resource], list[str]]:
            entries = self._session.get_target_resources(self._session.places[place])
            resources, waiting = [], []
            for (name, cls), entry in sorted(entries.items()):
                resources.append((name, cls, entry))
                if not entry.avail:
                    waiting.append(f"{cls} {name} is not available on its exporter")
                elif cls == "NetworkSerialPort" and entry.args.get("port") is None:
                    waiting.append(f"{cls} {name} has no TCP port yet (ser2net starting)")
            return resources, waiting

        try:
            return self._on_loop(get)
        except InfraError:
            raise
        except Exception as exc:  # labgrid's ServerError/UserError: an exporter is gone, ...
            raise InfraError(
                f"labgrid: the resources of place {place}: {exc}", hint=f"`labgrid-client -p {place} show`"
            ) from None

    def _ready_resources(self, place: str, stop: threading.Event) -> list[Resource]:
        """The resources once the exporter has started them: an exporter starts ser2net for a USB
        serial port when the place is acquired and publishes its TCP port a moment later."""
        deadline = time.monotonic() + _READY_S
        while True:
            resources, waiting = self._resources(place)
            if not waiting:
                return resources
            if stop.is_set():
                raise Stopped(f"stopped while place {place} was getting ready")
            if time.monotonic() >= deadline:
                raise InfraError(
                    f"place {place}: " + "; ".join(waiting) + f" {_READY_S:g} s after acquiring it",
                    hint=f"`labgrid-client -p {place} show`; check the exporter's log on its host",
                )
            stop.wait(0.2)
            self._sync()

    def _free(self, place: str) -> None:
        """Release the place (if acquired) and cancel its reservation."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        with self._held_lock:
            held = self._held.pop(place, None)
        if held is None:
            return
        problems = []
        if held["acquired"]:
            try:
                self._rpc(f"releasing place {place}", "ReleasePlace", pb.ReleasePlaceRequest(placename=place))
            except InfraError as exc:
                problems.append(str(exc))
        with contextlib.suppress(InfraError):  # gone already when it expired
            self._rpc(
                "cancelling a reservation",
                "CancelReservation",
                pb.CancelReservationRequest(token=held["token"]),
            )
        mark = held.get("mark")
        if mark is not None:
            mark.release(keep_holder=bool(problems))  # still acquired: the next run releases it
        if problems:
            raise InfraError("; ".join(problems), hint=f"free it by hand: labgrid-client -p {place} release")

    def close(self) -> None:
        """Free every place still held and end the session (idempotent)."""
        if self._closed:
            return
        with self._held_lock:
            places = list(self._held)
        for place in places:
            with contextlib.suppress(InfraError):
                self._free(place)
        with contextlib.suppress(Exception):
            self._call(self._session.stop(), timeout=5.0)
        with contextlib.suppress(Exception):
            self._call(self._session.close(), timeout=5.0)
        self._closed = True
        self._stop_loop()

    def held(self) -> list[str]:
        """The places this source holds now (reserved or acquired)."""
        with self._held_lock:
            return sorted(self._held)


@dataclass
class _Mark:
    lock: BoardLock  # taken by this process
    holder: dict[str, Any]  # what the dead run left: place ("board"), pid, host, command, run, since


class _PlaceMarks:
    """Which places the processes of this host and user hold acquired on one coordinator: one
    `BoardLock` per place, held from just before the place is acquired until it is released. The
    kernel drops the lock of a process that dies, even by SIGKILL, and leaves its holder file: the
    mark of a place left acquired."""

    def __init__(self, address: str, user: str) -> None:
        # One folder per coordinator and user: each user's runs create their own marks there.
        self.folder = default_lock_dir() / file_safe(f"labgrid-{address}-{user}")

    def lock(self, place: str, *, command: str = "", run: str = "") -> BoardLock:
        return BoardLock(self.folder, place, command=command, run=run)

    def left_by_dead_runs(self) -> list[_Mark]:
        """The places whose holder died, each with its lock now taken by this process."""
        marks = []
        for path in sorted(self.folder.glob("*.holder.json")):
            try:
                place = json.loads(path.read_text(encoding="utf-8"))["board"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # gone meanwhile, or not a mark
            lock = self.lock(str(place))
            holder = lock.take_over_dead_holder() if lock.holder_path == path else None
            if holder is not None:
                marks.append(_Mark(lock, holder))
        return marks


def _forget(resources: list[Any]) -> None:
    """Take a finished session's resources off labgrid's process-wide resource manager."""
    from labgrid.resource.remote import RemotePlaceManager

    manager = RemotePlaceManager.get()
    for resource in resources:
        for registry in (manager.resources, manager.unmanaged_resources):
            with contextlib.suppress(ValueError):
                registry.remove(resource)


def _serial_url(params: Mapping[str, Any]) -> str | None:
    """Where a NetworkSerialPort is served, as a pyserial URL (its port may come only once ser2net
    runs, i.e. once the place is acquired)."""
    host, port = params.get("host"), params.get("port")
    scheme = "socket" if params.get("protocol") == "raw" else "rfc2217"
    return f"{scheme}://{host}:{port}" if host and port else (f"{scheme}://{host}" if host else None)


class PlaceClaim(Claim):
    def __init__(self, place: str, resources: list[Resource], tags: dict[str, str]) -> None:
        self.place = place
        self.resources = resources
        self.tags = tags

    def backend(self, target: targets.Target, root: Path, *, timeout_s: float) -> Backend:
        return LabgridBackend(self.place, self.resources, self.tags, target, timeout_s=timeout_s)


class LabgridBackend(Backend):
    """Deploys to an acquired place with labgrid's drivers and hands the serial port to the protocol."""

    kind = "labgrid"

    def __init__(
        self,
        place: str,
        resources: list[Resource],
        tags: Mapping[str, str],
        target: targets.Target,
        *,
        timeout_s: float,
    ) -> None:
        self.place = place
        self.resources = resources
        self.tags = dict(tags)
        self.target = target
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def session(self, elf: Path) -> Iterator[DeviceLink]:
        from harness.farm import labgrid_drivers

        if not elf.is_file():
            raise InfraError(f"firmware image {elf} does not exist", hint="build it first")
        from labgrid import Target

        made: list[Any] = []
        lg = Target(f"nestbench/{self.place}")
        try:
            # labgrid's process-wide state (step log, resource manager) is not thread-safe: one
            # worker at a time builds its place's resources, flashes and opens the serial port
            with labgrid_drivers.LABGRID_LOCK:
                classes, how, port = self._deploy(lg, elf, made)
            yield DeviceLink(
                port=port,
                description=f"labgrid place {self.place} ({how}) on {port.port}",
                diagnostics=lambda: self._diagnostics(lg, classes),
            )
        finally:
            with labgrid_drivers.LABGRID_LOCK:
                with contextlib.suppress(Exception):
                    lg.deactivate_all_drivers()
                _forget(made)

    def _deploy(self, lg: Any, elf: Path, made: list[Any]) -> tuple[set[str], str, Any]:
        """The place's resources on labgrid Target `lg` (`made` collects them), the image flashed,
        and its serial port open: (resource classes, how it was flashed, serial port)."""
        from labgrid.driver import SerialDriver
        from labgrid.factory import target_factory
        from labgrid.resource.common import ManagedResource
        from labgrid.resource.remote import RemotePlaceManager

        from harness.farm import labgrid_drivers

        manager = RemotePlaceManager.get()
        classes = set()
        for name, cls, entry in self.resources:
            try:
                resource = target_factory.make_resource(lg, cls, name, dict(entry.args))
            except Exception as exc:
                raise InfraError(
                    f"place {self.place}: labgrid cannot use its resource {cls} ({exc})",
                    hint="a resource class this harness does not know: check the exporter's config",
                ) from None
            # What labgrid's RemotePlace does with each resource of a place (RemotePlaceManager.
            # on_resource_added): the coordinator's entry keeps its availability and parameters.
            resource.avail = bool(entry.avail)
            resource.extra = dict(entry.extra or {})  # proxy information
            resource._remote_entry = entry
            if not isinstance(resource, ManagedResource):
                manager.unmanaged_resources.append(resource)
            made.append(resource)
            classes.add(cls)
        pyocd_target = self.target.options.get("custom_pyocd_target", "")
        how = "no flasher"
        try:
            try:
                flasher, how = labgrid_drivers.make_flasher(lg, classes, self.tags, pyocd_target)
            except ValueError as exc:  # the place exports nothing to flash with
                raise InfraError(
                    f"place {self.place}: {exc}", hint="add the probe (or stand-in flasher) to the place"
                ) from None
            flasher.load(str(elf))
        except InfraError:
            raise
        except Exception as exc:  # activating the driver (resources unavailable) or the flash tool
            raise InfraError(
                f"flashing {elf.name} on place {self.place} ({how}) failed: {str(exc) or repr(exc)}",
                hint=f"`labgrid-client -p {self.place} show` lists its resources; the flash tool runs "
                "on the exporter host over SSH (labgrid's way): check it there by hand",
            ) from None
        if "NetworkSerialPort" not in classes:
            raise InfraError(
                f"place {self.place} exports no NetworkSerialPort",
                hint="add the board's serial port to the place",
            )
        serial_driver = SerialDriver(lg, name=None)
        try:
            lg.activate(serial_driver)
        except Exception as exc:
            raise InfraError(
                f"cannot open the serial port of place {self.place}: {exc}",
                hint="is ser2net (or the stand-in agent) serving it on the exporter host?",
            ) from None
        port = serial_driver.serial
        port.timeout = 0.05  # the protocol client polls; labgrid leaves reads blocking
        return classes, how, port

    def _diagnostics(self, lg: Any, classes: set[str]) -> str:
        if "NestbenchStandIn" not in classes:
            return ""
        from harness.farm import standin

        res = lg.get_resource("NestbenchStandIn")
        try:
            return "stand-in: " + standin.request(res.host, int(res.port), "STATUS", timeout_s=5.0)
        except InfraError as exc:
            return f"stand-in: {exc.message}"


__all__ = ["KIND_TAG", "LabgridBackend", "LabgridSource", "PlaceClaim", "parse_address"]
