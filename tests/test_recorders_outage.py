"""Recorders through real outages: a real redis-server killed (SIGKILL) and restarted, a fault
proxy resetting and blackholing connections. Nothing lost, nothing duplicated, memory bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from redis.asyncio import Redis

from harness.faults import FaultProxy, RedisServer
from waclient.recorders import InboundRecorder, MessageRecord
from waclient.redis import open_redis
from waclient.spool import Spool

MB = 1024 * 1024
TOTAL = 10_000
CHATS = 20
KILLS = 50
BLACKHOLE_SECONDS = float(os.environ.get("WACLIENT_BLACKHOLE_SECONDS", "30"))
T = TypeVar("T")


class RssSampler:
    """Samples this process's RSS on a thread; keeps the peak per phase."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.phase = "before"
        self.peaks: dict[str, int] = defaultdict(int)
        self.samples = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def enter(self, phase: str) -> None:
        """Close the current phase with one sample taken now, then start ``phase``."""
        self._sample()
        self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        phase = self.phase
        self.peaks[phase] = max(self.peaks[phase], rss)
        self.samples += 1

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def message(i: int) -> MessageRecord:
    return MessageRecord(
        id=f"3EB0{i:012X}",
        chat=f"1555{i % CHATS:07d}@s.whatsapp.net",
        sender=f"1555{i % CHATS:07d}@s.whatsapp.net",
        text=f"message {i} " + "x" * (i % 200),
        timestamp=1_700_000_000 + i,
        direction="in",
    )


