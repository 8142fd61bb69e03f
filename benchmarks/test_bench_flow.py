"""A burst of 10,000 messages with a reply to each against the same burst without replies, in
process and through the isolated worker: a reply has its own path, so talking back costs a round
trip per message and never a stall (the ratio reads as the throughput with replies over the
throughput without; target >= 0.5)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bursts import time_bursts
from conftest import record_median, report_ratio

from waclient import Backoff, Client
from waclient.events import MessageEv
from waclient.transports.isolated import IsolatedTransport
from waclient.transports.simulated import SimulatedTransport, message_event

BURST = 10_000
PATHS = ["in-process", "isolated"]
for _path in PATHS:
    report_ratio(
        f"burst of {BURST:,} ({_path}): with a reply each / without (throughput)",
        f"plain-{_path}",
        f"reply-{_path}",
        0.5,
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("handler", ["plain", "reply"])
def test_burst(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, path: str, handler: str
) -> None:
    event = message_event(text="burst")
    transport: Any
    emit: Callable[[], Awaitable[None]]
    if path == "isolated":
        transport = IsolatedTransport(tmp_path / "bench.db", worker="simulated")
        emit = lambda: transport.emit(event, repeat=BURST)  # noqa: E731
    else:
        transport = SimulatedTransport()
        emit = lambda: transport.emit(*([event] * BURST))  # noqa: E731
    client = Client(transport, backoff=Backoff(0, 0, jitter=0))
    answered = [0]

    async def reply(ev: Any) -> None:
        await client.reply(ev, "pong")
        answered[0] += 1

    def count(ev: Any) -> None:
        answered[0] += 1

    client.on(MessageEv, reply if handler == "reply" else count)

    median = time_bursts(benchmark, loop, client, emit, rounds=5)
    assert answered[0] == BURST * 7
    benchmark.extra_info["messages_per_second"] = BURST / median
    record_median(f"{handler}-{path}", median)
