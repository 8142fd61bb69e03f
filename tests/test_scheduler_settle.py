"""waclient.scheduler when Redis goes away between a send and its settle: the settle is kept
pending and run before any later claim, so the send is not repeated; against a real
redis-server behind a FaultProxy, with the ticks driven at explicit times (the lease passes
in the scheduler's clock, not the test's)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from test_scheduler import HeldSend

from harness.faults import FaultProxy, RedisServer
from waclient.redis import open_redis
from waclient.scheduler import Scheduler

NS = "test:settle"
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def cut(proxy: FaultProxy) -> None:
    """Redis unreachable: new connections refused, open ones reset (done when it returns)."""
    proxy.refuse(True)
    proxy.reset()


class Outbox:
    """A ``send`` that records what it sent; the first send (or every one, if ``fail``) runs
    ``before`` first, such as cutting Redis."""

    def __init__(self, before: Callable[[], None] = lambda: None, *, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.attempts = 0
        self._before = before
        self._fail = fail

    async def __call__(self, chat: str, text: str) -> object:
        self.attempts += 1
        if self.attempts == 1:
            self._before()
        if self._fail:
            raise RuntimeError("not connected")
        self.sent.append(text)
        return None


@pytest.fixture
async def direct(fresh_redis: RedisServer) -> AsyncIterator[Redis]:
    """A client straight to the redis-server, to look at what the scheduler left."""
    client = open_redis(fresh_redis.url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def proxied(fault_proxy: FaultProxy) -> AsyncIterator[Redis]:
    """The scheduler's client, through the proxy the test cuts."""
    client = open_redis(fault_proxy.url, connect_timeout=1, socket_timeout=1, retries=1)
    yield client
    fault_proxy.heal()
    await client.aclose()


async def ns_keys(redis: Redis) -> list[bytes]:
    return sorted([k async for k in redis.scan_iter(f"{NS}:*", count=1000)])


async def tick_fails(s: Scheduler, now: datetime) -> None:
    with pytest.raises(RedisError):
        await s.tick(now)


async def test_a_once_job_whose_settle_meets_an_outage_is_sent_once(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis
) -> None:
    out = Outbox(lambda: cut(fault_proxy))
    s = Scheduler(proxied, out, namespace=NS)
    job = await s.create_once("c", "once", T0 + timedelta(minutes=1), now=T0)
    with pytest.raises(RedisConnectionError):
        await s.tick(T0 + timedelta(minutes=1))  # sent, then the settle found Redis gone
    assert out.sent == ["once"] and s.statistics().pending_settles == 1
    # Redis down past the lease: the tick stops at the pending settle, before any claim.
    await tick_fails(s, T0 + timedelta(minutes=1) + 2 * LEASE)
    assert s.statistics().pending_settles == 1
    fault_proxy.heal()
    assert await s.tick(T0 + timedelta(minutes=1) + 2 * LEASE) == []  # settled, not re-claimed
    assert await s.tick(T0 + timedelta(hours=1)) == []
    assert out.sent == ["once"] and await s.get(job.id) is None
    assert await ns_keys(direct) == []
    stats = s.statistics()
    assert stats.sent == 1 and stats.pending_settles == 0 and stats.send_failures == 0


async def test_a_cron_job_whose_settle_meets_an_outage_is_rearmed_once(
    fault_proxy: FaultProxy, proxied: Redis
) -> None:
    out = Outbox(lambda: cut(fault_proxy))
    s = Scheduler(proxied, out, namespace=NS)
    job = await s.create_cron("c", "cron", "*/5 * * * *", now=T0)
    first = T0 + timedelta(minutes=5)
    await tick_fails(s, first)
    fault_proxy.heal()
    assert await s.tick(first + LEASE + timedelta(seconds=1)) == []
    rearmed = await s.get(job.id)
    assert rearmed is not None and not rearmed.claimed
    assert rearmed.runs == 1 and rearmed.failures == 0
    assert rearmed.last_run == first and rearmed.next_run == T0 + timedelta(minutes=10)
    assert await s.tick(T0 + timedelta(minutes=10)) == [job.id]  # its next time, as usual
    again = await s.get(job.id)
    assert again is not None and again.runs == 2 and again.next_run == T0 + timedelta(minutes=15)
    assert out.sent == ["cron", "cron"] and s.statistics().sent == 2


