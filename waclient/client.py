"""``Client``: lifecycle, THE reconnect supervisor, and a fresh connection scope per connection.

Exactly one component starts sessions: the supervisor task here. It runs one transport session
at a time; between sessions it waits a capped exponential backoff with jitter; it stops for good
on LoggedOut, StreamReplaced, TemporaryBan and ClientOutdated, and gives up (``FAILED``) after
``max_failures`` attempts in a row that never connected. Each attempt has a generation number;
events that arrive for an older generation are dropped and counted.

Events cross from the Go side's thread to the event loop through a bounded inbox: a Go thread
that finds it full waits (backpressure), so no amount of event flood grows memory here. One pump
task hands them to the registry in order, awaiting async handlers.

Handlers registered with :meth:`Client.on` live as long as the client; those registered on
:attr:`Client.connection` live for the current connection only: the scope opens when Connected
arrives and closes after Disconnected has been dispatched, before any new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import shutil
import struct
import tempfile
import threading
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from waclient.errors import WaclientError
from waclient.events import (
    TERMINAL_EVENTS,
    ClientOutdatedEv,
    ConnectedEv,
    DisconnectedEv,
    Event,
    LoggedOutEv,
    StreamReplacedEv,
    TemporaryBanEv,
    event_code,
    event_type,
    is_event_type,
)
from waclient.handlers import Handler, HandlerRegistry, Scope, Subscription
from waclient.inbox import Inbox
from waclient.lifetime import Lifetime, LifetimeError
from waclient.messages import jid_to_str, message_kind, message_text, to_jid
from waclient.overflow import DiskQueue
from waclient.transports import calls
from waclient.transports.base import (
    EventSink,
    SentMessage,
    SessionStore,
    Transport,
    TransportError,
)
from waclient.whatsapp import WhatsApp

__all__ = [
    "Backoff",
    "Client",
    "ClientState",
    "ClientStats",
    "NotConnectedError",
    "StateChange",
]

log = logging.getLogger(__name__)

E = TypeVar("E")


class NotConnectedError(WaclientError, RuntimeError):
    """The client has no live connection for what was asked."""


class ClientState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    """The session runs but its connection dropped; whatsmeow is reconnecting it."""
    BACKOFF = "backoff"
    STOPPED = "stopped"
    LOGGED_OUT = "logged_out"
    STREAM_REPLACED = "stream_replaced"
    TEMPORARY_BAN = "temporary_ban"
    CLIENT_OUTDATED = "client_outdated"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """No further attempts will be made from this state."""
        return self in _TERMINAL_STATES


_TERMINAL_STATES = frozenset(
    {
        ClientState.STOPPED,
        ClientState.LOGGED_OUT,
        ClientState.STREAM_REPLACED,
        ClientState.TEMPORARY_BAN,
        ClientState.CLIENT_OUTDATED,
        ClientState.FAILED,
    }
)
_STATE_FOR_TERMINAL_EVENT: dict[type[Any], ClientState] = {
    LoggedOutEv: ClientState.LOGGED_OUT,
    StreamReplacedEv: ClientState.STREAM_REPLACED,
    TemporaryBanEv: ClientState.TEMPORARY_BAN,
    ClientOutdatedEv: ClientState.CLIENT_OUTDATED,
}
assert set(_STATE_FOR_TERMINAL_EVENT) == set(TERMINAL_EVENTS)


@dataclass(frozen=True, slots=True)
class StateChange:
    """Dispatched to ``client.on(StateChange, fn)`` handlers on every lifecycle transition."""

    old: ClientState
    new: ClientState
    generation: int
    delay: float | None = None
    """Entering BACKOFF: the seconds until the next attempt."""


@dataclass(frozen=True, slots=True)
class ClientStats:
    """What :meth:`Client.statistics` returns: the lifecycle counters at one moment."""

    state: ClientState
    generation: int
    """Session attempts begun (each has its own generation; stale events are dropped)."""
    attempts: int
    failures_in_a_row: int
    stale_events: int
    """Events of an earlier generation, dropped."""
    handler_errors: int
    listeners: int
    listeners_by_type: dict[str, int]
    inbox: int
    """Events received and waiting in memory to be dispatched."""
    inbox_bytes: int
    inbox_disk: int
    """Events of a burst waiting on disk (the in-memory inbox was full)."""
    inbox_disk_bytes: int
    overflowed: int
    """Events ever written to disk."""
    producers_waiting: int
    """Go threads waiting now because memory and the disk budget are full."""
    producer_waits: int
    """Times a Go thread had to wait for room (memory and disk full)."""
    dropped_at_close: int
    """Events still waiting when ``close()`` stopped dispatching (``close_timeout``)."""
    tasks: int
    """Tasks of the client still running (the event pump, the supervisor, a grace timer)."""
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the state as its value."""
        return asdict(self) | {"state": self.state.value}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter.

    The n-th failure in a row waits ``min(maximum, initial * factor**(n-1))`` scaled by a random
    factor in ``[1 - jitter, 1]``, so clients that lost the network together do not return
    together.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be within [0, 1]")

    def ceiling(self, failures: int) -> float:
        """The delay before jitter after ``failures`` failures in a row (>= 1)."""
        exponent = max(0, failures - 1)
        if self.initial == 0:
            return 0.0
        # In the log domain, so that a long run of failures cannot overflow.
        if exponent * math.log(self.factor) >= math.log(self.maximum / self.initial):
            return self.maximum
        return float(self.initial * self.factor**exponent)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A jittered delay within ``[ceiling * (1 - jitter), ceiling]``."""
        ceiling = self.ceiling(failures)
        r = (rng or random).random()
        return ceiling * (1.0 - self.jitter * r)


class Client(WhatsApp, Lifetime):
    """A WhatsApp client on any :class:`~waclient.transports.Transport`.

    Use ``async with Client(transport) as client:``; or ``await client.start()`` and
    ``await client.close()``. The WhatsApp methods (``send_image``, ``reply``, ``group_info``,
    ...) come from :class:`~waclient.whatsapp.WhatsApp`; :meth:`call` reaches every other
    public neonize method by name.

    ``inbox_size`` and ``inbox_bytes`` bound the events waiting in memory for the loop, in count
    and in bytes; past them a burst overflows to disk, up to ``overflow_bytes`` (0: no disk; the
    Go side then waits while memory is full), in ``overflow_dir`` (default: next to the
    transport's session database, else a temporary directory). ``max_media_bytes`` bounds the
    media a send or download may hold in memory. ``close_timeout`` bounds how long
    :meth:`close` goes on dispatching the events already received.

    ``close()`` works from anywhere (see :meth:`close`); a closed client is not reopened.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backoff: Backoff | None = None,
        max_failures: int = 20,
        reconnect_grace: float = 60.0,
        max_listeners: int | None = 100,
        strict_listeners: bool = False,
        inbox_size: int = 1024,
        inbox_bytes: int = 64 * 2**20,
        overflow_bytes: int = 256 * 2**20,
        overflow_dir: str | Path | None = None,
        max_media_bytes: int = 64 * 2**20,
        close_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be >= 1")
        if inbox_size < 1 or inbox_bytes < 1:
            raise ValueError("inbox_size and inbox_bytes must be >= 1")
        if overflow_bytes < 0:
            raise ValueError("overflow_bytes must be >= 0 (0: no disk overflow)")
        if close_timeout < 0:
            raise ValueError("close_timeout must be >= 0")
        self.transport = transport
        self.backoff = backoff or Backoff()
        self.max_failures = max_failures
        self.reconnect_grace = reconnect_grace
        self.registry = HandlerRegistry(
            max_listeners, strict=strict_listeners, name="client", accepts=_client_event_type
        )
        self.state = ClientState.IDLE
        self.generation = 0
        """The number of the current (or last) session attempt."""
        self.attempts = 0
        self.failures = 0
        """Attempts in a row that never connected."""
        self.stale_events = 0
        """Events of an older generation (or after their session ended), dropped."""
        self.last_error: str | None = None
        self.max_media_bytes = max_media_bytes
        self.overflow_bytes = overflow_bytes
        self.close_timeout = close_timeout
        self.dropped_at_close = 0
        """Events still waiting when :meth:`close` gave up dispatching them (``close_timeout``)."""
        self._overflow_dir = Path(overflow_dir) if overflow_dir is not None else None
        self._own_overflow_dir: Path | None = None
        self._rng = rng or random.Random()
        self._lifetime = self.registry.scope("client")
        self._connection: Scope | None = None
        self._inbox_bounds = (inbox_size, inbox_bytes)
        self._inbox: Inbox[tuple[int, object]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._accepting: int | None = None
        self._session_connected = False
        self._terminal: ClientState | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[frozenset[ClientState], asyncio.Future[ClientState]]] = []

    # -- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor; it connects in the background. Once: a closed client raises
        :class:`~waclient.lifetime.LifetimeError` (make a new one)."""
        await super().start()

    async def close(self) -> None:
        """Stop the session, the supervisor and the pump; remove every handler; stop the
        transport (for :class:`~waclient.transports.IsolatedTransport`, its worker process).

        Events already received are dispatched first, for up to ``close_timeout`` seconds; then
        the handler still running is cancelled and what still waits is dropped (counted in
        :attr:`dropped_at_close`, logged). Idempotent, and safe from anywhere:
        concurrent closes share one teardown; a close that is cancelled (a timeout) finishes the
        teardown before the cancellation goes on. Called from a handler (the pump runs it),
        ``close()`` begins the teardown and returns at once, before the teardown, which then
        waits for that handler to return; :meth:`wait_closed` waits for the end.
        """
        await super().close()

    def on(self, event_type: type[E], handler: Handler[E]) -> Subscription[E]:
        """Register a handler for the client's whole life.

        ``event_type`` is a neonize event type (:mod:`waclient.events`), ``SentMessage`` or
        ``StateChange``; anything else would never fire and raises ``TypeError``.
        """
        return self._lifetime.on(event_type, handler)

    @property
    def connection(self) -> Scope:
        """The scope of the current connection; its handlers go when the connection drops.

        Raises :class:`NotConnectedError` between connections: register per-connection handlers
        from a ``ConnectedEv`` handler.
        """
        scope = self._connection
        if scope is None:
            raise NotConnectedError(f"no live connection (state: {self.state.value})")
        return scope

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def listener_count(self, event_type: type[Any] | None = None) -> int:
        """Live handlers of the client, of one event type or of all."""
        return self.registry.count(event_type)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call any public neonize ``NewClient`` method by name in the live connection, e.g.
        ``await client.call("get_blocklist")``; its result, decoded with neonize's types.

        A send (a method that answers with a ``SendResponse``) returns a
        :class:`~waclient.transports.SentMessage` and dispatches it to handlers. Raises
        :class:`~waclient.transports.CallError` for an unknown or private name or an argument
        that cannot cross, and :class:`NotConnectedError` without a live connection, both
        before anything is sent.
        """
        calls.check_method(method)  # the transport checks the arguments before sending
        if self._connection is None:
            raise NotConnectedError(
                f"cannot call {method}: no live connection (state: {self.state.value})"
            )
        result = await self.transport.call(method, *args, **kwargs)
        if not _is_send_response(result):
            return result
        sent = _sent_message(method, args, kwargs, result)
        await self.registry.dispatch_async(sent)
        return sent

    async def wait_for(self, *states: ClientState, timeout: float | None = None) -> ClientState:
        """Wait until the client is in one of ``states``; return that state."""
        if self.state in states:
            return self.state
        future: asyncio.Future[ClientState] = asyncio.get_running_loop().create_future()
        entry = (frozenset(states), future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def idle(self) -> None:
        """Wait until every event received so far has been dispatched."""
        if self._inbox is not None:
            await self._inbox.join()

    def statistics(self) -> ClientStats:
        """A snapshot of the lifecycle counters, for logs and health endpoints."""
        inbox = self._inbox.statistics() if self._inbox is not None else None
        return ClientStats(
            state=self.state,
            generation=self.generation,
            attempts=self.attempts,
            failures_in_a_row=self.failures,
            stale_events=self.stale_events,
            handler_errors=self.registry.handler_errors,
            listeners=self.registry.count(),
            listeners_by_type=self.registry.counts(),
            inbox=inbox.events if inbox is not None else 0,
            inbox_bytes=inbox.bytes if inbox is not None else 0,
            inbox_disk=inbox.disk_events if inbox is not None else 0,
            inbox_disk_bytes=inbox.disk_bytes if inbox is not None else 0,
            overflowed=inbox.overflowed if inbox is not None else 0,
            producers_waiting=inbox.producers_waiting if inbox is not None else 0,
            producer_waits=inbox.producer_waits if inbox is not None else 0,
            dropped_at_close=self.dropped_at_close,
            tasks=self.tasks(),
            last_error=self.last_error,
        )

    # -- the lifetime -------------------------------------------------------------------------

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._inbox = Inbox(
            self._loop,
            *self._inbox_bounds,
            overflow=self._disk_queue(),
            decode=_from_disk if self.overflow_bytes else None,
        )
        self.spawn(self._pump_events(), name="waclient-pump")
        self._supervisor = self.spawn(self._supervise(), name="waclient-supervisor")

    async def _close(self) -> None:
        """Stop the session (no more events), let the supervisor dispatch what was received
        and end, then release everything; the lifetime then cancels the pump and the rest."""
        self._cancel_grace()
        try:
            await self.transport.stop()
            await self._supervisor_dispatched()
        finally:
            self._close_connection()
            self._lifetime.close()
            await self.transport.close()
            if self._inbox is not None:
                self._inbox.close()
            if self._own_overflow_dir is not None:
                shutil.rmtree(self._own_overflow_dir, ignore_errors=True)
            if not self.state.terminal:
                self._set_state(ClientState.STOPPED)
            self._fail_waiters()

    def _lifetime_name(self) -> str:
        return "Client"

    # -- the supervisor ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self.closing:
            self.generation += 1
            self.attempts += 1
            generation = self.generation
            self._session_connected = False
            self._accepting = generation
            self._set_state(ClientState.CONNECTING)
            try:
                await self.transport.run(self._sink_for(generation))
            except TransportError as exc:
                self.last_error = str(exc)
                # A storm of failures would flood the log: 1st, 2nd, 4th, 8th... in a row.
                level = logging.INFO if _power_of_two(self.failures + 1) else logging.DEBUG
                log.log(level, "attempt %d failed: %s", generation, exc)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("attempt %d: transport raised unexpectedly", generation)
            await self._finish_generation()
            self._cancel_grace()
            self._close_connection()
            if self.closing:
                return
            if self._terminal is not None:
                self._set_state(self._terminal)
                return
            self.failures = 0 if self._session_connected else self.failures + 1
            if self.failures >= self.max_failures:
                log.error("giving up after %d failed attempts in a row", self.failures)
                self._set_state(ClientState.FAILED)
                return
            delay = self.backoff.delay(max(1, self.failures), self._rng)
            self._set_state(ClientState.BACKOFF, delay)
            await self.sleep(delay)

    async def _finish_generation(self) -> None:
        """Dispatch what the ended session had already queued, then refuse its late events."""
        await self.idle()
        self._accepting = None

    # -- events -----------------------------------------------------------------------------

    def _sink_for(self, generation: int) -> EventSink:
        loop, inbox = self._loop, self._inbox
        assert loop is not None and inbox is not None

        def abandon() -> bool:
            return self.closing or loop.is_closed()

        def sink(event: Event) -> None:
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError("transport events must come from the Go side's thread")
            data = event.SerializePartialToString()  # ByteSize() rejects partial proto2

            def to_disk() -> bytes:
                return _DISK_HEAD.pack(generation, event_code(type(event))) + data

            # Waits only while memory and the disk budget are both full.
            if not inbox.put((generation, event), len(data), abandon, to_disk):
                self.stale_events += 1

        return sink

    async def _pump_events(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        while True:
            generation, event = await inbox.get()
            try:
                await self._deliver(generation, event)
            except Exception:
                log.exception("delivering %s failed", type(event).__name__)
            finally:
                inbox.task_done()

    async def _deliver(self, generation: int, event: object) -> None:
        if generation != self._accepting:
            self.stale_events += 1
            return
        kind = type(event)
        if kind is ConnectedEv:
            self._cancel_grace()
            self._close_connection()
            self._connection = self._lifetime.scope(f"connection/{generation}")
            self._session_connected = True
            self.failures = 0
            self._set_state(ClientState.CONNECTED)
        await self.registry.dispatch_async(event)
        if kind is DisconnectedEv:
            self._close_connection()
            if not self.closing and self._terminal is None:
                self._set_state(ClientState.RECONNECTING)
                self._arm_grace(generation)
        elif kind in _STATE_FOR_TERMINAL_EVENT:
            self._terminal = _STATE_FOR_TERMINAL_EVENT[kind]
            self._close_connection()
            log.warning("%s: not reconnecting", kind.__name__)
            self._spawn_unless_closing(self.transport.stop(), "waclient-stop")

    # -- helpers ----------------------------------------------------------------------------

    def _disk_queue(self) -> DiskQueue | None:
        if not self.overflow_bytes:
            return None
        directory = self._overflow_dir
        if directory is None and isinstance(self.transport, SessionStore):
            directory = Path(self.transport.database + ".overflow")
        if directory is None:
            directory = self._own_overflow_dir = Path(tempfile.mkdtemp(prefix="waclient-inbox-"))
        return DiskQueue(directory, self.overflow_bytes)

    async def _supervisor_dispatched(self) -> None:
        """Wait, up to ``close_timeout``, for the supervisor to dispatch what the ended session
        queued and end (unless the supervisor is the one closing)."""
        supervisor = self._supervisor
        if supervisor is None or supervisor is asyncio.current_task():
            return
        done, _ = await asyncio.wait({supervisor}, timeout=self.close_timeout)
        if not done and self._inbox is not None:
            stats = self._inbox.statistics()
            self.dropped_at_close = stats.events + stats.disk_events
            log.warning(
                "close: the handlers did not finish within %gs; cancelling them and dropping "
                "%d events not dispatched yet",
                self.close_timeout,
                self.dropped_at_close,
            )

    def _arm_grace(self, generation: int) -> None:
        assert self._loop is not None
        self._cancel_grace()
        self._grace_timer = self._loop.call_later(
            self.reconnect_grace, self._grace_expired, generation
        )

    def _grace_expired(self, generation: int) -> None:
        self._grace_timer = None
        if generation == self._accepting and self._connection is None and not self.closing:
            log.warning(
                "session %d stayed disconnected for %.0fs; the supervisor takes over",
                generation,
                self.reconnect_grace,
            )
            self._spawn_unless_closing(self.transport.stop(), "waclient-stop")

    def _cancel_grace(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def _close_connection(self) -> None:
        scope, self._connection = self._connection, None
        if scope is not None:
            scope.close()

    def _spawn_unless_closing(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A task of the client, unless it is closing: its teardown stops the session itself."""
        if self.closing:
            coro.close()
            return
        with contextlib.suppress(LifetimeError):  # not open (never started)
            self.spawn(coro, name)

    def _set_state(self, state: ClientState, delay: float | None = None) -> None:
        if state is self.state:
            return
        log.debug("state %s -> %s (generation %d)", self.state.value, state.value, self.generation)
        change = StateChange(self.state, state, self.generation, delay)
        self.state = state
        self.registry.dispatch(change)
        still_waiting = []
        for states, future in self._waiters:
            if future.done():
                continue
            if state in states:
                future.set_result(state)
            else:
                still_waiting.append((states, future))
        self._waiters = still_waiting

    def _fail_waiters(self) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(NotConnectedError("client closed"))
        self._waiters = []


_DISK_HEAD = struct.Struct("<IH")
"""An event on disk: its generation (u32) and event code (u16), then its protobuf bytes."""


def _from_disk(record: bytes) -> tuple[tuple[int, object], int]:
    """An inbox item read back from disk, and its size."""
    generation, code = _DISK_HEAD.unpack_from(record)
    data = record[_DISK_HEAD.size :]
    return (generation, event_type(code).FromString(data)), len(data)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _client_event_type(kind: type[Any]) -> bool:
    """Types a client dispatches: the Go core's events and the library's own."""
    return is_event_type(kind) or kind in (SentMessage, StateChange)


def _is_send_response(result: object) -> bool:
    descriptor = getattr(result, "DESCRIPTOR", None)
    return descriptor is not None and descriptor.full_name == "neonize.SendResponse"


def _sent_to(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], response: Any) -> str:
    """The chat a send went to: the server's answer, else the call's own arguments."""
    if response.HasField("Chat"):
        return jid_to_str(response.Chat)
    if method == "reply_message":
        quoted: Any = kwargs.get("quoted", args[1] if len(args) > 1 else None)
        to = kwargs.get("to") or (quoted.Info.MessageSource.Chat if quoted is not None else None)
    else:
        to = kwargs.get("to", args[0] if args else None)
    return jid_to_str(to_jid(to)) if to is not None else ""


def _sent_message(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any], response: Any
) -> SentMessage:
    """What handlers (and the outbound recorder) learn about a send."""
    message = response.Message
    return SentMessage(
        id=str(response.ID),
        chat=_sent_to(method, args, kwargs, response),
        text=message_text(message),
        timestamp=int(response.Timestamp),
        kind=message_kind(message),
        method=method,
    )
