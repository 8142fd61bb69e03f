"""``SimulatedTransport``: a scripted Go side for tests and soaks.

Every event is a real ``neonize.proto`` message serialized to bytes, put in a ctypes buffer and
delivered through neonize's own ctypes callback type and ``Event.execute`` decoding path, on a
thread of its own (as Go's would be), into the same bridge that ``NeonizeTransport`` installs.
Only the network is missing: connects succeed or fail as the script says.

    sim = SimulatedTransport(auto_connect=False)
    async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
        session = await sim.wait_session()
        await sim.connect()                  # Connected
        await sim.emit(message_event(text="hi"))
        await sim.disconnect()               # Disconnected, then the session ends
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from neonize.proto import Neonize_pb2 as pb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from waclient.events import Event, event_code
from waclient.transport import EventSink, SentMessage, TransportError, install_bridge

__all__ = [
    "SimSession",
    "SimulatedTransport",
    "client_outdated_event",
    "connected_event",
    "disconnected_event",
    "logged_out_event",
    "message_event",
    "stream_replaced_event",
    "temporary_ban_event",
]

Outcome = Literal["ok", "fail"]


@dataclass(eq=False)
class SimSession:
    """One simulated session (one ``Transport.run`` call)."""

    number: int
    sink: EventSink
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: int = 0


class SimulatedTransport:
    """A :class:`~waclient.transport.Transport` whose Go side is a script.

    ``outcomes`` scripts the attempts in order (``"ok"`` or ``"fail"``); after it runs out every
    attempt is ``default_outcome``. With ``auto_connect`` a successful attempt emits Connected by
    itself; without it the test calls :meth:`connect`.
    """

    def __init__(
        self,
        *,
        outcomes: Iterable[Outcome] = (),
        default_outcome: Outcome = "ok",
        auto_connect: bool = True,
        sent_log: int = 1000,
        name: str = "simulated",
    ) -> None:
        from neonize._binder import func_callback_bytes
        from neonize.client import NewClient

        self.default_outcome: Outcome = default_outcome
        self.auto_connect = auto_connect
        self.sessions_started = 0
        self.live_sessions = 0
        self.max_live_sessions = 0
        self.failed_attempts = 0
        self.sent: deque[SentMessage] = deque(maxlen=sent_log)
        self.sent_count = 0
        self.fail_sends = False
        self._outcomes: deque[Outcome] = deque(outcomes)
        self._session: SimSession | None = None
        self._last_ended: SimSession | None = None
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)
        # Unique per instance: a restarted host must not reuse ids that recorders deduplicate.
        self._id_prefix = os.urandom(4).hex().upper()
        # The neonize client is only a decoder here: it is never connected.
        self._neonize = NewClient(f"{name}.db", uuid=name)
        self._uuid = name.encode()
        self._target: EventSink | None = None
        install_bridge(self._neonize, self._to_target)
        self._callback = func_callback_bytes(self._neonize.event.execute)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._go_thread: threading.Thread | None = None

    # -- Transport --------------------------------------------------------------------------

    async def run(self, sink: EventSink) -> None:
        outcome = self._outcomes.popleft() if self._outcomes else self.default_outcome
        self.sessions_started += 1
        if outcome == "fail":
            self.failed_attempts += 1
            raise TransportError("simulated connect failure")
        session = SimSession(self.sessions_started, sink)
        self.live_sessions += 1
        self.max_live_sessions = max(self.max_live_sessions, self.live_sessions)
        self._session = session
        self._notify()
        try:
            if self.auto_connect:
                await self._emit_to(session, (connected_event(),))
            await session.ended.wait()
        finally:
            self.live_sessions -= 1
            session.ended.set()
            if self._session is session:
                self._session = None
            self._last_ended = session
            self._notify()

    async def stop(self) -> None:
        session = self._session
        if session is not None:
            session.ended.set()

    async def send_text(self, chat: str, text: str) -> SentMessage:
        if self._session is None:
            raise TransportError("not connected: no session is running")
        if self.fail_sends:
            raise TransportError("simulated send failure")
        number = next(self._ids)
        sent = SentMessage(
            id=f"SIM{self._id_prefix}{number:08X}", chat=chat, text=text, timestamp=int(time.time())
        )
        self.sent.append(sent)
        self.sent_count += 1
        return sent

    async def close(self) -> None:
        await self.stop()
        thread, self._go_thread = self._go_thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)

    # -- the script -------------------------------------------------------------------------

    @property
    def session(self) -> SimSession | None:
        """The live session, if any."""
        return self._session

    def script(self, *outcomes: Outcome) -> None:
        """Append outcomes for the next attempts."""
        self._outcomes.extend(outcomes)

    async def wait_session(self, number: int | None = None, timeout: float = 30.0) -> SimSession:
        """Wait for a live session (numbered ``number`` or later) and return it."""

        async def until_live() -> SimSession:
            while True:
                session = self._session
                if session is not None and (number is None or session.number >= number):
                    return session
                await self._changed.wait()

        return await asyncio.wait_for(until_live(), timeout)

    async def emit(self, *events: Event) -> None:
        """Deliver events in the live session, through neonize's decoding path."""
        session = self._session
        if session is None:
            raise TransportError("no live session to emit in")
        await self._emit_to(session, events)

    async def emit_late(self, session: SimSession, *events: Event) -> None:
        """Deliver events through the sink of a session that may have ended: a late callback."""
        await self._emit_to(session, events)

    async def connect(self) -> None:
        """Connected, in the live session."""
        await self.emit(connected_event())

    async def drop(self) -> None:
        """Disconnected, but the session stays: whatsmeow is reconnecting it."""
        await self.emit(disconnected_event())

    async def disconnect(self) -> None:
        """Disconnected, then the session ends (the Go side stopped)."""
        session = self._session
        if session is None:
            raise TransportError("no live session to disconnect")
        await self._emit_to(session, (disconnected_event(),))
        session.ended.set()

    # -- helpers ----------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _emit_to(self, session: SimSession, events: Iterable[Event]) -> None:
        batch = [(event_code(type(e)), e.SerializePartialToString()) for e in events]
        session.events += len(batch)
        await self._on_go_thread(lambda: self._execute(session.sink, batch))

    def _execute(self, sink: EventSink, batch: list[tuple[int, bytes]]) -> None:
        self._target = sink
        try:
            for code, data in batch:
                buffer = ctypes.create_string_buffer(data, max(1, len(data)))
                self._callback(self._uuid, ctypes.addressof(buffer), len(data), code)
        finally:
            self._target = None

    def _to_target(self, event: Event) -> None:
        target = self._target
        if target is not None:
            target(event)

    async def _on_go_thread(self, job: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                job()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)

        if self._go_thread is None:
            self._go_thread = threading.Thread(target=self._go_loop, name="sim-go", daemon=True)
            self._go_thread.start()
        self._jobs.put(run)
        await done

    def _go_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


