"""Every long-lived component has a typed ``statistics()``: a frozen dataclass whose
``to_dict()`` carries the JSON field names ``/health/*`` always had, and the host's routes and
``/metrics`` read them (real worker process, real Redis, real uvicorn)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from test_host_api import KEY, make_settings, wait_ready

from harness.faults import RedisServer
from waclient import Backoff, Client, ClientState
from waclient.client import ClientStats
from waclient.host import create_app
from waclient.host.http_guard import GuardStats
from waclient.host.testing import RunningServer, serve
from waclient.memory import MemoryGuard, MemoryGuardStats, MemoryLimits
from waclient.recorders import OutboundRecorder, RecorderStats
from waclient.scheduler import Scheduler, SchedulerStats
from waclient.transports import IsolatedTransport, WorkerStats

NO_WAIT = Backoff(0, 0, jitter=0)

WORKER_FIELDS = {
    "pid",
    "rss",
    "max_rss",
    "starts",
    "recycles",
    "crashes",
    "hangs",
    "failed_attempts_since_start",
    "rss_budget",
}
GUARD_FIELDS = {
    "level",
    "shedding",
    "used",
    "peak",
    "soft_events",
    "hard_triggered",
    "checks",
    "check_interval",
    "log_interval",
    "limits",
    "trims",
}
SCHEDULER_FIELDS = {
    "namespace",
    "running",
    "sent",
    "send_failures",
    "last_error",
    "unreadable",
    "pending_settles",
}
RECORDER_FIELDS = {
    "stream",
    "up",
    "buffered",
    "spooled",
    "dropped",
    "recorded",
    "written",
    "duplicates",
    "replayed",
    "spooled_total",
    "outages",
    "last_error",
    "down_since",
}


def _frozen(stats: Any) -> None:
    field = dataclasses.fields(stats)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(stats, field, None)


async def test_client_and_worker_statistics(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated", rss_budget=200 * 2**20)
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await client.send_text("15550000003@s.whatsapp.net", "hi")
        stats = client.statistics()
        worker = transport.statistics()
    assert isinstance(stats, ClientStats) and stats.state is ClientState.CONNECTED
    assert stats.generation == 1 and stats.attempts == 1 and stats.failures_in_a_row == 0
    assert stats.to_dict()["state"] == "connected"
    assert set(stats.to_dict()) == {f.name for f in dataclasses.fields(stats)}
    _frozen(stats)
    assert isinstance(worker, WorkerStats) and set(worker.to_dict()) == WORKER_FIELDS
    assert worker.pid is not None and worker.rss > 0 and worker.starts == 1
    assert worker.rss_budget == 200 * 2**20
    _frozen(worker)
    assert transport.statistics().pid is None  # closed with the client
    assert client.statistics().state is ClientState.STOPPED


async def test_scheduler_recorder_and_guard_statistics(tmp_path: Path, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        async with Scheduler(redis, _never_sent, namespace="stats") as scheduler:
            running = scheduler.statistics()
        stopped = scheduler.statistics()
        async with OutboundRecorder(redis, spool=tmp_path / "out.sqlite") as recorder:
            recorder_stats = recorder.statistics()
    finally:
        await redis.aclose()
    assert isinstance(running, SchedulerStats) and running.running and not stopped.running
    assert set(running.to_dict()) == SCHEDULER_FIELDS and running.namespace == "stats"
    _frozen(running)
    assert isinstance(recorder_stats, RecorderStats) and recorder_stats.up
    assert set(recorder_stats.to_dict()) == RECORDER_FIELDS
    _frozen(recorder_stats)

    limits = MemoryLimits(soft=100, hard=200, machine=400, source="test")
    guard = MemoryGuard(limits, measure=lambda: 150)
    guard.check()
    g = guard.statistics()
    assert isinstance(g, MemoryGuardStats) and g.level == "soft" and g.shedding
    assert g.used == 150 and g.peak == 150 and g.checks == 1 and g.limits == limits
    assert set(g.to_dict()) == GUARD_FIELDS and g.to_dict()["limits"] == limits.to_dict()
    _frozen(g)


def test_http_guard_statistics() -> None:
    counters = GuardStats(headers_too_large=2, busy=1)
    counters.open_per_client["10.0.0.1"] += 3
    stats = counters.statistics()
    assert stats.to_dict() == {
        "connections_refused": 0,
        "headers_too_large": 2,
        "header_timeouts": 0,
        "body_timeouts": 0,
        "busy": 1,
        "clients": 1,
    }
    counters.busy += 1
    assert stats.busy == 1  # a snapshot
    _frozen(stats)


@pytest.fixture(scope="module")
def isolated_host(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    if not redis_server.running:
        redis_server.restart()
    settings = make_settings(
        tmp_path_factory.mktemp("host"),
        redis_server.url,
        transport="isolated",
        worker="simulated",
        session_name="statistics",
    )
    with serve(create_app(settings)) as srv:
        yield srv


@pytest.fixture
def api(isolated_host: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=isolated_host.url, headers={"X-API-Key": KEY}, timeout=30) as c:
        wait_ready(c, timeout=60)
        yield c


def test_host_routes_read_the_statistics(api: httpx.Client, isolated_host: RunningServer) -> None:
    host = isolated_host.app.state.host
    stats = host.statistics()
    assert stats.worker is not None and stats.client is not None and stats.http is not None
    assert set(stats.recorders) == {"in", "out"} and stats.scheduler is not None

    memory = api.get("/health/memory").json()
    assert set(memory["worker"]) == WORKER_FIELDS and memory["worker"]["pid"] == stats.worker.pid
    assert set(memory["guard"]) == GUARD_FIELDS
    redis = api.get("/health/redis").json()
    assert set(redis["recorders"]) == {"in", "out"}
    assert all(set(r) == RECORDER_FIELDS for r in redis["recorders"].values())
    assert set(redis["scheduler"]) == SCHEDULER_FIELDS
    assert redis["scheduler"]["namespace"] == "statistics:scheduler"
    session = api.get("/session").json()
    assert session["state"] == "connected" and session["worker"]["starts"] >= 1
    assert session["generation"] == host.statistics().client.generation

    metrics = {
        s.name: s.value
        for f in text_string_to_metric_families(api.get("/metrics").text)
        for s in f.samples
        if not s.labels or s.labels.get("state") == "connected"
    }
    assert metrics["waclient_client_state"] == 1
    assert metrics["waclient_worker_recycles_total"] == stats.worker.recycles
    assert metrics["waclient_memory_soft_limit_bytes"] == stats.guard.limits.soft
    # The inbox's flow control, as the client counts it.
    client = host.statistics().client
    assert (
        metrics["waclient_inbox_disk_events"]
        == client.inbox_disk
        == session["inbox"]["disk_events"]
    )
    assert metrics["waclient_inbox_producers_waiting"] == client.producers_waiting == 0
    assert metrics["waclient_inbox_overflowed_total"] == client.overflowed
    assert metrics["waclient_inbox_producer_waits_total"] == client.producer_waits


async def _never_sent(chat: str, text: str) -> Any:  # pragma: no cover - no job is due
    raise AssertionError("nothing is scheduled")
