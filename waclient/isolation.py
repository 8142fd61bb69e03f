"""``IsolatedTransport``: neonize in a worker process that is recycled on a memory budget.

Every failed neonize connect retains native memory in the Go core that no Python code can free
(docs/facts.md); only ending the process gives it back. So the WhatsApp session runs in a worker
process: the Go side's events travel to this process as ``(event code, protobuf bytes)`` over a
pipe and are decoded here with the same neonize types; sends are requests to the worker. Between
connection attempts the worker is recycled (asked to exit, then a new one started) when one more
attempt could take its RSS past ``rss_budget``, when it holds ``max_worker_fds`` descriptors, or
after ``recycle_after_failures`` failed attempts; the session database on disk survives, so a
paired session stays paired.

A worker that dies is noticed by the pipe closing; one that hangs, by missed heartbeats (it is
then killed). Requests in flight fail with :class:`~waclient.transport.TransportError`, never
hang. The worker dies with this process (``PR_SET_PDEATHSIG`` and the pipe's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import psutil

from waclient.events import ConnectedEv, DisconnectedEv, event_code, event_type
from waclient.transport import EventSink, SentMessage, TransportError, install_bridge

__all__ = ["IsolatedTransport", "WorkerStats"]

log = logging.getLogger(__name__)

WorkerKind = Literal["neonize", "simulated"]

_EVENT = 0x45  # b"E": an event frame: kind byte, event code (u16), protobuf bytes
_CONTROL = 0x43  # b"C": a pickled control message
_CODE = struct.Struct("<H")


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


class IsolatedTransport:
    """A :class:`~waclient.transport.Transport` whose neonize client lives in a worker process.

    ``worker="simulated"`` runs a scripted Go side in the worker instead of neonize (for tests
    and benchmarks of the process boundary itself); see :meth:`debug_emit`.
    """

    def __init__(
        self,
        database: str | Path = "waclient.db",
        *,
        name: str = "waclient",
        proxy: str | None = None,
        rss_budget: int | None = 150 * 2**20,
        recycle_after_failures: int | None = None,
        max_worker_fds: int | None = 512,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 5.0,
        request_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        start_timeout: float = 60.0,
        worker: WorkerKind = "neonize",
    ) -> None:
        self.spec = _WorkerSpec(worker, str(database), name, proxy)
        self.rss_budget = rss_budget
        self.recycle_after_failures = recycle_after_failures
        # neonize also leaks a file descriptor per failed connect (docs/facts.md): with a
        # large RSS budget the worker would run out of descriptors first.
        self.max_worker_fds = max_worker_fds
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
        self._ended: asyncio.Future[str | None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._reaping: set[asyncio.Future[None]] = set()

    # -- Transport --------------------------------------------------------------------------

    async def run(self, sink: EventSink) -> None:
        if self._ended is not None:
            raise TransportError("a session is already running on this transport")
        if self._closed:
            raise TransportError("transport is closed")
        worker = await self._worker_for_attempt()
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

    async def stop(self) -> None:
        """End the running session; a worker that does not let go in time is killed."""
        ended, worker = self._ended, self._worker
        if ended is None or worker is None:
            return
        deadline = time.monotonic() + self.stop_timeout
        while not ended.done() and time.monotonic() < deadline:
            worker.send(("stop",))
            with contextlib.suppress(TimeoutError, TransportError):
                await asyncio.wait_for(asyncio.shield(ended), 0.1)
        if not ended.done():
            log.error("worker %s did not stop its session; killing it", worker.pid)
            worker.kill()
            with contextlib.suppress(TransportError):
                await ended

    async def send_text(self, chat: str, text: str) -> SentMessage:
        if self._ended is None:
            raise TransportError("not connected: no session is running")
        reply = await self._request("send", chat, text)
        message_id, timestamp = reply
        return SentMessage(id=message_id, chat=chat, text=text, timestamp=timestamp)

    async def pair_phone(self, phone: str) -> str:
        """A pairing code to link this session by phone number (the session must be running)."""
        if self._ended is None:
            raise TransportError("not connected: no session is running")
        return str(await self._request("pair", phone))

    async def close(self) -> None:
        self._closed = True
        await self.stop()
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.retire(self.stop_timeout)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)

    # -- observability and test hooks -------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def worker_rss(self) -> int:
        """The worker's resident memory now, in bytes (0 without a worker)."""
        worker = self._worker
        return self._sample_rss(worker) if worker is not None else 0

    def stats(self) -> WorkerStats:
        return WorkerStats(
            pid=self.worker_pid,
            rss=self.worker_rss,
            max_rss=self.max_worker_rss,
            starts=self.starts,
            recycles=self.recycles,
            crashes=self.crashes,
            hangs=self.hangs,
            failed_attempts_since_start=self._failed_since_start,
        )

    async def debug_emit(self, event: Any, count: int = 1) -> None:
        """Simulated worker only: have its Go side emit ``count`` copies of ``event``."""
        if self.spec.kind != "simulated":
            raise TransportError("debug_emit needs worker='simulated'")
        data = event.SerializePartialToString()
        await self._request("emit", event_code(type(event)), data, count)

    async def debug_disconnect(self) -> None:
        """Simulated worker only: Disconnected, then the session ends."""
        await self._request("disconnect")

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
        worker.heartbeat = asyncio.ensure_future(self._heartbeat(worker))
        return worker

    async def _heartbeat(self, worker: _Worker) -> None:
        for seq in itertools.count():
            await asyncio.sleep(self.heartbeat_interval)
            if not worker.alive:
                return
            silent = time.monotonic() - worker.last_seen
            if silent > self.heartbeat_timeout and not worker.delivering:
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

    async def _request(self, *message: Any) -> Any:
        worker = self._worker
        if worker is None or not worker.alive:
            raise TransportError("no worker process is running")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            worker.send((message[0], request_id, *message[1:]))
            return await asyncio.wait_for(future, self.request_timeout)
        except TimeoutError:
            raise TransportError(f"{message[0]} timed out after {self.request_timeout}s") from None
        finally:
            self._pending.pop(request_id, None)

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
                    future.set_exception(TransportError(payload))
        elif kind == "qr":
            self.latest_qr = message[1]

    def _on_exit(self, worker: _Worker) -> None:
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
        if worker is self._worker:
            self._worker = None
            if self._ended is not None and not self._ended.done():
                self._ended.set_result(reason)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TransportError(reason))
        # Reap it now: no zombie waits for the next attempt.
        task = asyncio.ensure_future(worker.retire(0))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def _deliver(self, code: int, data: bytes) -> None:
        """On the reader thread: decode with neonize's types and hand to the sink."""
        sink = self._sink
        if sink is None:
            self.late_events += 1
            return
        sink(event_type(code).FromString(data))


