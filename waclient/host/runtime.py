"""``Host``: what the app runs: the client and its transport, Redis, recorders, scheduler, the
memory guard and the request limiters. Opened by the app's lifespan, closed in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from waclient.client import Backoff, Client
from waclient.memory import (
    GuardStatus,
    MemoryGuard,
    MemoryLimits,
    MemorySnapshot,
    derive_limits,
    describe,
    machine_memory,
    process_memory,
    take_snapshot,
)
from waclient.transport import NeonizeTransport, Transport

from .config import Settings
from .healing import ClientSupervisor, StateEvents
from .limits import RateLimiter
from .metrics import HostMetrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from waclient.recorders import InboundRecorder, OutboundRecorder
    from waclient.redis import RedisHealth
    from waclient.scheduler import Scheduler
    from waclient.transport import SentMessage
    from waclient.webhooks import EndpointStore, WebhookDispatcher

__all__ = ["Host", "build_transport", "simulated", "worker_budget"]

log = logging.getLogger("waclient.host")

MAX_WORKER_BUDGET = 150 * 2**20
WORKER_BUDGET_FRACTION = 0.40


def worker_budget(settings: Settings, machine: int) -> int:
    """The isolated worker's RSS budget: set, or 40 % of the machine's memory, <= 150 MiB."""
    if settings.worker_rss_budget is not None:
        return settings.worker_rss_budget
    return min(MAX_WORKER_BUDGET, int(machine * WORKER_BUDGET_FRACTION))


def build_transport(settings: Settings, machine: int) -> Transport:
    """The transport ``WACLIENT_TRANSPORT`` names. Imports are lazy: ``isolated`` does not load
    the in-process client, and ``simulated`` imports the harness only when chosen."""
    database = settings.session_dir / f"{settings.session_name}.db"
    if settings.transport == "isolated":
        from waclient.isolation import IsolatedTransport

        return IsolatedTransport(
            database,
            name=settings.session_name,
            proxy=settings.proxy,
            rss_budget=worker_budget(settings, machine),
            worker=settings.worker,
        )
    if settings.transport == "neonize":
        return NeonizeTransport(database, name=settings.session_name, proxy=settings.proxy)
    transport: Transport = simulated().SimulatedTransport(
        name=str(settings.session_dir / "simulated")
    )
    return transport


def simulated() -> Any:
    """The module of the simulated transport (``SimulatedTransport``, ``message_event``): the
    one place the host imports it, lazily, for ``WACLIENT_TRANSPORT=simulated`` only."""
    try:
        import harness.simulate as module
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "WACLIENT_TRANSPORT=simulated needs the harness extra: pip install 'waclient[harness]'"
        ) from exc
    return module


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Host:
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
        self._key_digests = [(f"key{i}", _digest(k)) for i, k in enumerate(settings.api_keys())]
        self.send_limiter = RateLimiter(
            settings.send_rate, settings.send_burst, max_keys=settings.rate_limit_keys
        )
        self.schedule_limiter = RateLimiter(
            settings.schedule_rate, settings.schedule_burst, max_keys=settings.rate_limit_keys
        )
        self.metrics = HostMetrics(self)
        self.transport: Transport | None = None
        self.client: Client | None = None
        self.redis: Redis | None = None
        self.redis_health: RedisHealth | None = None
        self.inbound: InboundRecorder | None = None
        self.outbound: OutboundRecorder | None = None
        self.scheduler: Scheduler | None = None
        self.healing: ClientSupervisor | None = None
        self.state_events: StateEvents | None = None
        self.webhooks: WebhookDispatcher | None = None
        self.webhook_store: EndpointStore | None = None
        self._webhook_redis: Redis | None = None
        self.guard = MemoryGuard(
            self.limits,
            measure=self.memory_used,
            snapshot=self.snapshot,
            on_soft=self._on_soft,
            on_hard=self._on_hard,
            check_interval=settings.memory_check_interval,
            log_interval=settings.memory_log_interval,
        )

    # -- auth ------------------------------------------------------------------------------

    def key_id(self, presented: str | None) -> str | None:
        """The id (``key0``, ``key1``...) of a valid key, else None. Constant-time: every
        configured key is compared, as SHA-256 digests, with ``hmac.compare_digest``."""
        if not presented:
            return None
        given = _digest(presented)
        found: str | None = None
        for key_id, digest in self._key_digests:
            if hmac.compare_digest(given, digest) and found is None:
                found = key_id
        return found

    # -- memory ----------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        pid = getattr(self.transport, "worker_pid", None)
        return [pid] if isinstance(pid, int) else []

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

    def worker_stats(self) -> dict[str, Any] | None:
        stats = getattr(self.transport, "stats", None)
        if stats is None or not callable(stats):
            return None
        value = stats()
        if hasattr(value, "__dataclass_fields__"):
            out: dict[str, Any] = {
                name: getattr(value, name) for name in value.__dataclass_fields__
            }
            out["rss_budget"] = getattr(self.transport, "rss_budget", None)
            return out
        return None

    def _on_soft(self, status: GuardStatus) -> None:
        self._memory_event("memory.soft_limit", status, status.limits.soft)

    def _memory_event(self, event_type: str, status: GuardStatus, limit: int) -> None:
        if self.state_events is not None:
            self.state_events.emit(event_type, {"used": status.used, "limit": limit})

    def _on_hard(self, status: GuardStatus) -> None:
        self._memory_event("memory.hard_limit", status, status.limits.hard)
        self.exit_code = 3
        if self.request_shutdown is not None:
            self.request_shutdown()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        s.session_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s; transport %s", describe(self.limits), s.transport)
        if s.redis_url is not None:
            from waclient.recorders import InboundRecorder, OutboundRecorder
            from waclient.redis import RedisHealth, open_redis
            from waclient.scheduler import Scheduler

            self.redis = open_redis(s.redis_url, client_name=f"waclient-host-{s.session_name}")
            self.redis_health = RedisHealth(self.redis, timeout=1.0)
            common: dict[str, Any] = {
                "key_prefix": s.session_name,
                "max_buffer": s.recorder_buffer,
            }
            self.inbound = InboundRecorder(self.redis, spool=self._spool("in"), **common)
            self.outbound = OutboundRecorder(self.redis, spool=self._spool("out"), **common)
            await self.inbound.start()
            await self.outbound.start()
            self.scheduler = Scheduler(
                self.redis,
                self._send_text,
                namespace=f"{s.session_name}:scheduler",
                max_jobs_per_session=s.max_scheduled,
                max_text_length=s.max_text_length,
                poll_interval=s.scheduler_poll,
            )
            await self.scheduler.start()
            await self._start_webhooks(s.redis_url)
        else:
            log.warning("REDIS_URL is not set: no recorders, no scheduler, no webhooks")
        self.state_events = StateEvents(self.redis, f"{s.session_name}:events")
        self.healing = ClientSupervisor(
            self._make_client,
            cooldown=s.restart_cooldown,
            max_restarts=s.max_restarts,
            events=self.state_events,
        )
        self.guard.check()
        await self.guard.start()
        await self.healing.start()

    def _make_client(self) -> Client:
        """A fresh client on a fresh transport (the override, in tests), with the recorders
        attached; the supervisor starts it (again after each FAILED)."""
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
        return self.client

    async def _send_text(self, chat: str, text: str) -> SentMessage:
        """The current client's send (the scheduler outlives restarts of the client)."""
        if self.client is None:
            raise RuntimeError("no client")
        return await self.client.send_text(chat, text)

    async def _start_webhooks(self, redis_url: str) -> None:
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
        self._webhook_redis = open_redis(
            redis_url,
            client_name=f"waclient-webhooks-{s.session_name}",
            max_connections=2 * s.webhook_max_endpoints + 4,
        )
        self.webhooks = WebhookDispatcher(
            self._webhook_redis,
            sources=default_sources(s.session_name),
            static=static_endpoints(s.webhook_url_list(), s.webhook_secrets()),
            store=self.webhook_store,
            key_prefix=s.session_name,
            consumer=f"{s.session_name}-{socket.gethostname()}-{os.getpid()}",
            timeout=s.webhook_timeout,
            max_in_flight=s.webhook_max_in_flight,
            max_attempts=s.webhook_max_attempts,
            allow_private=s.webhook_allow_private,
        )
        await self.webhooks.start()

    def _spool(self, direction: str) -> Any:
        from waclient.spool import Spool

        s = self.settings
        return Spool(
            s.session_dir / f"spool-{direction}.sqlite",
            max_records=s.spool_max_records,
            max_bytes=s.spool_max_bytes,
        )

    async def close(self) -> None:
        """Stop taking work, then close in reverse order; spooled records stay on disk."""
        await self.guard.close()
        if self.scheduler is not None:
            await self.scheduler.close()
        if self.healing is not None:
            await self.healing.close()
        elif self.client is not None:
            await self.client.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self._webhook_redis is not None:
            with contextlib.suppress(Exception):
                await self._webhook_redis.aclose()
        timeout = self.settings.shutdown_timeout / 2
        for recorder in (self.inbound, self.outbound):
            if recorder is not None:
                await recorder.close(timeout)
                spool = recorder.spool
                if spool is not None and not spool.closed:
                    await asyncio.to_thread(spool.close)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    # -- views -----------------------------------------------------------------------------

    @property
    def spools(self) -> list[Path]:
        s = self.settings
        return [s.session_dir / f"spool-{d}.sqlite" for d in ("in", "out")]
