"""waclient.redis: safe connection defaults and the health probe, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from harness.faults import FaultProxy, RedisServer
from waclient.redis import RedisHealth, open_redis


async def test_open_redis_has_bounded_pool_timeouts_retries_and_health_checks(
    redis_url: str,
) -> None:
    r = open_redis(
        redis_url,
        connect_timeout=0.7,
        socket_timeout=0.9,
        retries=3,
        health_check_interval=7,
        max_connections=4,
        pool_timeout=0.5,
    )
    try:
        assert await r.ping()
        pool = r.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 4
        assert pool.timeout == 0.5
        kw = pool.connection_kwargs
        assert kw["socket_connect_timeout"] == 0.7
        assert kw["socket_timeout"] == 0.9
        assert kw["health_check_interval"] == 7
        assert kw["retry"].get_retries() == 3
        await r.set("k", "v")
        assert await r.get("k") == b"v"
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connect_timeout": 0},
        {"socket_timeout": -1},
        {"retries": -1},
        {"max_connections": 0},
        {"pool_timeout": 0},
    ],
)
def test_open_redis_rejects_unsafe_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        open_redis("redis://127.0.0.1:1/0", **kwargs)


async def test_pool_is_bounded_callers_wait_then_fail(redis_url: str) -> None:
    """One connection: while BLPOP holds it, another command waits pool_timeout, then fails."""
    r = open_redis(redis_url, max_connections=1, pool_timeout=0.2, socket_timeout=60)
    direct = open_redis(redis_url)
    pool = r.connection_pool
    lent = asyncio.Event()
    get_connection: Callable[..., Awaitable[Any]] = pool.get_connection

    async def observed_get_connection(*args: Any, **kwargs: Any) -> Any:
        connection = await get_connection(*args, **kwargs)
        lent.set()
        return connection

    pool.get_connection = observed_get_connection  # type: ignore[method-assign]
    try:
        blocker: asyncio.Future[Any] = asyncio.ensure_future(r.blpop(["never"], timeout=0))
        await asyncio.wait_for(lent.wait(), 30)  # the pool's only connection is the blocker's
        pool.get_connection = get_connection  # type: ignore[method-assign,assignment]
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await r.ping()
        await direct.lpush("never", "released")
        assert await blocker == (b"never", b"released")
        assert await r.ping()  # the connection came back to the pool
    finally:
        await r.aclose()
        await direct.aclose()


async def test_commands_fail_instead_of_queueing_while_server_is_down(
    killable_redis: RedisServer,
) -> None:
    r = open_redis(killable_redis.url, connect_timeout=0.2, socket_timeout=0.2, retries=1)
    try:
        assert await r.ping()
        killable_redis.kill()
        for _ in range(5):
            with pytest.raises(RedisError):
                await r.set("k", "v")
        killable_redis.restart()
        assert await r.set("k", "v")  # reconnects by itself
    finally:
        await r.aclose()


async def test_health_probe_up_down_up_through_blackhole(fault_proxy: FaultProxy) -> None:
    """Down within the probe's timeout while the proxy blackholes; up at the first probe after.

    The probe's timeout is short only while the answer must be "down"; up probes get a long
    one, so a loaded machine cannot turn them into timeouts.
    """
    r = open_redis(fault_proxy.url, connect_timeout=30, socket_timeout=30, retries=1)
    probe = RedisHealth(r, timeout=30)
    try:
        assert probe.status is None
        first = await probe.check()
        assert first.up and first.latency is not None and first.latency >= 0
        assert first.failures == 0 and first.last_error is None

        fault_proxy.blackhole(True)
        probe.timeout = 0.3
        down = await probe.check()
        assert not down.up and down.latency is None
        assert down.last_error is not None and "timeout" in down.last_error
        assert down.changed_at >= first.changed_at and down.failures == 1
        again = await probe.check()
        assert not again.up and again.failures == 2
        assert again.changed_at == down.changed_at  # no change, same time

        fault_proxy.blackhole(False)  # resets the blackholed connections before it returns
        probe.timeout = 30
        back = await probe.check()  # the client reconnects (its one retry, if it must)
        assert back.up and back.failures == 0
        assert back.last_error == again.last_error  # kept for the record
        assert back.changed_at >= again.checked_at
        assert probe.status is back
    finally:
        await r.aclose()


async def test_health_probe_reports_refused_connection(killable_redis: RedisServer) -> None:
    r = open_redis(killable_redis.url, connect_timeout=0.3, socket_timeout=0.3, retries=0)
    probe = RedisHealth(r, timeout=1.0)
    try:
        assert (await probe.check()).up
        killable_redis.kill()
        status = await probe.check()
        assert not status.up
        assert status.last_error is not None and "ConnectionError" in status.last_error
        killable_redis.restart()
        assert (await probe.check()).up
    finally:
        await r.aclose()


async def test_health_probe_with_fakeredis_outage() -> None:
    """The cheap unit-test outage: fakeredis' server switched off."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeAsyncRedis(server=server)
    probe = RedisHealth(r, timeout=0.5)
    assert (await probe.check()).up
    server.connected = False
    status = await probe.check()
    assert not status.up and status.last_error
    server.connected = True
    assert (await probe.check()).up
    await r.aclose()


def test_health_probe_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError):
        RedisHealth(fakeredis.FakeAsyncRedis(), timeout=0)


def test_is_unavailable_tells_outages_from_bugs() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from waclient.redis import is_unavailable

    closed = RuntimeError(
        "unable to perform operation on <TCPTransport closed=True reading=False>; "
        "the handler is closed"
    )
    assert is_unavailable(RedisConnectionError("refused"))
    assert is_unavailable(ConnectionResetError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(closed)
    assert not is_unavailable(RuntimeError("a bug"))
    assert not is_unavailable(ValueError("bad cron"))


async def test_health_probe_reports_a_torn_down_connection_as_down() -> None:

    from waclient.redis import RedisHealth

    class Torn:
        async def ping(self) -> Any:
            raise RuntimeError(
                "unable to perform operation on <TCPTransport>; the handler is closed"
            )

    status = await RedisHealth(Torn()).check()  # type: ignore[arg-type]
    assert not status.up and "handler is closed" in (status.last_error or "")