class _Worker:
    """One worker process, its pipe and the thread that reads it."""

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
        self.delivering = False
        self.last_seen = time.monotonic()
        self.heartbeat: asyncio.Future[None] | None = None
        self.conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="waclient-worker-reader")
        self._psutil: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start ``python -m waclient.isolation`` with one end of a socket pair.

        A plain subprocess, not multiprocessing's spawn: the worker must not re-import the
        application's ``__main__`` module.
        """
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "waclient.isolation",
                    str(theirs.fileno()),
                    json.dumps(asdict(self.owner.spec)),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self.conn = Connection(ours.detach())
        self.alive = True
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        conn = self.conn
        if not self.alive or conn is None:
            raise TransportError("the worker process is not running")
        try:
            with self._send_lock:
                conn.send(message)
        except (OSError, ValueError) as exc:
            raise TransportError(f"the worker process is gone: {exc}") from exc

    def rss(self) -> int:
        if not self.alive or self.process is None:
            return 0
        try:
            if self._psutil is None:
                self._psutil = psutil.Process(self.process.pid)
            return int(self._psutil.memory_info().rss)
        except psutil.Error:
            return 0

    def num_fds(self) -> int:
        if not self.alive or self.process is None:
            return 0
        try:
            if self._psutil is None:
                self._psutil = psutil.Process(self.process.pid)
            return int(self._psutil.num_fds())
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
        if self._reader.is_alive():
            await asyncio.to_thread(self._reader.join)
        self.alive = False
        if self.conn is not None:
            self.conn.close()

    def _read(self) -> None:
        owner, loop, conn = self.owner, self.loop, self.conn
        assert conn is not None
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                break
            self.last_seen = time.monotonic()
            if frame[0] == _EVENT:
                (code,) = _CODE.unpack_from(frame, 1)
                self.delivering = True
                try:
                    owner._deliver(code, frame[1 + _CODE.size :])
                except Exception:
                    log.exception("could not deliver an event from the worker")
                finally:
                    self.delivering = False
            else:
                message = pickle.loads(frame[1:])
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(owner._on_control, self, message)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(owner._on_exit, self)


# -- the worker process ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    kind: WorkerKind
    database: str
    name: str
    proxy: str | None


def _worker_entry(argv: list[str]) -> None:
    """``python -m waclient.isolation FD SPEC``: the worker process."""
    fd, spec = int(argv[0]), _WorkerSpec(**json.loads(argv[1]))
    _worker_main(Connection(fd), spec)


def _worker_main(conn: Connection, spec: _WorkerSpec) -> None:
    """The worker's main thread: read requests until told to exit or the parent is gone."""
    _die_with_parent()
    lock = threading.Lock()

    def send_frame(frame: bytes) -> None:
        with lock:
            conn.send_bytes(frame)

    def control(*message: Any) -> None:
        send_frame(bytes((_CONTROL,)) + pickle.dumps(message))

    def emit(code: int, data: bytes) -> None:
        send_frame(bytes((_EVENT,)) + _CODE.pack(code) + data)

    go: _GoSide = _NeonizeGo(spec, emit, control) if spec.kind == "neonize" else _SimulatedGo(emit)

    def session() -> None:
        control("ended", go.run_blocking())

    def request(request_id: int, fn: Callable[[], Any]) -> None:
        try:
            control("reply", request_id, True, fn())
        except Exception as exc:
            control("reply", request_id, False, f"{type(exc).__name__}: {exc}")

    control("ready", os.getpid())
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "run":
            threading.Thread(target=session, name="worker-session", daemon=True).start()
        elif kind == "stop":
            go.stop()
        elif kind == "ping":
            control("pong", message[1])
        elif kind == "send":
            _, request_id, chat, text = message
            send = functools.partial(go.send, chat, text)
            threading.Thread(target=request, args=(request_id, send), daemon=True).start()
        elif kind == "pair":
            _, request_id, phone = message
            pair = functools.partial(go.pair, phone)
            threading.Thread(target=request, args=(request_id, pair), daemon=True).start()
        elif kind in ("emit", "disconnect"):
            request(message[1], functools.partial(go.debug, kind, *message[2:]))
        elif kind == "exit":
            break
    go.stop()
    os._exit(0)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class _GoSide:
    def run_blocking(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def send(self, chat: str, text: str) -> tuple[str, int]:
        raise NotImplementedError

    def pair(self, phone: str) -> str:
        raise NotImplementedError

    def debug(self, kind: str, *args: Any) -> None:
        raise TransportError(f"{kind} is only for a simulated worker")


class _NeonizeGo(_GoSide):
    """The real neonize client, forwarding raw (code, bytes) events without decoding them."""

    def __init__(
        self,
        spec: _WorkerSpec,
        emit: Callable[[int, bytes], None],
        control: Callable[..., None],
    ) -> None:
        from neonize.client import NewClient

        self.spec = spec
        self.client = NewClient(spec.database, uuid=spec.name)
        install_bridge(self.client, lambda event: None)  # subscribes the event codes

        def raw_execute(_uuid: bytes, binary: int, size: int, code: int) -> None:
            emit(code, ctypes.string_at(binary, size))

        # connect() wraps client.event.execute in the ctypes callback: forward the bytes as
        # they are; the parent decodes them.
        self.client.event.execute = raw_execute
        self.client.event.qr(lambda _c, data: control("qr", data.decode(errors="replace")))

    def run_blocking(self) -> str | None:
        from neonize.client import ProxySettings

        proxy = ProxySettings(proxy_address=self.spec.proxy) if self.spec.proxy else None
        try:
            self.client.connect(proxy)
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None

    def stop(self) -> None:
        self.client.stop()

    def send(self, chat: str, text: str) -> tuple[str, int]:
        from neonize.utils.jid import build_jid

        jid = build_jid(*chat.split("@", 1)) if "@" in chat else build_jid(chat)
        response = self.client.send_message(jid, text)
        return str(response.ID), int(response.Timestamp)

    def pair(self, phone: str) -> str:
        return str(self.client.PairPhone(phone, True))


class _SimulatedGo(_GoSide):
    """A scripted Go side in the worker: connects, emits what it is asked, sends instantly."""

    def __init__(self, emit: Callable[[int, bytes], None]) -> None:
        self.emit = emit
        self.ended = threading.Event()
        self.sends = itertools.count(1)

    def run_blocking(self) -> str | None:
        self.ended.clear()
        self.emit(event_code(ConnectedEv), ConnectedEv(status=True).SerializePartialToString())
        self.ended.wait()
        return None

    def stop(self) -> None:
        self.ended.set()

    def send(self, chat: str, text: str) -> tuple[str, int]:
        return f"ISO{next(self.sends):016X}", int(time.time())

    def pair(self, phone: str) -> str:
        digits = "".join(c for c in phone if c.isdigit())
        return (digits[-8:] or "0").rjust(8, "0")

    def debug(self, kind: str, *args: Any) -> None:
        if kind == "emit":
            code, data, count = args
            for _ in range(count):
                self.emit(code, data)
        else:
            data = DisconnectedEv(status=True).SerializePartialToString()
            self.emit(event_code(DisconnectedEv), data)
            self.ended.set()


if __name__ == "__main__":
    _worker_entry(sys.argv[1:])