async def eventually(
    read: Callable[[], T], holds: Callable[[T], bool], what: str, timeout: float = 60.0
) -> T:
    """Poll ``read()`` until ``holds`` it; fail after ``timeout`` (a guard, not a timing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not holds(value := read()):
        assert asyncio.get_running_loop().time() < deadline, f"never reached: {what}: {value}"
        await asyncio.sleep(0.01)
    return value


def outage_redis(url: str) -> Redis:
    return open_redis(
        url, connect_timeout=0.5, socket_timeout=0.5, retries=1, backoff_cap=0.05, max_connections=4
    )


async def check_stream(redis: Redis, stream: str, expected: int) -> tuple[int, int]:
    """(entries, duplicates); asserts all of 0..expected-1 are there, in order per chat."""
    got: list[MessageRecord] = []
    start: bytes = b"-"
    while True:
        page: Any = await redis.xrange(stream, min=start, count=2000)
        got += [MessageRecord.from_fields(fields) for _, fields in page]
        if len(page) < 2000:
            break
        start = b"(" + page[-1][0]
    numbers = [int(r.id[4:], 16) for r in got]
    duplicates = len(numbers) - len(set(numbers))
    assert duplicates == 0
    assert sorted(numbers) == list(range(expected))
    for r, n in zip(got, numbers, strict=True):
        assert r == message(n)
    per_chat: dict[str, list[int]] = defaultdict(list)
    for r, n in zip(got, numbers, strict=True):
        per_chat[r.chat].append(n)
    for chat, seq in per_chat.items():
        assert seq == sorted(seq), f"{chat} out of order"
    return len(got), duplicates


@pytest.mark.slow
async def test_10000_records_through_kills_resets_and_blackhole(
    killable_redis: RedisServer, tmp_path: Path
) -> None:
    server = killable_redis
    proxy = FaultProxy((server.host, server.port)).start()
    redis = outage_redis(proxy.url)
    direct = open_redis(server.url, socket_timeout=10)  # for checking, not through the proxy
    recorder = InboundRecorder(
        redis,
        spool=Spool(tmp_path / "spool.db", max_records=20_000, max_bytes=32 * MB),
        max_buffer=1000,
        batch_size=256,
        maxlen=100_000,
        retry_initial=0.02,
        retry_max=0.2,
        probe_timeout=0.5,
    )
    sampler = RssSampler()
    i = 0

    async def feed(n: int, pause: float = 0.0) -> None:
        nonlocal i
        for _ in range(n):
            await recorder.record(message(i))
            i += 1
            if pause:
                await asyncio.sleep(pause)
            elif i % 20 == 0:
                await asyncio.sleep(0)  # let the writer run, as a live event stream would

    try:
        with sampler.running():
            # Before the outages: normal recording.
            await feed(1500)
            assert await recorder.flush(60)
            sampler.enter("during")
            # 50 SIGKILLs and restarts, while recording; every 5th cycle a proxy reset too.
            for cycle in range(KILLS):
                await feed(60, pause=0.004)  # Redis up: the writer catches up
                await asyncio.to_thread(server.kill)
                await feed(60, pause=0.002)  # Redis down while these arrive
                if cycle % 5 == 0:
                    proxy.reset()
                await asyncio.to_thread(server.restart)
            # Resets alone.
            for _ in range(10):
                await feed(50)
                proxy.reset()
            # The blackhole: bytes vanish, connections hang, for BLACKHOLE_SECONDS.
            blackholed = TOTAL - i
            proxy.blackhole(True)
            await feed(blackholed, pause=BLACKHOLE_SECONDS / blackholed)
            proxy.blackhole(False)
            assert i == TOTAL
            assert await recorder.flush(120)
            sampler.enter("after")
        stats = recorder.statistics()
        entries, duplicates = await check_stream(direct, recorder.stream, TOTAL)
        assert entries == TOTAL and await direct.xlen(recorder.stream) == TOTAL
    finally:
        await recorder.close()
        await redis.aclose()
        await direct.aclose()
        proxy.stop()
        assert recorder.spool is not None
        recorder.spool.close()

    before, during = sampler.peaks["before"], sampler.peaks["during"]
    print(
        f"\noutage test: {entries} records in Redis, {duplicates} duplicates; "
        f"recorder: written={stats.written} replayed={stats.replayed} "
        f"duplicates skipped={stats.duplicates} spooled_total={stats.spooled_total} "
        f"dropped={stats.dropped} outages={stats.outages}; "
        f"peak RSS before={before / MB:.1f} MB, during={during / MB:.1f} MB "
        f"(+{(during - before) / MB:.1f} MB), {sampler.samples} samples; "
        f"blackhole {BLACKHOLE_SECONDS:g}s"
    )
    # A batch that landed but whose reply was lost is sent again and skipped as duplicates.
    assert stats.dropped == 0 and stats.written <= TOTAL <= stats.written + stats.duplicates
    assert stats.outages > 0  # (kills shorter than redis-py's own retry go unnoticed)
    assert stats.replayed > 0 and stats.spooled == 0 and stats.buffered == 0
    assert during - before <= 20 * MB


async def test_outage_longer_than_the_spool_is_counted_logged_once_and_survived(
    killable_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="waclient.recorders")
    server = killable_redis
    redis = outage_redis(server.url)
    recorder = InboundRecorder(
        redis,
        spool=Spool(tmp_path / "spool.db", max_records=200, max_bytes=None),
        max_buffer=50,
        batch_size=32,
        retry_initial=0.02,
        retry_max=0.2,
        probe_timeout=0.3,
    )

    def full_logs() -> int:
        return sum(
            "spool is full" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
        )

    try:
        n = 0
        for outage in (1, 2):
            await asyncio.to_thread(server.kill)
            for _ in range(1000):  # 5x what memory and spool can hold
                await recorder.record(message(n))
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0)
            # A failed batch is counted nowhere while it waits for the spool's lock: wait until
            # every record is accounted for again.
            stats = await eventually(
                recorder.statistics,
                lambda s: s.dropped + s.spooled + s.buffered + s.written == s.recorded,
                "every record counted as dropped, spooled, buffered or written",
            )
            assert not stats.up and stats.outages == outage
            assert stats.spooled <= 200 and stats.buffered <= recorder.memory_bound == 50 + 32 + 50
            assert stats.dropped > 0
            assert stats.dropped + stats.spooled + stats.buffered + stats.written == n
            assert full_logs() == outage  # once per outage, not once per record
            # The process keeps working: Redis comes back, the spool drains, new records flow.
            await asyncio.to_thread(server.restart)
            assert await recorder.flush(30)
            for _ in range(10):
                await recorder.record(message(n))
                n += 1
            assert await recorder.flush(30)
            stats = recorder.statistics()
            assert stats.up and stats.spooled == 0 and stats.buffered == 0
            assert stats.written + stats.dropped == n
            assert await redis.xlen(recorder.stream) == stats.written
        print(
            f"\nspool full: recorded={stats.recorded} written={stats.written} "
            f"dropped={stats.dropped} outages={stats.outages} 'spool is full' logs={full_logs()}"
        )
    finally:
        await recorder.close()
        await redis.aclose()
        assert recorder.spool is not None
        recorder.spool.close()
