"""WebhookDispatcher over a real Redis server and a real HTTP receiver (uvicorn on loopback)
that answers 500, hangs past the timeout, resets connections and is down for stretches. Every
accepted delivery is verified by the receiver with the ``standardwebhooks`` library."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from webhook_receiver import Receiver, message_fields, proxy_url, receiver

from harness.faults import FaultProxy
from waclient.client import Backoff
from waclient.redis import open_redis
from waclient.webhooks import (
    Endpoint,
    EndpointStore,
    WebhookDispatcher,
    WebhookKeys,
    default_sources,
    generate_secret,
    state_fields,
)
from waclient.webhooks.dispatcher import BACKLOG_SCAN_CAP

PREFIX = "t"
IN_STREAM = f"{PREFIX}:messages:in"
OUT_STREAM = f"{PREFIX}:messages:out"
SECRET = generate_secret()
FAST = {
    "timeout": 0.5,
    "backoff": Backoff(initial=0.01, maximum=0.1),
    "claim_idle": 2.0,
    "poll_interval": 0.2,
    "stats_interval": 0.5,
    "refresh_interval": 0.2,
    "allow_private": True,
}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = open_redis(redis_url, max_connections=32)
    yield client
    await client.aclose()


@pytest.fixture
def hook() -> Iterator[tuple[Receiver, FaultProxy]]:
    with receiver(SECRET) as pair:
        yield pair


def endpoint(url: str, name: str = "ep_a", events: tuple[str, ...] = ()) -> Endpoint:
    return Endpoint(name, url, (SECRET,), events=events)


def dispatcher(redis: Redis, *endpoints: Endpoint, **overrides: Any) -> WebhookDispatcher:
    options = {**FAST, **overrides}
    return WebhookDispatcher(
        redis, sources=default_sources(PREFIX), static=endpoints, key_prefix=PREFIX, **options
    )


async def add_messages(redis: Redis, n: int, start: int = 0, stream: str = IN_STREAM) -> list[str]:
    """XADD ``n`` recorder-shaped messages; returns their webhook-ids."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(start, start + n):
            fields = message_fields(i)
            if stream == OUT_STREAM:
                fields["dir"] = "out"
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids = await pipe.execute()
    source = "in" if stream == IN_STREAM else "out"
    return [f"{source}_{i.decode()}" for i in ids]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 60.0, context: Any = None
) -> None:
    """Wait until ``check()`` holds; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            detail = context() if context is not None else check
            raise AssertionError(f"not reached before the deadline: {detail}")
        await asyncio.sleep(0.02)


async def wait_in_thread(
    rec: Receiver, predicate: Callable[[Receiver], bool], timeout: float = 60.0
) -> None:
    """Wait until the receiver's state satisfies ``predicate`` (the timeout guards a hang)."""
    reached = await asyncio.to_thread(rec.wait_for, predicate, timeout)
    assert reached, f"receiver: {len(rec.accepted)} accepted of {rec.attempts} attempts"


async def expected_backlog(redis: Redis, *, pending: int, unread: int) -> int:
    """Redis >= 7 reports a group's lag; older servers are scanned up to BACKLOG_SCAN_CAP."""
    info = await redis.info("server")
    if int(str(info["redis_version"]).split(".")[0]) >= 7:
        return pending + unread
    return pending + min(unread, BACKLOG_SCAN_CAP)


async def pending(redis: Redis, endpoint_id: str, stream: str = IN_STREAM) -> int:
    info: Any = await redis.xpending(stream, WebhookKeys(PREFIX).group(endpoint_id))
    return int(info["pending"])


