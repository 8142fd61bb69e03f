"""``Host``: what the app runs: the client and its transport, Redis, recorders, scheduler, the
memory guard and the request limiters. Opened by the app's lifespan, closed in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from waclient.client import Backoff, Client, ClientStats
from waclient.events import ReceiptEv
from waclient.lifetime import Lifetime
from waclient.memory import (
    GuardStatus,
    MemoryGuard,
    MemoryGuardStats,
    MemoryLimits,
    MemorySnapshot,
    derive_limits,
    describe,
    machine_memory,
    process_memory,
    take_snapshot,
)
from waclient.transports import IsolatedTransport, Transport, WorkerStats
from waclient.webhooks.events import Event, event_from_outage, event_from_receipt

from .config import SHUTDOWN_SHARES, Settings
from .door import Door
from .healing import ClientSupervisor, HealingStats
from .limits import RateLimiter, SendBudget
from .metrics import HostMetrics
from .readiness import ReadinessProbe
from .state_events import StateEvents, StateEventsStats

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from waclient.recorders import (
        InboundRecorder,
        OutboundRecorder,
        Recorder,
        RecorderOutage,
        RecorderStats,
    )
    from waclient.redis import RedisHealth
    from waclient.scheduler import Scheduler, SchedulerStats
    from waclient.spool import Spool
    from waclient.transports import SentMessage
    from waclient.webhooks import EndpointStore, WebhookDispatcher

    from .http_guard import GuardStats, HttpGuardStats

__all__ = ["Host", "HostStats", "build_transport", "worker_budget"]

log = logging.getLogger("waclient.host")

R = TypeVar("R", bound="Recorder")

MAX_WORKER_BUDGET = 150 * 2**20
WORKER_BUDGET_FRACTION = 0.40
STATE_EVENTS_MAXLEN = 10_000
STATE_EVENTS_BACKLOG = 100
RECEIPTS_MAXLEN = 100_000
RECEIPTS_BACKLOG = 1_000
"""Receipts held in memory while Redis is down (a few hundred bytes each)."""


@dataclass(frozen=True, slots=True)
class HostStats:
    """What :meth:`Host.statistics` returns; None for a component the host does not run."""

    client: ClientStats | None
    worker: WorkerStats | None
    """The isolated transport's worker."""
    inbound: RecorderStats | None
    outbound: RecorderStats | None
    scheduler: SchedulerStats | None
    guard: MemoryGuardStats
    http: HttpGuardStats | None
    """The HTTP guard's refusals, once :func:`.http_guard.server_config` serves the app."""
    healing: HealingStats | None
    """The client supervisor: state, restarts, the next restart, whether it gave up."""
    events: dict[str, StateEventsStats]
    """The event streams the host writes ("state", "receipts"): published, dropped, backlog."""
    rate_limited: int
    """Requests refused with 429 by a key's send or scheduling bucket."""
    scheduled_sends_paced: int
    """Scheduled sends that waited for a token of the number's outbound budget."""

    @property
    def recorders(self) -> dict[str, RecorderStats]:
        """The recorders' statistics by direction ("in", "out")."""
        pairs = (("in", self.inbound), ("out", self.outbound))
        return {direction: st for direction, st in pairs if st is not None}


def worker_budget(settings: Settings, machine: int) -> int:
    """The isolated worker's RSS budget: set, or 40 % of the machine's memory, <= 150 MiB."""
    if settings.worker_rss_budget is not None:
        return settings.worker_rss_budget
    return min(MAX_WORKER_BUDGET, int(machine * WORKER_BUDGET_FRACTION))


def build_transport(settings: Settings, machine: int) -> Transport:
    """The transport ``WACLIENT_TRANSPORT`` names. Imports are lazy: ``isolated`` does not load
    the in-process client."""
    database = settings.session_dir / f"{settings.session_name}.db"
    if settings.transport == "isolated":
        from waclient.transports.isolated import IsolatedTransport

        return IsolatedTransport(
            database,
            name=settings.session_name,
            proxy=settings.proxy,
            rss_budget=worker_budget(settings, machine),
            worker=settings.worker,
        )
    if settings.transport == "neonize":
        from waclient.transports.inprocess import NeonizeTransport

        return NeonizeTransport(database, name=settings.session_name, proxy=settings.proxy)
    from waclient.transports.simulated import SimulatedTransport

    return SimulatedTransport(name=str(settings.session_dir / "simulated"))


