"""The "Done when" runs of the webhook dispatcher: 10,000 messages with the receiver down for a
third of them (and 500s and resets around it), and two dispatcher processes on one consumer
group with one SIGKILLed mid-run. Real Redis, real uvicorn receiver, every delivery verified
with the ``standardwebhooks`` library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from test_webhooks_delivery import (
    IN_STREAM,
    PREFIX,
    SECRET,
    add_messages,
    dispatcher,
    endpoint,
    eventually,
    pending,
    wait_in_thread,
)
from webhook_receiver import proxy_url, receiver

from harness import soak_async
from harness.webhook_receiver import ReceiverProcess
from waclient.client import Backoff
from waclient.redis import open_redis
from waclient.webhooks import WebhookDispatcher, WebhookKeys

pytestmark = pytest.mark.slow

TOTAL = 10_000
BATCH = 250


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = open_redis(redis_url, max_connections=32)
    yield client
    await client.aclose()


def patient(redis: Redis, url: str, *, max_in_flight: int) -> WebhookDispatcher:
    """A dispatcher that never dead-letters (outages of any length) and tolerates a loaded
    machine (5 s per attempt)."""
    return dispatcher(
        redis,
        endpoint(url),
        max_in_flight=max_in_flight,
        max_attempts=10**6,
        backoff=Backoff(initial=0.05, maximum=0.5),
        timeout=5.0,
    )


def failures_rise(d: WebhookDispatcher, n: int) -> Callable[[], bool]:
    """A check: ``n`` more failed attempts than now."""
    target = d.statistics().failed + n
    return lambda: d.statistics().failed >= target


async def test_10000_messages_receiver_down_for_a_third(redis: Redis) -> None:
    third = TOTAL // 3
    with receiver(SECRET) as (rec, proxy):
        async with patient(redis, proxy_url(proxy), max_in_flight=16) as d:
            cap_seen = 0

            def in_flight() -> int:
                nonlocal cap_seen
                cap_seen = max(cap_seen, d.statistics().in_flight)
                return cap_seen

            ids: list[str] = []
            # First third: up, with a stretch of 500s and a burst of connection resets.
            for start in range(0, third, BATCH):
                if start == 1000:
                    rec.mode = "500"
                    await eventually(failures_rise(d, 20))
                    rec.mode = "ok"
                if start == 2000:
                    proxy.refuse(True)
                    proxy.reset()
                    await eventually(lambda: proxy.stats.refused >= 10)
                    proxy.refuse(False)
                ids += await add_messages(redis, min(BATCH, third - start), start)
                in_flight()
            # Second third: the receiver is down (nothing listens behind the proxy).
            rec.stop()
            rise = failures_rise(d, 200)
            for start in range(third, 2 * third, BATCH):
                ids += await add_messages(redis, min(BATCH, 2 * third - start), start)
                in_flight()
            await eventually(rise)
            assert await pending(redis, "ep_a") <= 16  # the backlog is in Redis, not here
            # Last third: back up.
            rec.start()
            for start in range(2 * third, TOTAL, BATCH):
                ids += await add_messages(redis, min(BATCH, TOTAL - start), start)
                in_flight()
            await wait_in_thread(rec, lambda r: len(r.accepted) == TOTAL, timeout=600)
            await eventually(lambda: d.statistics().delivered >= TOTAL)
            assert await pending(redis, "ep_a") == 0
            assert in_flight() <= 16
            stats = d.statistics()
    assert len(ids) == TOTAL
    assert set(rec.accepted) == set(ids)  # every message, none lost
    assert rec.bad_signatures == 0  # every delivery verified by standardwebhooks
    duplicates = sum(rec.accepted.values()) - TOTAL
    # A duplicate is only a delivery whose 2xx was lost (the reset burst): same webhook-id.
    assert duplicates <= stats.failed
    for msg_id in ids[:: TOTAL // 50]:
        n = int(rec.payloads[msg_id]["data"]["id"].removeprefix("M"))
        assert msg_id == ids[n]
    assert stats.dead_lettered == 0 and stats.failed >= 20 + 10 + 200


DISPATCHER_PROCESS = """
import asyncio, sys
from harness import soak_async
from waclient.client import Backoff
from waclient.redis import open_redis
from waclient.webhooks import Endpoint, WebhookDispatcher, default_sources