async def test_delivers_signed_events_and_acks_after_2xx(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    async with dispatcher(redis, endpoint(proxy_url(proxy))) as d:
        ids = await add_messages(redis, 20)
        out_ids = await add_messages(redis, 5, start=100, stream=OUT_STREAM)
        await redis.xadd(f"{PREFIX}:events", state_fields("session.failed", {"failures": 3}))
        await wait_in_thread(rec, lambda r: len(r.accepted) == 26)
        await eventually(lambda: d.statistics().delivered == 26)
        assert await pending(redis, "ep_a") == 0
        stats = d.statistics().endpoints["ep_a"]
        assert stats.failed == 0 and stats.last_success is not None
    assert rec.bad_signatures == 0
    assert set(ids) | set(out_ids) <= set(rec.accepted)
    first = rec.payloads[ids[0]]
    assert first["type"] == "message.received"
    assert first["data"]["id"] == "M0" and first["data"]["text"] == '{"n": 0}'
    assert rec.payloads[out_ids[0]]["type"] == "message.sent"
    [state] = [p for p in rec.payloads.values() if p["type"] == "session.failed"]
    assert state["data"] == {"failures": 3}
    assert rec.headers_seen[0]["content-type"] == "application/json"


@pytest.mark.parametrize("fault", ["500", "hang", "reset", "down", "redirect"])
async def test_retries_through_a_fault_with_the_same_webhook_id(
    redis: Redis, hook: tuple[Receiver, FaultProxy], fault: str
) -> None:
    rec, proxy = hook
    async with dispatcher(redis, endpoint(proxy_url(proxy)), max_attempts=1000) as d:
        if fault in ("500", "hang", "redirect"):
            rec.mode = fault
        elif fault == "reset":
            proxy.refuse(True)
        else:
            rec.stop()
        [msg_id] = await add_messages(redis, 1)
        await eventually(lambda: d.statistics().endpoints["ep_a"].failed >= 3)
        assert not rec.accepted
        rec.mode = "ok"
        proxy.heal()
        if fault == "down":
            rec.start()
        await wait_in_thread(rec, lambda r: msg_id in r.accepted)
        await eventually(lambda: d.statistics().delivered == 1)
        stats = d.statistics().endpoints["ep_a"]
        assert stats.retried >= 3 and stats.dead_lettered == 0
        assert await pending(redis, "ep_a") == 0
    assert rec.accepted == {msg_id: 1}
    assert rec.bad_signatures == 0
    if fault == "redirect":
        assert all(h.get("host") != "elsewhere" for h in rec.headers_seen)


async def test_connection_refused_is_retried(redis: Redis) -> None:
    rec = Receiver(SECRET)
    rec.start()
    url = rec.url
    rec.stop()  # nothing listens on the port now
    async with dispatcher(redis, endpoint(url), max_attempts=1000) as d:
        [msg_id] = await add_messages(redis, 1)
        await eventually(lambda: d.statistics().endpoints["ep_a"].failed >= 2)
        assert "ConnectError" in (d.statistics().endpoints["ep_a"].last_error or "")
        rec.start()
        try:
            await wait_in_thread(rec, lambda r: msg_id in r.accepted)
        finally:
            rec.stop()


async def test_dead_letter_after_max_attempts_then_replay_keeps_the_id(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    rec.mode = "500"
    keys = WebhookKeys(PREFIX)
    async with dispatcher(redis, endpoint(proxy_url(proxy)), max_attempts=3) as d:
        ids = await add_messages(redis, 4)
        await eventually(lambda: d.statistics().dead_lettered == 4)
        assert await redis.xlen(keys.dead("ep_a")) == 4
        assert await pending(redis, "ep_a") == 0
        assert d.statistics().endpoints["ep_a"].failed == 12
        await eventually(lambda: d.statistics().endpoints["ep_a"].dead_letters == 4)
        rec.mode = "ok"
        assert await d.replay("ep_a") == 4
        await wait_in_thread(rec, lambda r: len(r.accepted) == 4)
        assert await redis.xlen(keys.dead("ep_a")) == 0
    assert set(rec.accepted) == set(ids)
    assert rec.bad_signatures == 0


async def test_a_hanging_receiver_does_not_stall_the_others(redis: Redis) -> None:
    with receiver(SECRET) as (slow, slow_proxy), receiver(SECRET) as (fast, fast_proxy):
        slow.mode = "hang"
        a = endpoint(proxy_url(slow_proxy), "ep_slow")
        b = endpoint(proxy_url(fast_proxy), "ep_fast")
        async with dispatcher(redis, a, b, max_in_flight=4, timeout=30.0) as d:
            ids = await add_messages(redis, 200)
            await wait_in_thread(fast, lambda r: len(r.accepted) == 200)
            assert set(fast.accepted) == set(ids)
            stats = d.statistics().endpoints["ep_slow"]
            assert stats.delivered == 0
            # Only the capped in-flight deliveries were read; the rest waits in Redis.
            assert stats.in_flight == 4
            assert await pending(redis, "ep_slow") == 4
            expected = await expected_backlog(redis, pending=4, unread=196)
            await eventually(lambda: d.statistics().endpoints["ep_slow"].backlog == expected)


async def test_backlog_stays_in_redis_while_the_receiver_is_down(redis: Redis) -> None:
    rec = Receiver(SECRET)
    rec.start()
    url = rec.url
    rec.stop()
    async with dispatcher(redis, endpoint(url), max_in_flight=8, max_attempts=10**6) as d:
        ids = await add_messages(redis, 2000)
        await eventually(lambda: d.statistics().endpoints["ep_a"].failed >= 50)
        assert d.statistics().in_flight == 8
        assert await pending(redis, "ep_a") == 8
        expected = await expected_backlog(redis, pending=8, unread=1992)
        await eventually(lambda: d.statistics().endpoints["ep_a"].backlog == expected)
        rec.start()
        try:
            await wait_in_thread(rec, lambda r: len(r.accepted) == 2000)
        finally:
            rec.stop()
        await eventually(lambda: d.statistics().endpoints["ep_a"].backlog == 0)
    assert set(rec.accepted) == set(ids)


async def test_event_filter_skips_and_acks_other_types(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    ep = endpoint(proxy_url(proxy), events=("message.sent",))
    async with dispatcher(redis, ep) as d:
        await add_messages(redis, 10)
        out_ids = await add_messages(redis, 3, start=50, stream=OUT_STREAM)
        await wait_in_thread(rec, lambda r: len(r.accepted) == 3)
        await eventually(lambda: d.statistics().endpoints["ep_a"].skipped == 10)
        assert await pending(redis, "ep_a") == 0
    assert set(rec.accepted) == set(out_ids)


async def test_refused_url_is_never_called(redis: Redis, hook: tuple[Receiver, FaultProxy]) -> None:
    rec, proxy = hook
    async with dispatcher(
        redis, endpoint(proxy_url(proxy)), allow_private=False, max_attempts=2
    ) as d:
        await add_messages(redis, 1)
        await eventually(lambda: d.statistics().dead_lettered == 1)
        assert "refused URL" in (d.statistics().endpoints["ep_a"].last_error or "")
    assert rec.attempts == 0


async def test_a_name_rebound_after_its_check_is_still_sent_to_the_checked_address(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to a public address when checked, then to loopback. The
    deliveries until the next check go to the address that was checked, addressed to the name
    (Host header, TLS SNI), never to the new answer."""
    answer = ["93.184.216.34"]
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "hooks.example":  # Redis
            return await resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer[0], port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    requests: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        ep = endpoint("https://hooks.example:8443/hook")
        async with dispatcher(redis, ep, allow_private=False, http=http, url_recheck=3600) as d:
            await add_messages(redis, 1)
            await eventually(lambda: d.statistics().delivered == 1)
            answer[0] = "127.0.0.1"  # re-pointed at loopback after the check
            await add_messages(redis, 2, start=1)
            await eventually(lambda: d.statistics().delivered == 3)
    assert [(r.url.host, r.url.port, r.url.path) for r in requests] == [
        ("93.184.216.34", 8443, "/hook")
    ] * 3
    assert {r.headers["host"] for r in requests} == {"hooks.example:8443"}
    assert {r.extensions["sni_hostname"] for r in requests} == {"hooks.example"}


async def test_an_unexpected_error_is_a_failed_attempt_not_a_lost_delivery(redis: Redis) -> None:
    def receive(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the transport broke")

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        ep = endpoint("http://127.0.0.1:9/hook")
        async with dispatcher(redis, ep, http=http, max_attempts=2) as d:
            await add_messages(redis, 1)
            await eventually(lambda: d.statistics().dead_lettered == 1)
            assert "RuntimeError: the transport broke" in (
                d.statistics().endpoints["ep_a"].last_error or ""
            )
    assert await pending(redis, "ep_a") == 0


async def test_a_stopped_dispatchers_deliveries_are_taken_over(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    rec.mode = "hang"
    ep = endpoint(proxy_url(proxy))
    first = dispatcher(redis, ep, consumer="first", timeout=30.0, max_in_flight=5)
    async with first:
        ids = await add_messages(redis, 30)
        await eventually(lambda: first.statistics().in_flight == 5)
    # "first" is gone with 5 deliveries pending in its name.
    assert await pending(redis, "ep_a") == 5
    rec.mode = "ok"
    async with dispatcher(redis, ep, consumer="second", claim_idle=0.5) as second:
        await wait_in_thread(rec, lambda r: set(ids) <= set(r.accepted))
        await eventually(lambda: second.statistics().delivered == 30)
        assert await pending(redis, "ep_a") == 0
    assert rec.bad_signatures == 0


async def test_failed_attempts_survive_a_takeover(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    rec.mode = "500"
    ep = endpoint(proxy_url(proxy))
    keys = WebhookKeys(PREFIX)
    first = dispatcher(redis, ep, consumer="first", max_attempts=4, backoff=Backoff(5.0, 5.0))
    async with first:
        await add_messages(redis, 1)
        await eventually(lambda: first.statistics().failed == 1)
        await eventually(lambda: redis.hlen(keys.attempts("ep_a")))  # type: ignore[arg-type]
    second = dispatcher(redis, ep, consumer="second", max_attempts=4, claim_idle=0.5)
    async with second:
        await eventually(lambda: second.statistics().dead_lettered == 1)
        # 1 attempt by "first" + 3 by "second" = max_attempts.
        assert second.statistics().failed == 3


async def test_stored_endpoints_are_picked_up_and_dropped(
    redis: Redis, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    store = EndpointStore(redis, key_prefix=PREFIX, allow_private=True)
    async with WebhookDispatcher(
        redis, sources=default_sources(PREFIX), store=store, key_prefix=PREFIX, **FAST
    ) as d:
        ep = await store.add(proxy_url(proxy), secret=SECRET)
        await eventually(lambda: ep.id in d.statistics().endpoints)
        [msg_id] = await add_messages(redis, 1)
        await wait_in_thread(rec, lambda r: msg_id in r.accepted)
        assert await store.delete(ep.id)
        await eventually(lambda: ep.id not in d.statistics().endpoints)
