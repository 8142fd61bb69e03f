"""Transports: where a WhatsApp session runs. ``NeonizeTransport`` runs neonize in this process.

A transport runs one *session* per :meth:`Transport.run` call: the Go client connects, events
flow to the ``sink`` the caller gave, and ``run`` returns when the Go side stops (or raises
:class:`TransportError` when it could not start). Only :class:`~waclient.client.Client`'s
supervisor calls ``run``; it never has two sessions at once.

Events reach the sink through neonize's own path: Go calls ``Event.execute`` through a ctypes
callback, neonize decodes the protobuf and calls the ONE bridge handler installed here for that
event type, and the bridge hands the decoded message to the sink.

whatsmeow reconnects by itself after a drop while a session runs (``EnableAutoReconnect`` is on
and neonize 0.5.2 offers no way to turn it off), so within a session the Go side owns the live
connection; the supervisor takes over when ``run`` returns or fails, or when the session stays
disconnected past the client's grace period (then it stops the session first). See
docs/design.md, "Who reconnects".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from waclient.events import SUPPORTED_EVENTS, Event, event_code

__all__ = [
    "EventSink",
    "NeonizeTransport",
    "SentMessage",
    "Transport",
    "TransportError",
    "install_bridge",
]

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]
"""Receives each decoded event. Called on the Go side's thread; may block to apply backpressure."""

T = TypeVar("T")


class TransportError(RuntimeError):
    """A session could not start or a request failed; the message says why."""


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What the server said about a message we sent."""

    id: str
    chat: str
    text: str
    timestamp: int


@runtime_checkable
class Transport(Protocol):
    """A place where WhatsApp sessions run. One session at a time."""

    async def run(self, sink: EventSink) -> None:
        """Run one session: connect, deliver events to ``sink``, return when it ends.

        Raises :class:`TransportError` when the session could not be started.
        """
        ...

    async def stop(self) -> None:
        """End the running session, if any, and wait until the Go side has let go of it."""
        ...

    async def send_text(self, chat: str, text: str) -> SentMessage:
        """Send a text message in the running session."""
        ...

    async def close(self) -> None:
        """Release everything the transport holds. It is not used afterwards."""
        ...


def install_bridge(neonize_client: Any, deliver: EventSink) -> None:
    """Install ONE bridge handler per supported event type on a neonize ``NewClient``.

    The handlers are plain closures (neonize would keep only a weak reference to a bound
    method) and are installed before ``connect()``, because the set of subscribed event codes
    is passed to Go at connect time.
    """

    def bridge(_client: object, message: Event) -> None:
        deliver(message)

    for event_type in SUPPORTED_EVENTS:
        neonize_client.event.list_func[event_code(event_type)] = bridge


class NeonizeTransport:
    """The real neonize client, in this process.

    ``database`` is the session database (sqlite path); ``proxy`` an optional proxy address
    such as ``socks5://127.0.0.1:1080``. Every failed connect retains native memory in the Go
    core that Python cannot free (docs/facts.md); for long outages use
    :class:`~waclient.isolation.IsolatedTransport`, which runs this in a worker process.
    """

    STOP_TIMEOUT = 10.0

    def __init__(
        self,
        database: str | Path = "waclient.db",
        *,
        name: str = "waclient",
        proxy: str | None = None,
    ) -> None:
        from neonize.client import NewClient

        self.database = str(database)
        self.proxy = proxy
        self.latest_qr: str | None = None
        self._client = NewClient(self.database, uuid=name)
        self._client.event.qr(self._on_qr)
        self._sink: EventSink | None = None
        self._late_events = 0
        install_bridge(self._client, self._deliver)
        self._running = threading.Event()
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
            await _in_own_thread(self._connect_blocking, name="waclient-neonize-connect")
        finally:
            self._sink = None
            self._running.clear()

    async def stop(self) -> None:
        # Stop() is a no-op until the Go side has registered the session, so a stop that
        # races a starting connect is repeated until the session has really ended.
        for _ in range(int(self.STOP_TIMEOUT / 0.1)):
            if not self._running.is_set():
                return
            await _in_own_thread(self._client.stop, name="waclient-neonize-stop")
            await asyncio.sleep(0.1)
        log.error("the neonize session did not stop within %.0fs", self.STOP_TIMEOUT)

    async def send_text(self, chat: str, text: str) -> SentMessage:
        if not self._running.is_set():
            raise TransportError("not connected: no session is running")
        from neonize.utils.jid import build_jid

        jid = build_jid(*chat.split("@", 1)) if "@" in chat else build_jid(chat)
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(
                self._pool(), self._client.send_message, jid, text
            )
        except Exception as exc:
            raise TransportError(f"send failed: {exc}") from exc
        return SentMessage(
            id=str(response.ID), chat=chat, text=text, timestamp=int(response.Timestamp)
        )

    async def pair_phone(self, phone: str) -> str:
        """A pairing code to link this session by phone number (the session must be running)."""
        if not self._running.is_set():
            raise TransportError("not connected: no session is running")
        loop = asyncio.get_running_loop()
        try:
            code = await loop.run_in_executor(self._pool(), self._client.PairPhone, phone, True)
        except Exception as exc:
            raise TransportError(f"pairing failed: {exc}") from exc
        return str(code)

    async def close(self) -> None:
        await self.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- helpers ----------------------------------------------------------------------------

    def _connect_blocking(self) -> None:
        from neonize.client import ProxySettings

        proxy = ProxySettings(proxy_address=self.proxy) if self.proxy else None
        try:
            self._client.connect(proxy)
        except Exception as exc:
            raise TransportError(str(exc)) from exc

    def _deliver(self, event: Event) -> None:
        sink = self._sink
        if sink is None:
            self._late_events += 1
            return
        sink(event)

    def _on_qr(self, _client: object, data: bytes) -> None:
        self.latest_qr = data.decode(errors="replace")

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="waclient-send")
        return self._executor


async def _in_own_thread(fn: Callable[[], T], *, name: str) -> T:
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