async def test_a_failed_send_whose_settle_meets_an_outage_keeps_its_failure_count(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis
) -> None:
    out = Outbox(lambda: cut(fault_proxy), fail=True)
    s = Scheduler(proxied, out, namespace=NS, max_failures=3, retry_delay=10)
    job = await s.create_once("c", "once", T0 + timedelta(minutes=1), now=T0)
    due = T0 + timedelta(minutes=1)
    await tick_fails(s, due)
    assert s.statistics().send_failures == 1 and s.statistics().pending_settles == 1
    fault_proxy.heal()
    assert await s.tick(due + timedelta(seconds=5)) == []  # books the failure, claims nothing
    booked = await s.get(job.id)
    assert booked is not None and not booked.claimed
    assert booked.failures == 1 and booked.next_run == due + timedelta(seconds=10)
    assert await s.tick(due + timedelta(seconds=10)) == []  # second failure: retry in 20 s
    assert await s.tick(due + timedelta(seconds=30)) == []  # third: given up
    assert await s.get(job.id) is None and await ns_keys(direct) == []
    assert out.attempts == 3 and s.statistics().send_failures == 3


@pytest.fixture
async def direct_scheduler(direct: Redis) -> tuple[Scheduler, Outbox]:
    out = Outbox()
    return Scheduler(direct, out, namespace=NS), out


class LostReply:
    """The settle script runs on the server, then its reply is lost (once)."""

    def __init__(self, script: Callable[..., Awaitable[Any]]) -> None:
        self.script = script
        self.lost = 0

    async def __call__(self, **kwargs: Any) -> Any:
        result = await self.script(**kwargs)
        if not self.lost:
            self.lost += 1
            raise RedisConnectionError("connection reset after the reply was written")
        return result


@pytest.mark.parametrize("kind", ["once", "cron"])
async def test_running_a_settle_again_after_it_applied_changes_nothing(
    direct_scheduler: tuple[Scheduler, Outbox], kind: str
) -> None:
    s, out = direct_scheduler
    lost = LostReply(s._settle)
    s._settle = lost  # type: ignore[assignment]
    if kind == "once":
        job = await s.create_once("c", kind, T0 + timedelta(minutes=5), now=T0)
    else:
        job = await s.create_cron("c", kind, "*/5 * * * *", now=T0)
    await tick_fails(s, T0 + timedelta(minutes=5))
    applied = await s.get(job.id)
    assert s.statistics().pending_settles == 1 and lost.lost == 1
    assert await s.tick(T0 + timedelta(minutes=7)) == []  # the retry: a no-op
    assert await s.get(job.id) == applied  # exactly as the first run left it
    if kind == "cron":
        assert applied is not None and applied.runs == 1 and not applied.claimed
        assert applied.next_run == T0 + timedelta(minutes=10)
    else:
        assert applied is None
    assert s.statistics().pending_settles == 0 and out.sent == [kind]


async def test_past_the_lease_another_scheduler_may_send_again_and_the_retry_leaves_it_alone(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis
) -> None:
    """The documented at-least-once case: Redis unreachable from ``a`` past the lease, ``b``
    claims the job first. ``a``'s late settle must not touch ``b``'s claim."""
    out_a = Outbox(lambda: cut(fault_proxy))
    a = Scheduler(proxied, out_a, namespace=NS)
    held = HeldSend()
    b = Scheduler(direct, held, namespace=NS)
    job = await a.create_cron("c", "cron", "*/5 * * * *", now=T0)
    first = T0 + timedelta(minutes=5)
    await tick_fails(a, first)
    later = first + LEASE + timedelta(seconds=1)
    b_tick = asyncio.create_task(b.tick(later))
    await asyncio.wait_for(held.sending.wait(), 30)  # b claimed it: the lease had ended
    fault_proxy.heal()
    assert await a.tick(later) == []  # a's settle finds b's token: nothing done, nothing claimed
    held_by_b = await a.get(job.id)
    assert held_by_b is not None and held_by_b.claimed and held_by_b.runs == 0
    assert a.statistics().pending_settles == 0
    held.release.set()
    assert await b_tick == [job.id]
    settled = await a.get(job.id)
    assert settled is not None and not settled.claimed and settled.runs == 1
    assert settled.next_run == T0 + timedelta(minutes=10)
    assert out_a.sent == ["cron"] and b.statistics().sent == 1  # sent twice, as documented


