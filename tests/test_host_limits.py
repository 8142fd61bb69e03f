"""The host's refusals: rate limits (429), memory guard (503, graceful stop), not connected
(503), failed sends (502), Redis down or absent (503), internal errors (JSON 500 with an id)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from test_host_api import KEY, OTHER_KEY, PHONE, make_settings, wait_ready

from harness.faults import FaultProxy
from waclient.host import create_app, load_settings
from waclient.host.limits import RateLimiter
from waclient.host.routes import session as session_routes
from waclient.host.runtime import build_transport, worker_budget
from waclient.host.testing import serve
from waclient.transports import IsolatedTransport, TransportError
from waclient.transports.simulated import SimulatedTransport

MSG = {"to": PHONE, "text": "hi"}
MIB = 2**20


def client_for(url: str, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


# -- the token bucket ----------------------------------------------------------------------------


def test_rate_limiter_bucket_and_refill() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a")
    assert wait == pytest.approx(0.5)
    assert RateLimiter.retry_after(wait) == "1"
    assert RateLimiter.retry_after(2.01) == "3"
    now[0] = 0.5
    assert rl.acquire("a") == 0.0
    assert rl.acquire("a") > 0
    now[0] = 100.0  # refills up to the burst, not beyond
    assert [rl.acquire("a") for _ in range(4)][-1] > 0
    assert rl.acquire("b") == 0.0  # keys are independent
    assert rl.limited == 3


def test_rate_limiter_bounded_keys() -> None:
    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=1, max_keys=100, clock=lambda: now[0])
    for i in range(10_000):
        rl.acquire(f"k{i}")
    assert len(rl) == 100 and rl.evicted == 9_900
    # the most recently used keys are the ones kept
    assert rl.acquire("k9999") > 0
    assert rl.acquire("k0") == 0.0


def test_rate_limiter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


# -- over HTTP -----------------------------------------------------------------------------------


def test_send_rate_limit_is_429_with_retry_after_per_key(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, send_rate=0.01, send_burst=3)
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        codes = [api.post("/messages/text", json=MSG).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = api.post("/messages/text", json=MSG)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        # bad input still spends a token: the limit is checked before the body
        assert api.post("/messages/text", json={"to": "x", "text": ""}).status_code == 429
        assert "for this API key" in r.json()["message"]
        with client_for(srv.url, OTHER_KEY) as other:
            # the other key has a full bucket of its own, but the number's budget is shared
            refused = other.post("/messages/text", json=MSG)
            assert refused.status_code == 429
            assert "outbound budget" in refused.json()["message"]
        assert api.get("/session").status_code == 200  # reads are not rate limited
        metrics = api.get("/metrics").text
        assert 'waclient_sends_total{outcome="rate_limited"} 3.0' in metrics


def test_schedule_rate_limit_is_429(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, schedule_rate=0.01, schedule_burst=1)
    job = {"to": PHONE, "text": "x", "cron": "0 9 * * *"}
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        assert api.post("/scheduled", json=job).status_code == 201
        r = api.post("/scheduled", json=job)
        assert r.status_code == 429 and "Retry-After" in r.headers


def test_not_connected_is_503(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(auto_connect=False)
    app = create_app(make_settings(tmp_path, redis_url), transport=sim)
    with serve(app) as srv, client_for(srv.url) as api:
        r = api.post("/messages/text", json=MSG)
        assert r.status_code == 503 and r.json()["error"] == "not_connected"
        assert r.headers["Retry-After"] == "5"
        ready = api.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["whatsapp"]["connected"] is False
        assert api.get("/health").status_code == 200


def test_send_failure_is_502(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport()
    sim.whatsapp.fail("send_message", "simulated send failure")
    app = create_app(make_settings(tmp_path, redis_url), transport=sim)
    with serve(app) as srv, client_for(srv.url) as api:
        wait_ready(api)
        r = api.post("/messages/text", json=MSG)
        assert r.status_code == 502 and r.json()["error"] == "send_failed"
        assert "simulated send failure" in r.json()["message"]


class ExplodingTransport(SimulatedTransport):
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals: /etc/passwd")


def test_internal_error_is_json_500_with_an_id(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(tmp_path, redis_url), transport=ExplodingTransport())
    with serve(app) as srv, client_for(srv.url) as api:
        wait_ready(api)
        with caplog.at_level(logging.ERROR, logger="waclient.host"):
            r = api.post("/messages/text", json=MSG)
        assert r.status_code == 500
        body = r.json()
        assert body["error"] == "internal_error" and len(body["error_id"]) == 16
        assert "secret internals" not in r.text and "Traceback" not in r.text
        assert body["error_id"] in caplog.text and "secret internals" in caplog.text
        assert "waclient_internal_errors_total 1.0" in api.get("/metrics").text


def test_memory_soft_limit_sheds_sends_with_503(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(
        tmp_path, redis_url, memory_soft_limit="1MiB", memory_hard_limit="1TiB"
    )
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        r = api.post("/messages/text", json=MSG)
        assert r.status_code == 503 and r.json()["error"] == "memory_shedding"
        assert r.headers["Retry-After"] == "30"
        guard = api.get("/health/memory").json()["guard"]
        assert guard["level"] == "soft" and guard["shedding"] is True
        # everything else still answers
        assert api.get("/scheduled").status_code == 200
        assert "waclient_memory_shedding 1.0" in api.get("/metrics").text


def test_memory_hard_limit_stops_the_server_gracefully(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(
        tmp_path, redis_url, memory_soft_limit="1KiB", memory_hard_limit="2KiB"
    )
    app = create_app(settings)
    with serve(app) as srv:
        wait_until(lambda: srv.stopped, "the server to stop itself")
        host = app.state.host
        assert host.exit_code == 3 and host.guard.hard_triggered
        assert host.client is not None and host.client.state.value == "stopped"  # closed


def test_no_redis_configured(tmp_path: Path) -> None:
    with serve(create_app(make_settings(tmp_path, None))) as srv, client_for(srv.url) as api:
        wait_ready(api)
        assert api.get("/health/ready").json()["redis"] == {"configured": False, "up": None}
        assert api.post("/messages/text", json=MSG).status_code == 200
        for method, path, body in [
            ("POST", "/scheduled", {"to": PHONE, "text": "x", "cron": "0 9 * * *"}),
            ("GET", "/scheduled", None),
            ("GET", "/scheduled/" + "0" * 32, None),
            ("DELETE", "/scheduled/" + "0" * 32, None),
        ]:
            r = api.request(method, path, json=body)
            assert r.status_code == 503 and r.json()["error"] == "redis_not_configured"
        redis = api.get("/health/redis").json()
        assert redis == {
            "configured": False,
            "up": None,
            "probe": None,
            "recorders": {},
            "scheduler": None,
            "events": {},
        }


def test_redis_outage(tmp_path: Path, fault_proxy: FaultProxy) -> None:
    """During an outage: scheduling is 503, sends still work (recorded to the spool), readiness
    says Redis is down; afterwards the spool drains and everything is in Redis."""
    settings = make_settings(tmp_path, fault_proxy.url)
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        fault_proxy.refuse(True)
        fault_proxy.reset()
        ids: list[str] = []
        for i in range(20):
            r = api.post("/messages/text", json={"to": PHONE, "text": f"during outage {i}"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        r = api.post("/scheduled", json={"to": PHONE, "text": "x", "cron": "0 9 * * *"})
        assert r.status_code == 503 and r.json()["error"] == "redis_unavailable"
        assert api.get("/scheduled").status_code == 503
        # /health/ready reuses a probe for up to a second
        wait_until(lambda: api.get("/health/ready").json()["redis"]["up"] is False, "not ready")
        assert api.get("/health/ready").status_code == 503

        def out_stats() -> dict[str, Any]:
            stats: dict[str, Any] = api.get("/health/redis").json()["recorders"]["out"]
            return stats

        wait_until(lambda: out_stats()["spooled"] == 20, "the records to reach the spool")
        assert out_stats()["up"] is False and out_stats()["dropped"] == 0
        fault_proxy.heal()
        wait_until(
            lambda: out_stats()["written"] >= 20 and out_stats()["spooled"] == 0,
            "the spool to drain",
        )
        assert out_stats()["replayed"] == 20
        wait_ready(api)
        import redis as redis_sync

        with redis_sync.Redis.from_url(fault_proxy.url) as r2:
            stored = [f[b"id"].decode() for _, f in r2.xrange("waclient:messages:out")]
        assert stored == ids  # all of them, in order, once


# -- answers and settings that had no test of their own ---------------------------------------


class HangingTransport(SimulatedTransport):
    """Sends never finish."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = 0

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.sending += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_too_many_jobs_is_409(tmp_path: Path, redis_url: str) -> None:
    job = {"to": PHONE, "text": "x", "cron": "0 9 * * *"}
    with (
        serve(create_app(make_settings(tmp_path, redis_url, max_scheduled=2))) as srv,
        client_for(srv.url) as api,
    ):
        wait_ready(api)
        assert [api.post("/scheduled", json=job).status_code for _ in range(2)] == [201, 201]
        r = api.post("/scheduled", json=job)
        assert r.status_code == 409 and r.json()["error"] == "too_many_jobs"
        assert api.get("/scheduled").json()["count"] == 2


