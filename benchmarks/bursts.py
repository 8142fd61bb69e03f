"""Timing bursts of events through a connected :class:`~waclient.Client`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from waclient import Client, ClientState


def time_bursts(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    client: Client,
    emit: Callable[[], Awaitable[None]],
    *,
    rounds: int,
) -> float:
    """Start ``client``, time ``emit()`` until every event has been dispatched (``rounds``
    rounds after two warm-up rounds), close it; the median in seconds."""

    async def start() -> None:
        await client.start()
        await client.wait_for(ClientState.CONNECTED, timeout=60)

    async def burst() -> None:
        await emit()
        await client.idle()

    loop.run_until_complete(start())
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(burst()), rounds=rounds, warmup_rounds=2)
    finally:
        loop.run_until_complete(client.close())
    median: float = benchmark.stats.stats.median
    return median
