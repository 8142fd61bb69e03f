"""The WhatsApp surface through the isolated worker against the same calls in process: a 1 MiB
``send_image`` and a ``send_text`` round trip, through the same Client and simulated Go side
(:class:`~waclient.transports.simulated.SimulatedWhatsApp` answers in both)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import record_median, report_ratio

from waclient import Backoff, Client, ClientState
from waclient.transports.isolated import IsolatedTransport
from waclient.transports.simulated import SimulatedTransport

CHAT = "15550000001@s.whatsapp.net"
IMAGE = os.urandom(2**20)
CALLS = 20
report_ratio("send_image 1 MiB: isolated / in-process", "image-isolated", "image-in-process", 2.0)
report_ratio("send_text round trip: isolated / in-process", "text-isolated", "text-in-process", 2.0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _transport(path: str, tmp_path: Path) -> Any:
    if path == "isolated":
        return IsolatedTransport(tmp_path / "bench.db", worker="simulated")
    return SimulatedTransport()


SENDS: dict[str, Callable[[Client], Awaitable[Any]]] = {
    "image": lambda client: client.send_image(CHAT, IMAGE, caption="bench"),
    "text": lambda client: client.send_text(CHAT, "bench"),
}


@pytest.mark.parametrize("path", ["in-process", "isolated"])
@pytest.mark.parametrize("what", ["image", "text"])
def test_send(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, what: str, path: str
) -> None:
    client = Client(_transport(path, tmp_path), backoff=Backoff(0, 0, jitter=0))
    send = SENDS[what]

    async def start() -> None:
        await client.start()
        await client.wait_for(ClientState.CONNECTED, timeout=60)

    async def batch() -> None:
        for _ in range(CALLS):  # one at a time: each is a full round trip
            await send(client)

    loop.run_until_complete(start())
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(batch()), rounds=15, warmup_rounds=2)
    finally:
        loop.run_until_complete(client.close())
    median = benchmark.stats.stats.median
    benchmark.extra_info["calls_per_second"] = CALLS / median
    record_median(f"{what}-{path}", median)