def test_send_timeout_is_504(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, send_timeout=0.2)
    with (
        serve(create_app(settings, transport=HangingTransport())) as srv,
        client_for(srv.url) as api,
    ):
        wait_ready(api)
        r = api.post("/messages/text", json=MSG)
        assert r.status_code == 504 and r.json()["error"] == "send_timeout"
        assert "0.2 s" in r.json()["message"]


def test_pair_failed_is_502_and_pair_timeout_is_503(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_routes, "PAIR_TIMEOUT", 0.2)
    sim = SimulatedTransport(auto_connect=False)  # waiting to be paired

    async def refused(phone: str) -> str:
        raise TransportError("rate-overlimit")

    async def silent(phone: str) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with (
        serve(create_app(make_settings(tmp_path, redis_url), transport=sim)) as srv,
        client_for(srv.url) as api,
    ):
        sim.pair_phone = refused  # type: ignore[attr-defined]
        r = api.post("/session/pair-code", json={"phone": PHONE})
        assert r.status_code == 502 and r.json()["error"] == "pair_failed"
        assert "rate-overlimit" in r.json()["message"]
        sim.pair_phone = silent  # type: ignore[attr-defined]
        r = api.post("/session/pair-code", json={"phone": PHONE})
        assert r.status_code == 503 and r.json()["error"] == "pair_timeout"


