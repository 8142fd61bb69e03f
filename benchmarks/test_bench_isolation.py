"""Message events per second through IsolatedTransport (a simulated Go side in the worker)
against the in-process path (SimulatedTransport), both through the same Client and handler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bursts import time_bursts
from conftest import record_median, report_ratio

from waclient import Backoff, Client
from waclient.events import MessageEv
from waclient.transports.isolated import IsolatedTransport
from waclient.transports.simulated import SimulatedTransport, message_event

EVENTS = 2000
report_ratio("isolated / in-process (Message events per second)", "in-process", "isolated", 0.25)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("path", ["in-process", "isolated"])
def test_event_throughput(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, path: str
) -> None:
    event = message_event(text="benchmark")
    if path == "isolated":
        transport: Any = IsolatedTransport(tmp_path / "bench.db", worker="simulated")

        async def emit() -> None:
            await transport.emit(event, repeat=EVENTS)
    else:
        transport = SimulatedTransport()

        async def emit() -> None:
            await transport.emit(*([event] * EVENTS))

    client = Client(transport, backoff=Backoff(0, 0, jitter=0))
    received = [0]
    client.on(MessageEv, lambda ev: received.__setitem__(0, received[0] + 1))

    median = time_bursts(benchmark, loop, client, emit, rounds=15)
    assert received[0] == EVENTS * 17
    benchmark.extra_info["events_per_second"] = EVENTS / median
    # Record seconds per event inverted, so the ratio reads as isolated/in-process throughput.
    record_median(path, median)