# -- event builders: real neonize protobuf messages --------------------------------------------


def _jid(address: str) -> Any:
    user, _, server = address.partition("@")
    return pb.JID(User=user, Server=server or "s.whatsapp.net", RawAgent=0, Device=0, Integrator=0)


def message_event(
    chat: str = "15550000001@s.whatsapp.net",
    text: str = "hello",
    *,
    id: str | None = None,
    sender: str | None = None,
    timestamp: int | None = None,
) -> Event:
    """An inbound text ``Message`` event."""
    source = pb.MessageSource(
        Chat=_jid(chat),
        Sender=_jid(sender or chat),
        IsFromMe=False,
        IsGroup=chat.endswith("@g.us"),
    )
    info = pb.MessageInfo(
        MessageSource=source,
        ID=id or f"MSG{time.monotonic_ns():X}",
        Type="text",
        Pushname="",
        Timestamp=timestamp if timestamp is not None else int(time.time()),
    )
    event: Event = pb.Message(Info=info, Message=e2e.Message(conversation=text))
    return event


def connected_event() -> Event:
    event: Event = pb.Connected(status=True)
    return event


def disconnected_event() -> Event:
    event: Event = pb.Disconnected(status=True)
    return event


def logged_out_event() -> Event:
    event: Event = pb.LoggedOut(OnConnect=False)
    return event


def stream_replaced_event() -> Event:
    event: Event = pb.StreamReplaced()
    return event


def temporary_ban_event() -> Event:
    event: Event = pb.TemporaryBan(Expire=3600)
    return event


def client_outdated_event() -> Event:
    event: Event = pb.ClientOutdated()
    return event
