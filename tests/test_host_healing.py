"""Self-healing and state events: the supervisor of clients on the simulated transport, and the
host over real uvicorn and a real Redis (/health, /health/ready, /session, the events stream)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from test_host_api import KEY, make_settings
from test_host_process import answers, free_port, host_env, host_process, wait_until

from harness.faults import Socks5Refuser
from waclient.client import Backoff, Client, ClientState
from waclient.host import create_app
from waclient.host.healing import ClientSupervisor
from waclient.host.state_events import StateEvents
from waclient.host.testing import serve
from waclient.redis import open_redis
from waclient.transports.simulated import SimulatedTransport, logged_out_event


def factory(transport: SimulatedTransport) -> Callable[[], Client]:
    def make() -> Client:
        return Client(transport, backoff=Backoff(0, 0, jitter=0), max_failures=2)

    return make


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def stream_types(redis: Redis, stream: str) -> list[str]:
    entries: Any = await redis.xrange(stream)
    return [fields[b"type"].decode() for _, fields in entries]


async def test_failed_then_fresh_client_connects(redis_url: str) -> None:
    sim = SimulatedTransport(outcomes=["fail", "fail"])  # fails until the first restart
    redis = open_redis(redis_url)
    async with StateEvents(redis, "t:events") as events:
        sup = ClientSupervisor(factory(sim), cooldown=0.05, max_restarts=2, events=events)
        await sup.start()
        try:
            first = sup.client
            await until(lambda: sup.restarts == 1)
            assert sup.client is not first
            assert first is not None and first.state is ClientState.FAILED
            assert sup.client is not None
            assert await sup.client.wait_for(ClientState.CONNECTED, timeout=30)
            assert sup.liveness_failure() is None
            stats = sup.statistics()
            assert stats.state == "connected" and stats.restarts_last_hour == 1
        finally:
            await sup.close()
        assert await events.flush(30)
    types = await stream_types(redis, "t:events")
    assert types[:3] == ["session.failed", "session.restarted", "session.connected"]
    await redis.aclose()


async def test_gives_up_after_max_restarts() -> None:
    sim = SimulatedTransport(default_outcome="fail")
    sup = ClientSupervisor(factory(sim), cooldown=0.01, max_restarts=2)
    await sup.start()
    try:
        await until(lambda: sup.liveness_failure() is not None)
        assert sup.restarts == 2
        assert "2 times in the last hour" in (sup.liveness_failure() or "")
        # Three clients (the first and two restarts), two failed attempts each; no more.
        assert sim.sessions_started == 6
    finally:
        await sup.close()


async def test_logged_out_never_restarts() -> None:
    sim = SimulatedTransport()
    sup = ClientSupervisor(factory(sim), cooldown=0, max_restarts=5)
    await sup.start()
    try:
        assert sup.client is not None
        await sup.client.wait_for(ClientState.CONNECTED, timeout=30)
        await sim.emit(logged_out_event())
        await sup.client.wait_for(ClientState.LOGGED_OUT, timeout=30)
        assert sup._task is not None
        await asyncio.wait_for(sup._task, 30)  # the watcher ended: nothing more will happen
        assert sup.restarts == 0 and sim.sessions_started == 1
        assert sup.liveness_failure() is None
        assert "pair again" in (sup.statistics().advice or "")
    finally:
        await sup.close()


def test_host_health_after_giving_up(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(default_outcome="fail")
    settings = make_settings(
        tmp_path, redis_url, max_failures=2, restart_cooldown=0.05, max_restarts=2
    )
    with (
        serve(create_app(settings, transport=sim)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):
        deadline = time.monotonic() + 60
        while (health := http.get("/health")).status_code == 200:
            assert time.monotonic() < deadline, "never gave up"
            time.sleep(0.02)
        assert health.status_code == 503
        assert "restarted 2 times" in health.json()["reason"]
        ready = http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["whatsapp"]["restarts_last_hour"] == 2
        session = http.get("/session", headers={"X-API-Key": KEY}).json()
        assert session["healing"]["gave_up"]


def test_host_logged_out_is_alive_not_ready(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport()
    settings = make_settings(tmp_path, redis_url, restart_cooldown=0, max_restarts=5)
    with (
        serve(create_app(settings, transport=sim)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):
        deadline = time.monotonic() + 60
        while http.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        loop = srv.app.state.host.healing.client._loop
        asyncio.run_coroutine_threadsafe(sim.emit(logged_out_event()), loop).result(30)
        while (ready := http.get("/health/ready")).json()["whatsapp"]["state"] != "logged_out":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready.status_code == 503
        assert "pair again" in ready.json()["whatsapp"]["advice"]
        assert http.get("/health").status_code == 200
        assert sim.sessions_started == 1

    async def events() -> list[str]:
        redis = open_redis(redis_url)
        try:
            return await stream_types(redis, f"{settings.session_name}:events")
        finally:
            await redis.aclose()

    types = asyncio.run(events())
    assert types == ["session.connected", "session.logged_out"]


def test_state_event_entries_are_webhook_events() -> None:
    from waclient.webhooks.events import decode_state, state_fields

    fields = {k.encode(): v.encode() for k, v in state_fields("session.failed", {"a": 1}).items()}
    event = decode_state(fields)
    assert event.type == "session.failed" and json.loads(event.body())["data"] == {"a": 1}


@pytest.mark.parametrize("bad", [{"cooldown": -1}, {"max_restarts": -1}])
def test_bad_policy_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClientSupervisor(lambda: None, **bad)  # type: ignore[arg-type, return-value]


def test_memory_soft_limit_is_a_state_event(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(
        tmp_path, redis_url, memory_soft_limit="1MiB", memory_hard_limit="1TiB"
    )

    async def types() -> list[str]:
        redis = open_redis(redis_url)
        try:
            return await stream_types(redis, f"{settings.session_name}:events")
        finally:
            await redis.aclose()

    with serve(create_app(settings)):
        deadline = time.monotonic() + 60
        while "memory.soft_limit" not in asyncio.run(types()):
            assert time.monotonic() < deadline, "no memory.soft_limit event"
            time.sleep(0.05)


@pytest.mark.slow
def test_real_neonize_worker_restarts_then_gives_up(
    tmp_path: Path, socks5_refuser: Socks5Refuser
) -> None:
    """``python -m waclient.host`` with the real neonize worker (isolated transport) failing
    against a loopback SOCKS5 refuser: FAILED after 3 attempts, two restarts 2 s apart, then
    /health 503."""
    port = free_port()
    env = host_env(
        WACLIENT_API_KEY=KEY,
        WACLIENT_TRANSPORT="isolated",
        WACLIENT_PROXY=socks5_refuser.address,
        WACLIENT_SESSION_DIR=str(tmp_path / "session"),
        WACLIENT_BIND="127.0.0.1",
        PORT=str(port),
        WACLIENT_MAX_FAILURES="3",
        WACLIENT_RESTART_COOLDOWN="2",
        WACLIENT_MAX_RESTARTS="2",
        WACLIENT_BACKOFF_INITIAL="0.05",
        WACLIENT_BACKOFF_MAX="0.1",
        WACLIENT_MEMORY_LOG_INTERVAL="0",
    )
    url = f"http://127.0.0.1:{port}"
    with host_process(env, tmp_path / "host.log") as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the host to serve")
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=5).status_code == 503,
            "/health 503",
            timeout=300,
        )
        body = httpx.get(f"{url}/health", timeout=5).json()
        session = httpx.get(f"{url}/session", headers={"X-API-Key": KEY}, timeout=5).json()
    assert "restarted 2 times" in body["reason"]
    assert session["healing"]["restarts"] == 2 and session["state"] == "failed"
    assert socks5_refuser.attempts >= 9  # three clients, three failed connects each
    log = (tmp_path / "host.log").read_text()
    assert log.count("a fresh client in 2 s") == 2