def test_metrics_public(tmp_path: Path) -> None:
    with serve(create_app(make_settings(tmp_path, None, metrics_public=True))) as srv:
        r = httpx.get(f"{srv.url}/metrics")
        assert r.status_code == 200 and "waclient_http_requests" in r.text
        assert httpx.get(f"{srv.url}/session").status_code == 401  # the rest still needs it
    with serve(create_app(make_settings(tmp_path, None))) as srv:
        assert httpx.get(f"{srv.url}/metrics").status_code == 401


def test_worker_rss_budget_default_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(api_key=KEY)
    assert settings.worker_rss_budget is None
    assert worker_budget(settings, 256 * MIB) == int(0.4 * 256 * MIB)  # 40 % of the machine
    assert worker_budget(settings, 4096 * MIB) == 150 * MIB  # at most 150 MiB
    monkeypatch.setenv("WACLIENT_WORKER_RSS_BUDGET", "80MiB")
    monkeypatch.setenv("WACLIENT_PROXY", "socks5://127.0.0.1:1080")
    settings = load_settings(api_key=KEY)
    transport = build_transport(settings, 256 * MIB)
    assert isinstance(transport, IsolatedTransport)
    assert transport.rss_budget == 80 * MIB and transport.spec.proxy == "socks5://127.0.0.1:1080"


def test_session_name_is_the_redis_key_prefix(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, session_name="alice")
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        sent = api.post("/messages/text", json=MSG).json()["id"]
        assert api.post(
            "/scheduled", json={"to": PHONE, "text": "x", "cron": "0 9 * * *"}
        ).is_success
        wait_until(lambda: api.get("/health/redis").json()["recorders"]["out"]["written"] == 1, "w")
    with redis_sync.Redis.from_url(redis_url) as r:
        keys = {k.decode() for k in r.scan_iter("*")}
        assert "alice:messages:out" in keys and "alice:scheduler:due" in keys
        assert not any(k.startswith("waclient:") for k in keys), keys
        assert r.xrange("alice:messages:out")[0][1][b"id"].decode() == sent


def test_shutdown_timeout_bounds_a_stuck_request(tmp_path: Path, redis_url: str) -> None:
    """A send that never ends (send timeout 60 s) does not hold the stop past
    WACLIENT_SHUTDOWN_TIMEOUT (1 s): uvicorn cancels it and the server ends."""
    transport = HangingTransport()
    settings = make_settings(tmp_path, redis_url, shutdown_timeout=1)
    app = create_app(settings, transport=transport)
    with serve(app) as srv, client_for(srv.url) as api:
        wait_ready(api)
        outcome: list[Any] = []

        def stuck() -> None:
            try:
                outcome.append(api.post("/messages/text", json=MSG).status_code)
            except httpx.TransportError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=stuck)
        thread.start()
        wait_until(lambda: transport.sending == 1, "the send to start")
        srv.stop(timeout=30)  # well under the send's own 60 s
        assert srv.stopped
        thread.join(30)
        assert outcome and not thread.is_alive()
