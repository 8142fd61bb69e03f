"""StateEvents through real Redis outages (a FaultProxy refusing and resetting connections in
front of a real redis-server): events held in a bounded backlog, written in order with their
original timestamps once Redis is back; the cap holds, the oldest are dropped and counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from test_recorders import fast_redis

from harness.faults import FaultProxy
from waclient.client import Backoff
from waclient.host.state_events import StateEvents
from waclient.webhooks.events import decode_state

FAST = Backoff(initial=0.01, maximum=0.1)


async def stream(redis: Redis, key: str) -> list[tuple[str, float, dict[str, Any]]]:
    entries: Any = await redis.xrange(key)
    return [(e.type, e.timestamp, dict(e.data)) for e in (decode_state(f) for _, f in entries)]


def cut(proxy: FaultProxy) -> None:
    """Redis unreachable: new connections refused, live ones reset."""
    proxy.refuse(True)
    proxy.reset()


async def test_events_wait_through_an_outage_and_arrive_in_order_with_their_time(
    fault_proxy: FaultProxy,
) -> None:
    redis = fast_redis(fault_proxy.url)
    async with StateEvents(redis, "t:events", retry=FAST) as events:
        events.emit("session.connected", {"n": 0}, when=1_000.0)
        assert await events.flush(30)
        cut(fault_proxy)
        events.emit("recorder.outage_began", {"n": 1}, when=2_000.0)
        events.emit("session.disconnected", {"n": 2}, when=3_000.0)
        assert not await events.flush(0.3)  # nothing reaches Redis now
        stats = events.statistics()
        assert not stats.up and stats.last_error
        assert stats.backlog == 2 and stats.dropped == 0 and stats.published == 1
        fault_proxy.refuse(False)
        events.emit("recorder.outage_ended", {"n": 3}, when=4_000.0)
        assert await events.flush(30)
        stats = events.statistics()
        assert stats.up and stats.backlog == 0 and stats.published == 4 and stats.dropped == 0
    assert await stream(redis, "t:events") == [
        ("session.connected", 1_000.0, {"n": 0}),
        ("recorder.outage_began", 2_000.0, {"n": 1}),
        ("session.disconnected", 3_000.0, {"n": 2}),
        ("recorder.outage_ended", 4_000.0, {"n": 3}),
    ]
    await redis.aclose()


async def test_the_backlog_cap_holds_and_the_oldest_are_dropped(fault_proxy: FaultProxy) -> None:
    redis = fast_redis(fault_proxy.url)
    cap, emitted = 10, 5_000
    async with StateEvents(redis, "t:events", max_backlog=cap, retry=FAST) as events:
        cut(fault_proxy)
        largest = 0
        for i in range(emitted):
            events.emit("memory.soft_limit", {"i": i}, when=float(i))
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the writer fail and retry among the emits
            largest = max(largest, events.statistics().backlog)
        stats = events.statistics()
        # At most ``cap`` waiting, plus the one a failing write holds.
        assert largest <= cap + 1 and stats.backlog <= cap + 1
        assert stats.published == 0 and stats.dropped + stats.backlog == emitted
        fault_proxy.refuse(False)
        assert await events.flush(30)
        stats = events.statistics()
    got = await stream(redis, "t:events")
    numbers = [data["i"] for _, _, data in got]
    # What survived is the newest ``cap`` (and the one whose write was under way when the
    # outage began, if it landed), in order, each at its own time.
    assert numbers == sorted(numbers) and cap <= len(numbers) <= cap + 1
    assert numbers[-cap:] == list(range(emitted - cap, emitted))
    assert [when for _, when, _ in got] == [float(i) for i in numbers]
    assert stats.published == len(numbers) and stats.dropped == emitted - len(numbers)
    await redis.aclose()


async def test_close_counts_what_redis_never_took(fault_proxy: FaultProxy) -> None:
    redis = fast_redis(fault_proxy.url)
    events = StateEvents(redis, "t:events", retry=FAST)
    async with events:
        cut(fault_proxy)
        for i in range(3):
            events.emit("session.failed", {"i": i})
    stats = events.statistics()
    assert stats.backlog == 0 and stats.published == 0 and stats.dropped == 3
    events.emit("session.failed", {"late": True})  # after close: counted, not kept
    assert events.statistics().dropped == 4 and events.statistics().backlog == 0
    fault_proxy.refuse(False)
    assert await redis.xlen("t:events") == 0
    await redis.aclose()


async def test_without_redis_events_are_ignored() -> None:
    async with StateEvents(None, "t:events") as events:
        events.emit("session.connected", {})
        assert await events.flush(1)
        assert events.statistics().backlog == 0


@pytest.mark.parametrize("bad", [{"maxlen": 0}, {"max_backlog": 0}])
def test_bad_settings(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        StateEvents(None, "t:events", **bad)  # type: ignore[arg-type]