async def main(url, hook, secret, consumer):
    redis = open_redis(url, max_connections=16)
    ep = Endpoint("ep_a", hook, (secret,))
    async with WebhookDispatcher(
        redis, sources=default_sources("t"), static=[ep], key_prefix="t", consumer=consumer,
        max_in_flight=8, claim_idle=1.0, poll_interval=0.2, timeout=5.0,
        backoff=Backoff(0.05, 0.5), allow_private=True,
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


def spawn(redis_url: str, hook: str, consumer: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DISPATCHER_PROCESS, redis_url, hook, SECRET, consumer],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def no_pending(redis: Redis) -> bool:
    return await pending(redis, "ep_a") == 0


async def first_has_pending(redis: Redis) -> bool:
    consumers: Any = await redis.xinfo_consumers(IN_STREAM, WebhookKeys(PREFIX).group("ep_a"))
    return any(int(c["pending"]) > 0 for c in consumers if c["name"] == b"first")


async def test_two_dispatcher_processes_one_sigkilled(redis: Redis, redis_url: str) -> None:
    n = 2000
    with receiver(SECRET) as (rec, proxy):
        rec.mode = "slow"
        hook = proxy_url(proxy)
        first = spawn(redis_url, hook, "first")
        second = spawn(redis_url, hook, "second")
        try:
            ids = await add_messages(redis, n)
            await wait_in_thread(rec, lambda r: len(r.accepted) >= n // 4)
            await eventually(lambda: first_has_pending(redis))  # mid-delivery
            first.send_signal(signal.SIGKILL)
            first.wait()
            await wait_in_thread(rec, lambda r: len(r.accepted) == n, timeout=600)
            # The dead one's pending deliveries were taken over (XAUTOCLAIM) and acknowledged.
            await eventually(lambda: no_pending(redis))
        finally:
            for proc in (first, second):
                if proc.poll() is None:
                    proc.terminate()
                proc.wait(30)
    assert set(rec.accepted) == set(ids)
    assert rec.bad_signatures == 0


async def test_memory_stays_bounded_through_receiver_outages(redis: Redis, tmp_path: Path) -> None:
    """The harness's verdict on this process (the dispatcher) while the receiver (a process of
    its own) goes down for 10 cycles in every 20: the backlog waits in Redis."""
    per_cycle = 20
    rec = ReceiverProcess(SECRET, tmp_path / "ids")
    rec.start()
    try:
        async with patient(redis, rec.url, max_in_flight=8) as d:
            added = 0

            async def cycle(i: int) -> None:
                nonlocal added
                down = bool((i // 10) % 2)
                if down and rec.running:
                    rec.stop()
                elif not down and not rec.running:
                    rec.start()
                await add_messages(redis, per_cycle, added)
                added += per_cycle
                if down:  # the in-flight slots fill and retry
                    await eventually(lambda: d.statistics().in_flight == 8)
                else:  # everything so far is delivered (2xx only after a verified signature)
                    await eventually(lambda: d.statistics().delivered >= added, timeout=300)

            verdict = await soak_async(cycle, cycles=400, warmup=100, memray=False)
            if not rec.running:
                rec.start()
            await eventually(lambda: d.statistics().delivered >= added, timeout=300)
    finally:
        rec.stop()
    assert rec.counts().distinct == added  # every event reached the receiver
    channels = {n: (round(c.slope_per_cycle, 2), c.leaking) for n, c in verdict.channels.items()}
    assert verdict.bounded, channels