async def test_the_pending_settles_stay_bounded_and_every_job_is_sent_once(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis
) -> None:
    out = Outbox(lambda: cut(fault_proxy))
    s = Scheduler(proxied, out, namespace=NS, claim_batch=5)
    n = 12
    for i in range(n):
        await s.create_once("c", f"m{i}", T0 + timedelta(minutes=1, seconds=i), now=T0)
    now = T0 + timedelta(minutes=2)
    await tick_fails(s, now)  # the first settle fails: the tick stops, 4 claimed jobs unsent
    assert len(out.sent) == 1 and s.statistics().pending_settles == 1
    for minute in range(1, 6):  # a long outage: no tick sends or adds anything
        later = now + timedelta(minutes=minute)
        await asyncio.gather(s.tick(later), s.tick(later), return_exceptions=True)
        assert len(out.sent) == 1 and s.statistics().pending_settles == 1
    fault_proxy.heal()
    sent = await s.tick(now)  # settles, then sends the 7 jobs no one had claimed
    assert len(sent) == 7 and s.statistics().pending_settles == 0
    sent += await s.tick(now + LEASE + timedelta(seconds=1))  # the 4 whose claim ran out
    assert len(sent) == 11
    assert sorted(out.sent) == sorted(f"m{i}" for i in range(n))  # each exactly once
    assert await ns_keys(direct) == []
    assert s.statistics().sent == n


async def test_concurrent_ticks_hold_at_most_one_pending_settle_each(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis
) -> None:
    gate = asyncio.Event()
    arrived = 0

    async def send(chat: str, text: str) -> object:
        nonlocal arrived
        arrived += 1
        if arrived == 2:  # both ticks hold a claimed job: cut Redis, then let both settle
            cut(fault_proxy)
            gate.set()
        await gate.wait()
        return None

    s = Scheduler(proxied, send, namespace=NS, claim_batch=3)
    for i in range(6):
        await s.create_once("c", f"m{i}", T0 + timedelta(minutes=1), now=T0)
    results = await asyncio.gather(
        s.tick(T0 + timedelta(minutes=1)), s.tick(T0 + timedelta(minutes=1)), return_exceptions=True
    )
    assert all(isinstance(x, RedisError) for x in results)
    assert s.statistics().pending_settles == 2 and s.statistics().sent == 2
    fault_proxy.heal()
    await s.tick(T0 + timedelta(minutes=1) + LEASE + timedelta(seconds=1))
    assert s.statistics().sent == 6 and s.statistics().pending_settles == 0
    assert await ns_keys(direct) == []


async def test_close_settles_what_is_pending(
    fault_proxy: FaultProxy, proxied: Redis, direct: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    s = Scheduler(proxied, Outbox(lambda: cut(fault_proxy)), namespace=NS)
    await s.create_once("c", "once", T0 + timedelta(minutes=1), now=T0)
    await tick_fails(s, T0 + timedelta(minutes=1))
    fault_proxy.heal()
    with caplog.at_level(logging.WARNING, logger="waclient.scheduler"):
        await s.close()
    assert s.statistics().pending_settles == 0 and await ns_keys(direct) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_close_with_redis_still_down_warns_once_naming_the_jobs(
    fault_proxy: FaultProxy, proxied: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    s = Scheduler(proxied, Outbox(lambda: cut(fault_proxy)), namespace=NS)
    job = await s.create_once("c", "once", T0 + timedelta(minutes=1), now=T0)
    await tick_fails(s, T0 + timedelta(minutes=1))
    fault_proxy.refuse(False)
    fault_proxy.blackhole(True)  # now Redis does not even answer: close must not wait for it
    with caplog.at_level(logging.WARNING, logger="waclient.scheduler"):
        async with asyncio.timeout(60):  # a hang guard, not a timing
            await s.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and job.id in warnings[0].getMessage()
    assert "sent again" in warnings[0].getMessage()
    assert s.statistics().pending_settles == 1  # kept: a later tick would still settle it
    fault_proxy.blackhole(False)
    assert await s.tick(T0 + timedelta(minutes=1) + 2 * LEASE) == []
    assert s.statistics().pending_settles == 0 and s.statistics().sent == 1