class Host(Lifetime):
    """The running host. ``request_shutdown`` is what the hard memory limit calls."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport | None = None,
        request_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.machine = machine_memory()
        self.limits: MemoryLimits = derive_limits(
            self.machine,
            soft=settings.memory_soft_limit,
            hard=settings.memory_hard_limit,
            soft_fraction=settings.memory_soft_fraction,
            hard_fraction=settings.memory_hard_fraction,
        )
        self._transport_override = transport
        self.request_shutdown = request_shutdown
        self.exit_code = 0
        """Non-zero when the host asked to stop for a restart (3: hard memory limit)."""
        self.send_limiter = RateLimiter(
            settings.send_rate, settings.send_burst, max_keys=settings.rate_limit_keys
        )
        self.schedule_limiter = RateLimiter(
            settings.schedule_rate, settings.schedule_burst, max_keys=settings.rate_limit_keys
        )
        self.send_budget = SendBudget(settings.send_rate, settings.send_burst)
        """The number's one outbound budget: HTTP and scheduled sends alike."""
        self.http_guard: GuardStats | None = None
        """The HTTP guard's counters, once :func:`.http_guard.server_config` serves the app."""
        self.metrics = HostMetrics(self)
        self.door = Door(settings, on_failure=self.metrics.auth_failures.inc)
        """The API key check and the failed-key throttle (per client address)."""
        self.readiness = ReadinessProbe(self)
        self.transport: Transport | None = None
        self.client: Client | None = None
        self.redis: Redis | None = None
        self.redis_health: RedisHealth | None = None
        self.inbound: InboundRecorder | None = None
        self.outbound: OutboundRecorder | None = None
        self.scheduler: Scheduler | None = None
        self.healing: ClientSupervisor | None = None
        self.state_events: StateEvents | None = None
        """Session, memory and recorder-outage events (``{session}:events``)."""
        self.receipt_events: StateEvents | None = None
        """Receipts (``{session}:receipts``)."""
        self.webhooks: WebhookDispatcher | None = None
        self.webhook_store: EndpointStore | None = None
        self._stack: AsyncExitStack | None = None
        self.guard = MemoryGuard(
            self.limits,
            measure=self.memory_used,
            snapshot=self.snapshot,
            on_soft=self._on_soft,
            on_hard=self._on_hard,
            check_interval=settings.memory_check_interval,
            log_interval=settings.memory_log_interval,
        )

    # -- memory ----------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        pid = self.transport.worker_pid if isinstance(self.transport, IsolatedTransport) else None
        return [pid] if pid is not None else []

    def memory_used(self) -> int:
        """PSS of this process plus the worker's (RSS where PSS cannot be read)."""
        total = 0
        for pid in (None, *self.worker_pids()):
            mem = process_memory(pid)
            if mem is not None:
                total += mem.cost
        return total

    def snapshot(self, *, gc_objects: bool = False) -> MemorySnapshot:
        registry = self.client.registry if self.client is not None else None
        return take_snapshot(
            registry=registry, worker_pids=self.worker_pids(), gc_objects=gc_objects
        )

    def statistics(self) -> HostStats:
        """Every component's :meth:`statistics`, read together (``/metrics``, ``/health/*``)."""
        transport = self.transport
        return HostStats(
            client=self.client.statistics() if self.client is not None else None,
            worker=transport.statistics() if isinstance(transport, IsolatedTransport) else None,
            inbound=self.inbound.statistics() if self.inbound is not None else None,
            outbound=self.outbound.statistics() if self.outbound is not None else None,
            scheduler=self.scheduler.statistics() if self.scheduler is not None else None,
            guard=self.guard.statistics(),
            http=self.http_guard.statistics() if self.http_guard is not None else None,
            healing=self.healing.statistics() if self.healing is not None else None,
            events={name: events.statistics() for name, events in self.event_streams.items()},
            rate_limited=self.send_limiter.limited + self.schedule_limiter.limited,
            scheduled_sends_paced=self.send_budget.waited,
        )

    def _on_soft(self, status: GuardStatus) -> None:
        self._memory_event("memory.soft_limit", status, status.limits.soft)

    def _memory_event(self, event_type: str, status: GuardStatus, limit: int) -> None:
        if self.state_events is not None:
            self.state_events.emit(event_type, {"used": status.used, "limit": limit})

    def _on_recorder_outage(self, outage: RecorderOutage) -> None:
        _publish(self.state_events, event_from_outage(outage))

    def _on_receipt(self, receipt: ReceiptEv) -> None:
        _publish(self.receipt_events, event_from_receipt(receipt))

    def _on_hard(self, status: GuardStatus) -> None:
        self._memory_event("memory.hard_limit", status, status.limits.hard)
        self.exit_code = 3
        if self.request_shutdown is not None:
            self.request_shutdown()

    # -- lifecycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        """``start()``: open every component on one :class:`~contextlib.AsyncExitStack`; if
        one fails, the ones opened before it are closed (in reverse order) and the error
        propagates. Once, as every lifetime: a second start raises ``LifetimeError``."""
        async with AsyncExitStack() as stack:
            await self._enter(stack)
            self._stack = stack.pop_all()

    async def _close(self) -> None:
        """``close()``: leave the stack: every component closes in the reverse of the order it
        was opened in (the guard, the scheduler, the client, the recorders, their spools, the
        event streams' writers, Redis), so work stops being taken before what it writes to goes
        away. Spooled records stay on disk. Idempotent."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _enter(self, stack: AsyncExitStack) -> None:
        """What :meth:`start` enters, in order. Each component is pushed right after it is
        opened, so the stack's close order is the reverse of this one by construction: the
        guard, the scheduler, the client supervisor (and its client), the recorders (their
        final flush), their spools, the event streams' writers, the webhook dispatcher, Redis."""
        s = self.settings
        s.session_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s; transport %s", describe(self.limits), s.transport)
        if s.redis_url is not None:
            # webhooks before the recorders: they close after the recorders' final flush, so
            # a hostile receiver cannot cost a record (docs/host.md, "Shutdown")
            await self._open_redis(stack, s.redis_url)
            await self._open_webhooks(stack, s.redis_url)
            await self._open_recording(stack)
        else:
            log.warning("REDIS_URL is not set: no recorders, no scheduler, no webhooks")
        self.healing = ClientSupervisor(
            self._make_client,
            cooldown=s.restart_cooldown,
            max_restarts=s.max_restarts,
            events=self.state_events,
        )
        await self.healing.start()
        stack.push_async_callback(self.healing.close)
        if self.scheduler is not None:
            await stack.enter_async_context(self.scheduler)
        self.guard.check()
        await self.guard.start()
        stack.push_async_callback(self.guard.close)

    def _make_client(self) -> Client:
        """A fresh client on a fresh transport (the override, in tests), the recorders attached;
        the supervisor starts it, and makes another after a FAILED."""
        s = self.settings
        transport = self._transport_override or build_transport(s, self.machine.total)
        self.transport = transport
        self.client = Client(
            transport,
            backoff=Backoff(initial=s.backoff_initial, maximum=s.backoff_max),
            max_failures=s.max_failures,
        )
        for recorder in (self.inbound, self.outbound):
            if recorder is not None:
                recorder.attach(self.client)
        if self.receipt_events is not None:
            self.client.on(ReceiptEv, self._on_receipt)
        return self.client

    async def _send_text(self, chat: str, text: str) -> SentMessage:
        """The current client's send: the scheduler outlives the supervisor's restarts."""
        if self.client is None:
            raise RuntimeError("no client")
        return await self.client.send_text(chat, text)

    async def _open_redis(self, stack: AsyncExitStack, url: str) -> None:
        """Redis and its health probe."""
        from waclient.redis import RedisHealth, open_redis

        s = self.settings
        redis = open_redis(url, client_name=f"waclient-host-{s.session_name}")
        self.redis = redis
        stack.push_async_callback(_close_quietly, redis)
        self.redis_health = RedisHealth(redis, timeout=1.0)

    async def _open_recording(self, stack: AsyncExitStack) -> None:
        """The event streams' writers, the recorders (each with its spool;
        :meth:`_make_client` attaches them to every client; their outages are state events),
        and the scheduler, which :meth:`_enter` enters after the client."""
        from waclient.recorders import InboundRecorder, OutboundRecorder
        from waclient.scheduler import Scheduler

        s = self.settings
        redis = self.redis
        assert redis is not None
        self.state_events = await self._open_events(
            stack, redis, "events", STATE_EVENTS_MAXLEN, STATE_EVENTS_BACKLOG
        )
        self.receipt_events = await self._open_events(
            stack, redis, "receipts", RECEIPTS_MAXLEN, RECEIPTS_BACKLOG
        )
        self.inbound = await self._open_recorder(stack, InboundRecorder, "in", redis)
        self.outbound = await self._open_recorder(stack, OutboundRecorder, "out", redis)
        self.scheduler = Scheduler(
            redis,
            self._send_text,
            namespace=f"{s.session_name}:scheduler",
            max_jobs_per_session=s.max_scheduled,
            max_text_length=s.max_text_length,
            poll_interval=s.scheduler_poll,
            min_interval=s.cron_min_interval,
            pacer=self.send_budget,
        )

    async def _open_webhooks(self, stack: AsyncExitStack, url: str) -> None:
        """The endpoint store and the dispatcher, on a Redis connection pool of their own (the
        dispatcher keeps one connection in a blocking read)."""
        from waclient.redis import open_redis
        from waclient.webhooks import (
            EndpointStore,
            WebhookDispatcher,
            default_sources,
            static_endpoints,
        )

        s = self.settings
        assert self.redis is not None
        self.webhook_store = EndpointStore(
            self.redis,
            key_prefix=s.session_name,
            max_endpoints=s.webhook_max_endpoints,
            allow_private=s.webhook_allow_private,
        )
        redis = open_redis(
            url,
            client_name=f"waclient-webhooks-{s.session_name}",
            max_connections=2 * s.webhook_max_endpoints + 4,
        )
        stack.push_async_callback(_close_quietly, redis)
        self.webhooks = WebhookDispatcher(
            redis,
            sources=default_sources(s.session_name),
            static=static_endpoints(s.webhook_url_list(), s.webhook_secrets()),
            store=self.webhook_store,
            key_prefix=s.session_name,
            consumer=f"{s.session_name}-{socket.gethostname()}-{os.getpid()}",
            timeout=s.webhook_timeout,
            max_in_flight=s.webhook_max_in_flight,
            max_attempts=s.webhook_max_attempts,
            allow_private=s.webhook_allow_private,
            close_timeout=s.shutdown_timeout * SHUTDOWN_SHARES["webhooks"],
        )
        await self.webhooks.start()
        stack.push_async_callback(self.webhooks.close)

    async def _open_events(
        self, stack: AsyncExitStack, redis: Redis, name: str, maxlen: int, backlog: int
    ) -> StateEvents:
        """The writer of the stream ``{session}:{name}``, started; the stack closes it."""
        events = StateEvents(
            redis, f"{self.settings.session_name}:{name}", maxlen=maxlen, max_backlog=backlog
        )
        return await stack.enter_async_context(events)

    async def _open_recorder(
        self, stack: AsyncExitStack, kind: type[R], direction: str, redis: Redis
    ) -> R:
        """A recorder of ``kind`` on its own spool, started; the stack closes the recorder (it
        spools what it could not write), then the spool."""
        s = self.settings
        spool = self._spool(direction)
        stack.push_async_callback(_close_spool, spool)
        recorder = kind(
            redis,
            spool=spool,
            key_prefix=s.session_name,
            max_buffer=s.recorder_buffer,
            on_outage=self._on_recorder_outage,
        )
        await recorder.start()
        stack.push_async_callback(recorder.close, s.shutdown_timeout * SHUTDOWN_SHARES["recorder"])
        return recorder

    def _spool(self, direction: str) -> Spool:
        from waclient.spool import Spool

        s = self.settings
        return Spool(
            s.session_dir / f"spool-{direction}.sqlite",
            max_records=s.spool_max_records,
            max_bytes=s.spool_max_bytes,
        )

    # -- views -----------------------------------------------------------------------------

    @property
    def event_streams(self) -> dict[str, StateEvents]:
        """The event streams' writers by name ("state", "receipts"), when Redis is configured."""
        pairs = (("state", self.state_events), ("receipts", self.receipt_events))
        return {name: events for name, events in pairs if events is not None}

    @property
    def spools(self) -> list[Path]:
        s = self.settings
        return [s.session_dir / f"spool-{d}.sqlite" for d in ("in", "out")]


def _publish(events: StateEvents | None, event: Event) -> None:
    if events is not None:
        events.emit(event.type, event.data, event.timestamp)


async def _close_spool(spool: Spool) -> None:
    if not spool.closed:
        await asyncio.to_thread(spool.close)


async def _close_quietly(redis: Redis) -> None:
    with contextlib.suppress(Exception):
        await redis.aclose()
