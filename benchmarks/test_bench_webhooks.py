"""Webhook delivery throughput against a plain XREADGROUP + POST + XACK loop, same run.

Both deliver the same 500 recorder-shaped messages per round from a stream on a real
redis-server to a real receiver (uvicorn on loopback, in a thread of this process, verifying
every signature with ``standardwebhooks``), with the same ``httpx.AsyncClient`` and the same
concurrency (8 requests at a time), each request signed the same way:

- ``plain``: XREADGROUP COUNT 8, the 8 signed POSTs at once, XACK; until the stream is drained;
- ``dispatcher``: a running ``WebhookDispatcher`` (8 in flight for its endpoint); a round ends
  when it has delivered (and XACKed) the round's 500 messages.

The two alternate round by round (a plain round runs, timed by hand, in the setup of each
dispatcher round), so that the load of a shared machine hits both alike.

The ratio printed at the end is plain median time / dispatcher median time, i.e. the
dispatcher's throughput as a fraction of the plain loop's (target >= 0.8). Reported, not
asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import record_median, report_ratio
from redis.asyncio import Redis

from harness.faults import RedisServer
from waclient.redis import open_redis
from waclient.webhooks import (
    Endpoint,
    WebhookDispatcher,
    default_sources,
    generate_secret,
    signature_headers,
)
from waclient.webhooks.events import decode_message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from webhook_receiver import Receiver, message_fields

N = 500
IN_FLIGHT = 8
ROUNDS = 5
SECRET = generate_secret()

report_ratio(
    "webhook dispatcher throughput / plain XREADGROUP+POST+XACK (500 messages)",
    "plain-webhooks",
    "dispatcher",
    0.8,
)


class Env:
    def __init__(self, loop: asyncio.AbstractEventLoop, redis: Redis, rec: Receiver) -> None:
        self.loop = loop
        self.redis = redis
        self.receiver = rec
        self.http = httpx.AsyncClient(follow_redirects=False)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    rec = Receiver(SECRET)
    rec.start()
    with RedisServer() as server:
        redis = open_redis(server.url, socket_timeout=10, max_connections=32)
        e = Env(loop, redis, rec)
        yield e
        loop.run_until_complete(e.http.aclose())
        loop.run_until_complete(redis.aclose())
    rec.stop()
    loop.close()


async def add(redis: Redis, stream: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(N):
            pipe.xadd(stream, message_fields(i))  # type: ignore[arg-type]
        await pipe.execute()


async def plain_loop(env: Env, stream: str) -> None:
    """The baseline: read 8, POST 8 at once, acknowledge, until nothing is left."""

    async def post(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        body = decode_message(fields).body()
        headers = signature_headers(f"in_{entry_id.decode()}", body, [SECRET])
        headers["content-type"] = "application/json"
        r = await env.http.post(env.receiver.url, content=body, headers=headers)
        assert r.status_code == 204

    while True:
        reply: Any = await env.redis.xreadgroup("plain", "c", {stream: ">"}, count=IN_FLIGHT)
        if not reply:
            return
        entries = reply[0][1]
        await asyncio.gather(*(post(i, f) for i, f in entries))
        await env.redis.xack(stream, "plain", *(i for i, _ in entries))


def test_dispatcher(benchmark: Any, env: Env) -> None:
    endpoint = Endpoint("ep_bench", env.receiver.url, (SECRET,))
    dispatcher = WebhookDispatcher(
        env.redis,
        sources=default_sources("bench"),
        static=[endpoint],
        key_prefix="bench",
        http=env.http,
        max_in_flight=IN_FLIGHT,
        allow_private=True,
    )
    env.loop.run_until_complete(dispatcher.start())
    plain_stream = "plain:messages:in"
    env.loop.run_until_complete(
        env.redis.xgroup_create(plain_stream, "plain", id="$", mkstream=True)
    )
    plain_times: list[float] = []
    target = 0

    def plain_round() -> tuple[tuple[()], dict[str, Any]]:
        """Before each dispatcher round (untimed by pytest-benchmark), one plain round timed
        here: the two alternate, so a change in the machine's load hits both alike."""
        env.loop.run_until_complete(add(env.redis, plain_stream))
        began = time.perf_counter()
        env.loop.run_until_complete(plain_loop(env, plain_stream))
        plain_times.append(time.perf_counter() - began)
        return (), {}

    async def deliver_round() -> None:
        nonlocal target
        target += N
        await add(env.redis, "bench:messages:in")
        # Polling the counter every 1 ms (< 0.1 % of a round): the dispatcher has no hook.
        while dispatcher.statistics().delivered < target:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    benchmark.pedantic(
        lambda: env.loop.run_until_complete(deliver_round()),
        setup=plain_round,
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    stats = dispatcher.statistics()
    env.loop.run_until_complete(dispatcher.close())
    assert stats.delivered == target and stats.failed == 0
    assert env.receiver.bad_signatures == 0
    plain = statistics.median(plain_times[1:])  # the first was the warm-up round's
    record_median("plain-webhooks", plain)
    print(f"\nplain loop: {N / plain:,.0f} deliveries/s (median)")
    record_median("dispatcher", benchmark.stats.stats.median)
    print(f"\ndispatcher: {N / benchmark.stats.stats.median:,.0f} deliveries/s (median)")
