"""``IsolatedTransport``: neonize in a worker process that is recycled on a memory budget.

Every failed neonize connect retains native memory in the Go core that no Python code can free
(docs/facts.md); only ending the process gives it back. So the WhatsApp session runs in a worker
process (:mod:`waclient.transports._worker`): the Go side's events travel to this process as
``(event code, protobuf bytes)`` and are decoded here with the same neonize types; every call is
a request to the worker, its arguments and result in the wire form of
:mod:`waclient.transports.calls`. Two socket pairs join the processes: the *event* socket
carries the session's events (QR codes among them, as ``QREv``) and its end, in order; the
*control* socket carries requests, their replies and heartbeats. A reply never waits behind
events: a handler that calls back into the client gets its answer whatever the events do, even
while a burst has filled the client's inbox (docs/design.md, "Flow control").

Between connection attempts the worker is recycled (asked to exit, then a new one started) when
one more attempt could take its RSS past ``rss_budget``, when it holds ``max_worker_fds``
descriptors, or after ``recycle_after_failures`` failed attempts; the session database on disk
survives, so a paired session stays paired.

Bounded in bytes, not only in count: a request or reply larger than ``max_frame`` (64 MiB by
default) is refused before anything is sent (:class:`~waclient.transports.PayloadTooLarge`); at
most ``max_in_flight`` requests are in flight (the next caller waits: backpressure).

A worker that dies is noticed by its sockets closing; one that hangs, by missed heartbeats (it is
then killed). Requests in flight fail with :class:`~waclient.transports.TransportError`, never
hang; the next session runs in a new worker. The worker dies with this process
(``PR_SET_PDEATHSIG`` and its sockets' end).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from waclient.events import Event, event_code, event_type
from waclient.lifetime import Lifetime, LifetimeError
from waclient.pairing import qr_code
from waclient.transports import calls
from waclient.transports._wire import (
    CODE,
    EVENT_FRAME,
    FRAME_OVERHEAD,
    WorkerKind,
    WorkerSpec,
)
from waclient.transports.base import CallError, EventSink, PayloadTooLarge, TransportError
from waclient.transports.failures import call_failed

__all__ = ["IsolatedTransport", "WorkerStats"]

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME = 64 * 2**20


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What ``/health/memory`` and the soak harness show about the worker."""

    pid: int | None
    rss: int
    max_rss: int
    starts: int
    recycles: int
    crashes: int
    hangs: int
    failed_attempts_since_start: int
    rss_budget: int | None
    """The RSS past which the worker is recycled between attempts (None: no budget)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IsolatedTransport(Lifetime):
    """A :class:`~waclient.transports.Transport` whose neonize client lives in a worker process.

    ``worker="simulated"`` runs a scripted Go side in the worker instead of neonize (for tests,
    soaks and benchmarks of the process boundary itself); see :meth:`emit`.

    A :class:`~waclient.lifetime.Lifetime`: the first :meth:`run` opens it (its heartbeat and
    reaping tasks belong to it); :meth:`close` retires the worker and is final.
    """

    idempotent_start = True

    def __init__(
        self,
        database: str | Path = "waclient.db",
        *,
        name: str = "waclient",
        proxy: str | None = None,
        rss_budget: int | None = 150 * 2**20,
        recycle_after_failures: int | None = None,
        max_worker_fds: int | None = 512,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_in_flight: int = 16,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 5.0,
        request_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        start_timeout: float = 60.0,
        worker: WorkerKind = "neonize",
    ) -> None:
        if max_frame < 1 or max_in_flight < 1:
            raise ValueError("max_frame and max_in_flight must be >= 1")
        self.spec = WorkerSpec(worker, str(database), name, proxy, max_frame, max_in_flight)
        self.rss_budget = rss_budget
        self.recycle_after_failures = recycle_after_failures
        # neonize also leaks a file descriptor per failed connect (docs/facts.md): with a
        # large RSS budget the worker would run out of descriptors first.
        self.max_worker_fds = max_worker_fds
        self.max_frame = max_frame
        self.max_in_flight = max_in_flight
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.request_timeout = request_timeout
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.latest_qr: str | None = None
        self.late_events = 0
        """Events the worker sent when no session was running (dropped)."""
        self.starts = 0
        self.recycles = 0
        self.crashes = 0
        self.hangs = 0
        self.max_worker_rss = 0
        self.largest_step = 0
        """The largest RSS growth of the worker over one attempt: recycling leaves room for it."""
        self._failed_since_start = 0
        self._worker: _Worker | None = None
        self._sink: EventSink | None = None
        self._running: asyncio.Future[None] | None = None
        self._stop_requested = False
        self._ended: asyncio.Future[str | None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._ids = itertools.count(1)
        self._reaping: set[asyncio.Task[None]] = set()

    # -- Transport --------------------------------------------------------------------------

    async def run(self, sink: EventSink) -> None:
        if self._running is not None:
            raise TransportError("a session is already running on this transport")
        if self.closing:
            raise TransportError("transport is closed")
        loop = asyncio.get_running_loop()
        running: asyncio.Future[None] = loop.create_future()
        self._running, self._stop_requested = running, False
        try:
            await self.start()
            await self._run_session(sink)
        finally:
            self._running = None
            running.set_result(None)

    async def stop(self) -> None:
        """End the running session and wait until :meth:`run` has returned, even when it is
        still starting a worker; a worker that does not let go in time is killed."""
        running = self._running
        if running is None:
            return
        self._stop_requested = True
        ended, worker = self._ended, self._worker
        if ended is not None and worker is not None:
            deadline = time.monotonic() + self.stop_timeout
            while not ended.done() and time.monotonic() < deadline:
                with contextlib.suppress(TransportError):
                    worker.send(("stop",))
                with contextlib.suppress(TimeoutError, TransportError):
                    await asyncio.wait_for(asyncio.shield(ended), 0.1)
            if not ended.done():
                log.error("worker %s did not stop its session; killing it", worker.pid)
                worker.kill()
        # A run still starting its worker sees the request once the worker is up.
        await asyncio.shield(running)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        wire = calls.encode(method, args, kwargs)
        if self._ended is None:
            raise TransportError("not connected: no session is running")
        return calls.decode_value(await self._request("call", wire))

    async def pair_phone(self, phone: str) -> str:
        """A pairing code to link this session by phone number (the session must be running)."""
        return str(await self.call("PairPhone", phone, True))

    async def close(self) -> None:
        """Stop the session, retire the worker (killed if it does not exit in time), reap
        every worker that ended; idempotent, and final."""
        await super().close()

    async def _close(self) -> None:
        await self.stop()
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.retire(self.stop_timeout)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)

    # -- Simulating (worker="simulated" only) -------------------------------------------------

    async def emit(self, *events: Event, repeat: int = 1) -> None:
        """Have the simulated worker's Go side emit ``events`` (``repeat`` times over)."""
        self._simulated_only("emit")
        batch = [(event_code(type(e)), e.SerializePartialToString()) for e in events]
        await self._request("emit", batch, repeat)

    async def disconnect(self) -> None:
        """Disconnected, then the session ends (the simulated worker's Go side stopped)."""
        self._simulated_only("disconnect")
        await self._request("disconnect")

    async def fail(
        self, method: str, error: str = "simulated failure", *, error_type: str | None = None
    ) -> None:
        """Have the simulated worker fail every call of ``method`` with ``error`` (raised there
        as neonize's ``error_type`` when given) until :meth:`heal`."""
        self._simulated_only("fail")
        calls.check_method(method)
        await self._request("fail", method, error, error_type)

    async def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (or every method) in the simulated worker."""
        self._simulated_only("heal")
        await self._request("heal", method)

    # -- observability ----------------------------------------------------------------------

    @property
    def database(self) -> str:
        """The session database's path (the client's overflow queue lives beside it)."""
        return self.spec.database

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def worker_rss(self) -> int:
        """The worker's resident memory now, in bytes (0 without a worker)."""
        worker = self._worker
        return self._sample_rss(worker) if worker is not None else 0

    @property
    def in_flight(self) -> int:
        """Requests sent to the worker and not answered yet."""
        return len(self._pending)

    def statistics(self) -> WorkerStats:
        return WorkerStats(
            pid=self.worker_pid,
            rss=self.worker_rss,
            max_rss=self.max_worker_rss,
            starts=self.starts,
            recycles=self.recycles,
            crashes=self.crashes,
            hangs=self.hangs,
            failed_attempts_since_start=self._failed_since_start,
            rss_budget=self.rss_budget,
        )

    # -- a session ----------------------------------------------------------------------------

    async def _run_session(self, sink: EventSink) -> None:
        worker = await self._worker_for_attempt()
        if self._stop_requested:
            return  # stopped while the worker was starting: no session to run
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[str | None] = loop.create_future()
        self._ended, self._sink = ended, sink
        before = self._sample_rss(worker)
        try:
            worker.send(("run",))
            error = await ended
        finally:
            self._ended, self._sink = None, None
            step = self._sample_rss(worker) - before
            self.largest_step = max(self.largest_step, step)
        if error is not None:
            self._failed_since_start += 1
            raise TransportError(error)

    def _simulated_only(self, what: str) -> None:
        if self.spec.kind != "simulated":
            raise TransportError(f"{what} needs worker='simulated'")

    # -- the worker's life ------------------------------------------------------------------

    async def _worker_for_attempt(self) -> _Worker:
        worker = self._worker
        if worker is not None and worker.alive:
            reason = self._recycle_reason(worker)
            if reason is None:
                return worker
            log.info("recycling worker %s: %s", worker.pid, reason)
            self.recycles += 1
            self._worker = None
            await worker.retire(self.stop_timeout)
        elif worker is not None:
            self._worker = None
            await worker.retire(0)
        return await self._spawn()

    def _recycle_reason(self, worker: _Worker) -> str | None:
        rss = self._sample_rss(worker)
        if self.rss_budget is not None and rss + self.largest_step > self.rss_budget:
            return (
                f"rss {rss >> 20} MiB plus the largest growth of one attempt "
                f"({self.largest_step >> 10} KiB) would pass the budget of "
                f"{self.rss_budget >> 20} MiB"
            )
        fds = worker.num_fds()
        if self.max_worker_fds is not None and fds >= self.max_worker_fds:
            return f"{fds} open file descriptors (limit {self.max_worker_fds})"
        limit = self.recycle_after_failures
        if limit is not None and self._failed_since_start >= limit:
            return f"{self._failed_since_start} failed attempts"
        return None

    async def _spawn(self) -> _Worker:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        worker = _Worker(self, loop, ready)
        await asyncio.to_thread(worker.start)
        self._worker = worker
        self.starts += 1
        self._failed_since_start = 0
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.start_timeout)
        except (TimeoutError, TransportError) as exc:
            self._worker = None
            await worker.retire(0.5)
            raise TransportError(f"the worker process did not start: {exc}") from exc
        worker.heartbeat = self.spawn(self._heartbeat(worker), name="worker-heartbeat")
        return worker

    async def _heartbeat(self, worker: _Worker) -> None:
        for seq in itertools.count():
            await asyncio.sleep(self.heartbeat_interval)
            if not worker.alive:
                return
            silent = time.monotonic() - worker.last_seen
            if silent > self.heartbeat_timeout:
                self.hangs += 1
                log.error("worker %s silent for %.1fs: killing it", worker.pid, silent)
                worker.hung = True
                worker.kill()
                return
            worker.send(("ping", seq))

    def _sample_rss(self, worker: _Worker | None) -> int:
        if worker is None:
            return 0
        rss = worker.rss()
        self.max_worker_rss = max(self.max_worker_rss, rss)
        return rss

    async def _request(self, kind: str, *payload: Any) -> Any:
        """Send one request and wait for its reply; at most ``max_in_flight`` at once."""
        self._check_size(kind, payload, calls.payload_size(payload))  # before any copy
        async with self._in_flight:
            worker = self._worker
            if worker is None or not worker.alive:
                raise TransportError("no worker process is running")
            request_id = next(self._ids)
            frame = pickle.dumps((kind, request_id, *payload), protocol=pickle.HIGHEST_PROTOCOL)
            self._check_size(kind, payload, len(frame) - FRAME_OVERHEAD)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                worker.send_frame(frame)
                del frame
                async with asyncio.timeout(self.request_timeout):
                    return await future
            except TimeoutError:
                name = _request_name(kind, payload)
                raise TransportError(f"{name} timed out after {self.request_timeout}s") from None
            finally:
                self._pending.pop(request_id, None)

    def _check_size(self, kind: str, payload: tuple[Any, ...], size: int) -> None:
        if size > self.max_frame:
            raise PayloadTooLarge(
                f"{_request_name(kind, payload)}: the request ({size / 2**20:.1f} MiB) is larger "
                f"than the frame limit ({self.max_frame / 2**20:.1f} MiB); nothing was sent"
            )

    # -- called on the loop by the worker's reader thread -----------------------------------

    def _on_control(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            if not worker.ready.done():
                worker.ready.set_result(message[1])
        elif kind == "ended":
            if worker is self._worker and self._ended is not None and not self._ended.done():
                self._ended.set_result(message[1])
        elif kind == "reply":
            _, request_id, ok, payload = message
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                if ok:
                    future.set_result(payload)
                else:
                    is_call_error, text, failed = payload
                    if failed is not None:
                        future.set_exception(call_failed(*failed))
                    else:
                        future.set_exception((CallError if is_call_error else TransportError)(text))

    def _on_exit(self, worker: _Worker) -> None:
        """The control socket has closed: the worker is gone. Requests in flight fail now; the
        session ends once the event reader has delivered what the worker sent before."""
        worker.alive = False
        if not worker.ready.done():
            worker.ready.set_exception(TransportError("the worker process exited while starting"))
        if worker.retiring:
            return
        if worker.hung:
            reason = "the worker process hung (no heartbeat) and was killed"
        else:
            self.crashes += 1
            reason = "the worker process died"
        log.error("%s (pid %s)", reason, worker.pid)
        current = worker is self._worker
        if current:
            self._worker = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TransportError(reason))
        # Reap it now (no zombie waits for the next attempt), then end its session.
        try:
            task = self.spawn(self._reap(worker, reason if current else None), name="worker-reap")
        except LifetimeError:  # closed already: its close retired every worker
            return
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap(self, worker: _Worker, reason: str | None) -> None:
        await worker.retire(0)
        ended = self._ended
        if reason is not None and ended is not None and not ended.done():
            ended.set_result(reason)

    def _deliver(self, code: int, data: bytes) -> None:
        """On the event reader thread: decode with neonize's types and hand to the sink (which
        waits only while the client's memory and disk budgets are both full)."""
        event = event_type(code).FromString(data)
        if (qr := qr_code(event)) is not None:
            self.latest_qr = qr
        sink = self._sink
        if sink is None:
            self.late_events += 1
            return
        sink(event)


