"""Shared fixtures. Keep this file to fixtures only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.faults import FaultProxy, RedisServer, Socks5Refuser


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session. A test that kills it must restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    """The session redis-server, running (restarted if a test left it down) and FLUSHALLed."""
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()
    return redis_server


@pytest.fixture
def redis_url(fresh_redis: RedisServer) -> str:
    """URL of the session redis-server, after FLUSHALL."""
    return fresh_redis.url


@pytest.fixture
def fault_proxy(fresh_redis: RedisServer) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the session redis-server; stopped afterwards."""
    with FaultProxy((fresh_redis.host, fresh_redis.port)) as proxy:
        yield proxy


@pytest.fixture
def socks5_refuser() -> Iterator[Socks5Refuser]:
    """A started Socks5Refuser; stopped afterwards."""
    with Socks5Refuser() as refuser:
        yield refuser


@pytest.fixture
def killable_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (fresh data dir), free to kill and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["in-process", "isolated"])
async def simulated_client(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, Any]]:
    """(a connected Client, its transport), once on ``SimulatedTransport`` and once on
    ``IsolatedTransport(worker="simulated")``: the two simulated sides script alike."""
    from waclient import Backoff, Client, ClientState, IsolatedTransport, SimulatedTransport

    transport: Any = (
        SimulatedTransport()
        if request.param == "in-process"
        else IsolatedTransport(tmp_path / "session.db", worker="simulated")
    )
    async with Client(transport, backoff=Backoff(0, 0, jitter=0)) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        yield client, transport
