"""Prometheus metrics of the host, in a registry of its own (one per app).

Request counters are updated by a middleware, labelled by route *template* (bounded
cardinality). Everything else is read from the running host when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from waclient.client import ClientState, ClientStats
from waclient.memory import MemoryGuardStats, MemorySnapshot
from waclient.transports import WorkerStats

from .webhook_metrics import webhook_metrics

if TYPE_CHECKING:
    from waclient.recorders import RecorderStats

    from .runtime import Host
    from .state_events import StateEventsStats

__all__ = ["CONTENT_TYPE", "HostMetrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HostMetrics:
    """The host's registry and its request-level collectors."""

    def __init__(self, host: Host) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "waclient_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "waclient_http_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.sends = Counter(
            "waclient_sends",
            "Send requests, by outcome (sent, not_connected, shed, failed, rate_limited).",
            ["outcome"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "waclient_auth_failures",
            "Requests refused for a missing or wrong API key.",
            registry=self.registry,
        )
        self.bodies_refused = Counter(
            "waclient_bodies_too_large", "Requests refused with 413.", registry=self.registry
        )
        self.errors = Counter(
            "waclient_internal_errors",
            "Requests answered 500 (see the log by error id).",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_HostCollector(host))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HostCollector(Collector):
    def __init__(self, host: Host) -> None:
        self.host = host

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        host = self.host
        stats = host.statistics()
        yield from _memory(stats.guard, host.snapshot())
        if host.webhooks is not None:
            yield from webhook_metrics(host.webhooks.statistics())
        yield from _client(stats.client, stats.worker)
        yield from _recorders(stats.recorders)
        yield from _event_streams(stats.events)
        if stats.scheduler is not None:
            yield CounterMetricFamily(
                "waclient_scheduler_sent", "Scheduled messages sent.", value=stats.scheduler.sent
            )
            yield CounterMetricFamily(
                "waclient_scheduler_send_failures",
                "Scheduled sends that failed.",
                value=stats.scheduler.send_failures,
            )
        yield CounterMetricFamily(
            "waclient_rate_limited",
            "Requests refused with 429 by a key's send or scheduling bucket.",
            value=stats.rate_limited,
        )
        if stats.http is not None:
            refused = CounterMetricFamily(
                "waclient_http_refused",
                "Connections and requests the HTTP guard refused, by reason.",
                labels=["reason"],
            )
            for reason, count in stats.http.to_dict().items():
                if reason != "clients":
                    refused.add_metric([reason], count)
            yield refused
        yield CounterMetricFamily(
            "waclient_scheduled_sends_paced",
            "Scheduled sends that waited for a token of the number's outbound budget.",
            value=stats.scheduled_sends_paced,
        )


def _memory(guard: MemoryGuardStats, current: MemorySnapshot) -> Iterator[Metric]:
    g = GaugeMetricFamily
    yield g(
        "waclient_memory_used_bytes",
        "PSS of host and worker, as the guard counts it.",
        value=guard.used or 0,
    )
    yield g(
        "waclient_memory_soft_limit_bytes",
        "Soft limit: sends shed above it.",
        value=guard.limits.soft,
    )
    yield g(
        "waclient_memory_hard_limit_bytes",
        "Hard limit: graceful restart above it.",
        value=guard.limits.hard,
    )
    yield g(
        "waclient_memory_machine_bytes",
        "The machine's (or cgroup's) memory.",
        value=guard.limits.machine,
    )
    yield g(
        "waclient_memory_shedding",
        "1 while new sends are refused for memory.",
        value=1 if guard.shedding else 0,
    )
    yield g(
        "waclient_memory_peak_bytes",
        "Highest usage a guard check has seen.",
        value=guard.peak,
    )
    yield g("waclient_python_blocks", "sys.getallocatedblocks()", value=current.py_blocks)
    yield g("waclient_open_fds", "Open file descriptors of the host.", value=current.fds)
    yield g("waclient_threads", "OS threads of the host.", value=current.threads)
    yield g("waclient_asyncio_tasks", "asyncio tasks of the host's loop.", value=current.tasks or 0)
    rss = g("waclient_worker_rss_bytes", "RSS of the isolated worker.", labels=["pid"])
    for w in current.workers:
        rss.add_metric([str(w.pid)], w.rss)
    yield rss
    listeners = g("waclient_listeners", "Live handlers per event type.", labels=["event"])
    for name, count in sorted(current.listeners.items()):
        listeners.add_metric([name], count)
    yield listeners


def _client(client: ClientStats | None, worker: WorkerStats | None) -> Iterator[Metric]:
    g = GaugeMetricFamily
    state = g("waclient_client_state", "1 for the client's current state.", labels=["state"])
    for s in ClientState:
        state.add_metric([s.value], 1 if client is not None and client.state is s else 0)
    yield state
    if client is not None:
        yield CounterMetricFamily(
            "waclient_client_attempts", "Session attempts.", value=client.attempts
        )
        yield g(
            "waclient_client_failures_in_a_row",
            "Attempts in a row that failed.",
            value=client.failures_in_a_row,
        )
        yield CounterMetricFamily(
            "waclient_client_handler_errors",
            "Handlers that raised.",
            value=client.handler_errors,
        )
        yield from _inbox(client)
    if worker is not None:
        yield CounterMetricFamily(
            "waclient_worker_recycles", "Worker recycles.", value=worker.recycles
        )
        yield CounterMetricFamily(
            "waclient_worker_crashes", "Worker crashes.", value=worker.crashes
        )


_INBOX_GAUGES = (
    ("inbox", "waclient_inbox_events", "Events waiting in memory to be dispatched."),
    ("inbox_bytes", "waclient_inbox_bytes", "Bytes of the events waiting in memory."),
    ("inbox_disk", "waclient_inbox_disk_events", "Events of a burst waiting on disk."),
    ("inbox_disk_bytes", "waclient_inbox_disk_bytes", "Bytes the inbox's disk queue takes."),
    (
        "producers_waiting",
        "waclient_inbox_producers_waiting",
        "Go threads waiting now for room (memory and the disk budget full).",
    ),
)
_INBOX_COUNTERS = (
    ("overflowed", "waclient_inbox_overflowed", "Events ever written to the disk queue."),
    (
        "producer_waits",
        "waclient_inbox_producer_waits",
        "Times a Go thread had to wait for room (memory and the disk budget full).",
    ),
    (
        "dropped_at_close",
        "waclient_inbox_dropped_at_close",
        "Events not dispatched when close() gave up waiting for the handlers.",
    ),
)


def _inbox(client: ClientStats) -> Iterator[Metric]:
    """The flow control of the client's inbox (docs/design.md, "Flow control")."""
    for field, name, text in _INBOX_GAUGES:
        yield GaugeMetricFamily(name, text, value=getattr(client, field))
    for field, name, text in _INBOX_COUNTERS:
        yield CounterMetricFamily(name, text, value=getattr(client, field))


_RECORDER_COUNTS = (
    "buffered",
    "spooled",
    "dropped",
    "written",
    "duplicates",
    "replayed",
    "outages",
)
_RECORDER_GAUGES = frozenset({"buffered", "spooled"})


def _recorders(recorders: dict[str, RecorderStats]) -> Iterator[Metric]:
    families = {
        n: (GaugeMetricFamily if n in _RECORDER_GAUGES else CounterMetricFamily)(
            f"waclient_recorder_{n}", f"Recorder {n} records (outages: count).", labels=["dir"]
        )
        for n in _RECORDER_COUNTS
    }
    up = GaugeMetricFamily(
        "waclient_recorder_redis_up",
        "1 while the recorder's Redis writes work.",
        labels=["dir"],
    )
    for direction, st in recorders.items():
        for n in _RECORDER_COUNTS:
            families[n].add_metric([direction], getattr(st, n))
        up.add_metric([direction], 1 if st.up else 0)
    yield from families.values()
    yield up


def _event_streams(streams: dict[str, StateEventsStats]) -> Iterator[Metric]:
    published = CounterMetricFamily(
        "waclient_events_published",
        "State events and receipts added to their Redis stream, by stream (state, receipts).",
        labels=["stream"],
    )
    dropped = CounterMetricFamily(
        "waclient_events_dropped",
        "Events lost: pushed out of a full backlog while Redis was down, or left at shutdown.",
        labels=["stream"],
    )
    backlog = GaugeMetricFamily(
        "waclient_events_backlog",
        "Events waiting for Redis in memory (bounded).",
        labels=["stream"],
    )
    for name, st in streams.items():
        published.add_metric([name], st.published)
        dropped.add_metric([name], st.dropped)
        backlog.add_metric([name], st.backlog)
    yield from (published, dropped, backlog)


class MetricsMiddleware:
    """ASGI middleware: counts every response by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: HostMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "?")
            if method not in _METHODS:
                method = "other"
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)
