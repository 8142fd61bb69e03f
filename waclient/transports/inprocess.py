"""``NeonizeTransport``: the real neonize client in this process.

Fine for a bot on a stable network and for short-lived tools. Every failed connect retains
native memory in the Go core that Python cannot free, and a file descriptor (docs/facts.md): a
long network outage grows this process without bound. For a long-running service use
:class:`~waclient.transports.IsolatedTransport`, which runs the same session in a worker process
it recycles.

Events reach the sink through neonize's own path: Go calls ``Event.execute`` through a ctypes
callback, neonize decodes the protobuf and calls the ONE bridge handler installed for that event
type. Blocking calls (connect, stop, every request) run on threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from waclient.events import Event
from waclient.pairing import qr_code
from waclient.transports import calls
from waclient.transports.base import EventSink, TransportError
from waclient.transports.session import NeonizeSession

__all__ = ["NeonizeTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class NeonizeTransport:
    """The real neonize client, in this process.

    ``database`` is the session database (sqlite path); ``proxy`` an optional proxy address
    such as ``socks5://127.0.0.1:1080``; at most ``max_in_flight`` requests run at once.
    """

    STOP_TIMEOUT = 10.0

    def __init__(
        self,
        database: str | Path = "waclient.db",
        *,
        name: str = "waclient",
        proxy: str | None = None,
        max_in_flight: int = 8,
    ) -> None:
        self.database = str(database)
        self.proxy = proxy
        self.latest_qr: str | None = None
        self.max_in_flight = max_in_flight
        self._sink: EventSink | None = None
        self._late_events = 0
        self._session = NeonizeSession(self.database, name=name, proxy=proxy, deliver=self._deliver)
        self._running = threading.Event()
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def late_events(self) -> int:
        """Events the Go side delivered when no session was running (dropped)."""
        return self._late_events

    async def run(self, sink: EventSink) -> None:
        if self._running.is_set():
            raise TransportError("a session is already running on this transport")
        self._running.set()
        self._sink = sink
        try:
            await in_own_thread(self._session.run_blocking, name="waclient-neonize-connect")
        finally:
            self._sink = None
            self._running.clear()

    async def stop(self) -> None:
        # Stop() is a no-op until the Go side has registered the session, so a stop that
        # races a starting connect is repeated until the session has really ended.
        for _ in range(int(self.STOP_TIMEOUT / 0.1)):
            if not self._running.is_set():
                return
            await in_own_thread(self._session.stop, name="waclient-neonize-stop")
            await asyncio.sleep(0.1)
        log.error("the neonize session did not stop within %.0fs", self.STOP_TIMEOUT)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # Validated and round-tripped through the wire form, exactly as through the worker.
        wire = calls.encode(method, args, kwargs)
        if not self._running.is_set():
            raise TransportError("not connected: no session is running")
        _, real_args, real_kwargs = calls.decode(wire)
        async with self._in_flight:  # backpressure: never a growing queue of blocked calls
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool(), self._session.call, method, real_args, real_kwargs
            )

    async def pair_phone(self, phone: str) -> str:
        """A pairing code to link this session by phone number (the session must be running)."""
        return str(await self.call("PairPhone", phone, True))

    async def close(self) -> None:
        await self.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- helpers ----------------------------------------------------------------------------

    def _deliver(self, event: Event) -> None:
        if (qr := qr_code(event)) is not None:
            self.latest_qr = qr
        sink = self._sink
        if sink is None:
            self._late_events += 1
            return
        sink(event)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.max_in_flight, thread_name_prefix="waclient-call"
            )
        return self._executor


async def in_own_thread(fn: Callable[[], T], *, name: str) -> T:
    """Run a blocking call on a thread of its own that ends with the call.

    The default executor would keep idle threads alive after a storm of connects; a thread per
    call leaves the thread count flat once the call returns.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(settle, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, result)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    finally:
        if future.done():
            thread.join()  # it has settled the future; all that is left is its return