class _Worker:
    """One worker process, its two sockets and the two threads that read them."""

    def __init__(
        self,
        owner: IsolatedTransport,
        loop: asyncio.AbstractEventLoop,
        ready: asyncio.Future[int],
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None
        self.alive = False
        self.retiring = False
        self.hung = False
        self.last_seen = time.monotonic()
        self.heartbeat: asyncio.Task[None] | None = None
        self.control: Connection | None = None
        self.events: Connection | None = None
        self._send_lock = threading.Lock()
        self._readers = (
            threading.Thread(target=self._read_control, name="waclient-worker-control"),
            threading.Thread(target=self._read_events, name="waclient-worker-events"),
        )
        self._psutil: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start ``python -m waclient.transports._worker CONTROL EVENTS SPEC`` with one end of
        each socket pair.

        A plain subprocess, not multiprocessing's spawn: the worker must not re-import the
        application's ``__main__`` module.
        """
        control, control_theirs = socket.socketpair()
        events, events_theirs = socket.socketpair()
        with control_theirs, events_theirs:
            fds = (control_theirs.fileno(), events_theirs.fileno())
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "waclient.transports._worker",
                    *map(str, fds),
                    json.dumps(asdict(self.owner.spec)),
                ],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
            )
        self.control = Connection(control.detach())
        self.events = Connection(events.detach())
        self.alive = True
        for reader in self._readers:
            reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def send_frame(self, frame: bytes) -> None:
        """A request, on the control socket."""
        conn = self.control
        if not self.alive or conn is None:
            raise TransportError("the worker process is not running")
        try:
            with self._send_lock:
                conn.send_bytes(frame)
        except (OSError, ValueError) as exc:
            raise TransportError(f"the worker process is gone: {exc}") from exc

    def rss(self) -> int:
        return self._measure(lambda p: p.memory_info().rss)

    def num_fds(self) -> int:
        return self._measure(lambda p: p.num_fds())

    def _measure(self, read: Callable[[psutil.Process], int]) -> int:
        """A figure of the live process from psutil; 0 once it is gone."""
        if not self.alive or self.process is None:
            return 0
        try:
            if self._psutil is None:
                self._psutil = psutil.Process(self.process.pid)
            return int(read(self._psutil))
        except psutil.Error:
            return 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def retire(self, timeout: float) -> None:
        """Ask the worker to exit, kill it if it does not, and release every resource."""
        if self.retiring:
            return
        self.retiring = True
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        if self.alive:
            with contextlib.suppress(TransportError):
                self.send(("exit",))
        process = self.process
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, timeout)
            self.kill()
            await asyncio.to_thread(process.wait)
        for reader in self._readers:
            if reader.is_alive():
                await asyncio.to_thread(reader.join)
        self.alive = False
        for conn in (self.control, self.events):
            if conn is not None:
                conn.close()

    # -- the reader threads ---------------------------------------------------------------

    def _read_control(self) -> None:
        """Replies and heartbeats: handed to the loop at once, never behind an event."""
        for frame in self._frames(self.control):
            self.last_seen = time.monotonic()
            self._to_loop(self.owner._on_control, self, pickle.loads(frame[1:]))
        self._to_loop(self.owner._on_exit, self)

    def _read_events(self) -> None:
        """The session's events, in order, into the sink; then the session's end (and the
        replies to the simulated worker's emit, which follow the events they emitted)."""
        owner = self.owner
        for frame in self._frames(self.events):
            if frame[0] == EVENT_FRAME:
                (code,) = CODE.unpack_from(frame, 1)
                try:
                    owner._deliver(code, frame[1 + CODE.size :])
                except Exception:
                    log.exception("could not deliver an event from the worker")
            else:
                self._to_loop(owner._on_control, self, pickle.loads(frame[1:]))

    def _frames(self, conn: Connection | None) -> Iterator[bytes]:
        """The frames read from ``conn`` until the worker's end of it closes."""
        assert conn is not None
        limit = self.owner.max_frame + FRAME_OVERHEAD
        while True:
            try:
                yield conn.recv_bytes(limit)
            except (EOFError, OSError):
                return

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self.loop.call_soon_threadsafe(callback, *args)


def _request_name(kind: str, payload: tuple[Any, ...]) -> str:
    return str(payload[0][0]) if kind == "call" else kind
