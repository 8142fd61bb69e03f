"""The host over real HTTP: uvicorn on a loopback port, the simulated transport, a real Redis.

Every acting (or data-revealing) endpoint: 401 without a key and with a wrong key; bad input
422; bodies over the limit 413; sends over the rate 429 with Retry-After.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.faults import RedisServer
from waclient.host import create_app, load_settings
from waclient.host.testing import RunningServer, serve
from waclient.transports.simulated import SimulatedTransport

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second-key-0123456789abcdef"
PHONE = "+15551234567"
JID = "15551234567@s.whatsapp.net"


def make_settings(tmp: Path, redis_url: str | None, **overrides: Any) -> Any:
    base: dict[str, Any] = {
        "api_key": f"{KEY},{OTHER_KEY}",
        "transport": "simulated",
        "redis_url": redis_url,
        "session_dir": tmp,
        "memory_log_interval": 0,
        "memory_check_interval": 0.05,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "send_burst": 1000,
        "send_rate": 1000,
        "schedule_burst": 1000,
        "schedule_rate": 1000,
        "auth_failures": 1_000_000,  # the auth matrix fails on purpose, from one address
    }
    base.update(overrides)
    return load_settings(**base)


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready: {client.get('/health/ready').text}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def running(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()  # message ids of the simulated transport restart at 1
    settings = make_settings(tmp_path_factory.mktemp("host"), redis_server.url)
    with serve(create_app(settings)) as srv:
        yield srv


@pytest.fixture
def api(running: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, headers={"X-API-Key": KEY}, timeout=30) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def anon(running: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=30) as c:
        yield c


def future(minutes: int = 60) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


VALID_JOB = "0" * 32
GROUP = "120363000000000001@g.us"
VALID_ENDPOINT = "ep_" + "0" * 16
PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/messages/text", {"to": PHONE, "text": "hi"}),
    ("POST", "/scheduled", {"to": PHONE, "text": "hi", "cron": "0 9 * * *"}),
    ("GET", "/scheduled", None),
    ("GET", f"/scheduled/{VALID_JOB}", None),
    ("DELETE", f"/scheduled/{VALID_JOB}", None),
    ("GET", "/session", None),
    ("GET", "/session/qr", None),
    ("GET", "/session/qr.png", None),
    ("POST", "/session/pair-code", {"phone": PHONE}),
    ("GET", "/health/memory", None),
    ("GET", "/health/redis", None),
    ("GET", "/metrics", None),
    ("POST", "/messages/media", None),
    ("POST", "/messages/reaction", {"message": {"chat": PHONE, "id": "A1"}, "emoji": "x"}),
    ("POST", "/messages/read", {"message": {"chat": PHONE, "id": "A1"}}),
    ("POST", "/presence", {"state": "available"}),
    ("GET", f"/contacts/{PHONE}", None),
    ("POST", "/groups", {"name": "g"}),
    ("GET", "/groups", None),
    ("GET", f"/groups/{GROUP}", None),
    ("POST", f"/groups/{GROUP}/participants", {"participants": [PHONE], "action": "add"}),
    ("POST", "/webhooks", {"url": "https://example.com/hook"}),
    ("GET", "/webhooks", None),
    ("DELETE", f"/webhooks/{VALID_ENDPOINT}", None),
    ("POST", f"/webhooks/{VALID_ENDPOINT}/replay", None),
    ("POST", "/debug/inbound", {"from": PHONE, "text": "hi"}),
]


def test_every_route_is_covered_by_the_auth_matrix(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    open_paths = {"/health", "/health/ready", "/dashboard"}  # the page; its data calls need the key
    documented = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if path not in open_paths
    }
    covered = {
        (
            m,
            p.replace(VALID_JOB, "{job_id}")
            .replace(PHONE, "{phone}")
            .replace(GROUP, "{jid}")
            .replace(VALID_ENDPOINT, "{endpoint_id}"),
        )
        for m, p, _ in PROTECTED
    }
    assert documented == covered


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_key_is_401(
    anon: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = anon.request(method, path, json=body)
    assert r.status_code == 401, r.text
    assert r.json() == {"error": "unauthorized", "message": "missing X-API-Key header"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("wrong", ["", "x", KEY[:-1], KEY + "x", KEY.upper(), "é" * 20])
def test_wrong_key_is_401(
    anon: httpx.Client, method: str, path: str, body: dict[str, Any] | None, wrong: str
) -> None:
    r = anon.request(method, path, json=body, headers={"X-API-Key": wrong.encode("utf-8")})
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"
    assert wrong not in r.text or not wrong


def test_auth_beats_bad_input(anon: httpx.Client) -> None:
    r = anon.post("/messages/text", json={"to": "nope", "text": ""})
    assert r.status_code == 401


def test_second_key_works(anon: httpx.Client) -> None:
    r = anon.get("/session", headers={"X-API-Key": OTHER_KEY})
    assert r.status_code == 200


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "waclient")


def test_key_is_never_logged(tmp_path: Path, redis_server: RedisServer) -> None:
    """The server's own loggers (uvicorn's access and error logs, waclient's), at debug level,
    through a key in the header, a wrong key, bad input and a key in the query string."""
    captured = Captured()
    settings = make_settings(tmp_path, redis_server.url, log_level="debug")
    with serve(create_app(settings), log_level="debug") as srv:
        loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
        for logger in loggers:
            logger.addHandler(captured)
        try:
            with httpx.Client(base_url=srv.url) as c:
                c.get("/session", headers={"X-API-Key": KEY})
                c.get("/session", headers={"X-API-Key": KEY + "wrong"})
                c.post("/messages/text", headers={"X-API-Key": KEY}, json={"to": "b", "text": "x"})
                assert c.get("/session", params={"api_key": KEY}).status_code == 400
        finally:
            for logger in loggers:
                logger.removeHandler(captured)
    lines = [r.getMessage() for r in captured.records]
    access = [r.getMessage() for r in captured.records if r.name == "uvicorn.access"]
    assert len(access) >= 4, lines  # the capture works: every request was logged
    assert any("api_key=REDACTED" in line for line in access), access
    assert not any(KEY in line for line in lines)


# -- health ------------------------------------------------------------------------------------


def test_health_is_open_and_trivial(anon: httpx.Client) -> None:
    r = anon.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ready(anon: httpx.Client, api: httpx.Client) -> None:
    body = anon.get("/health/ready").json()
    assert body == {
        "ready": True,
        "whatsapp": {
            "state": "connected",
            "connected": True,
            "failures_in_a_row": 0,
            "restarts": 0,
            "restarts_last_hour": 0,
            "next_restart_at": None,
            "gave_up": None,
            "advice": None,
        },
        "redis": {"configured": True, "up": True, "writable": True},
    }


def test_health_memory(api: httpx.Client) -> None:
    r = api.get("/health/memory")
    assert r.status_code == 200
    body = r.json()
    snap = body["snapshot"]
    for field in ("rss", "pss", "py_blocks", "fds", "threads", "tasks", "total"):
        assert isinstance(snap[field], int) and snap[field] > 0, field
    assert snap["gc_objects"] is None
    # The two recorders, self-healing's state events, and receipts for webhooks.
    assert body["listeners"] == {
        "Message": 1,
        "SentMessage": 1,
        "StateChange": 1,
        "PairStatus": 1,
        "Receipt": 1,
    }
    guard = body["guard"]
    assert guard["level"] == "ok" and guard["limits"]["soft"] < guard["limits"]["hard"]
    assert body["worker"] is None  # the simulated transport has no worker process
    with_gc = api.get("/health/memory", params={"gc_objects": "true"}).json()
    assert with_gc["snapshot"]["gc_objects"] > 1000
    assert api.get("/health/memory", params={"gc_objects": "maybe"}).status_code == 422


def test_health_redis(api: httpx.Client) -> None:
    body = api.get("/health/redis").json()
    assert body["configured"] is True and body["up"] is True
    assert set(body["recorders"]) == {"in", "out"}
    for stats in body["recorders"].values():
        for field in ("up", "buffered", "spooled", "dropped", "written", "replayed"):
            assert field in stats
    assert body["scheduler"]["running"] is True


def test_metrics_exposition_parses(api: httpx.Client) -> None:
    api.get("/health")
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "waclient_http_requests",
        "waclient_memory_used_bytes",
        "waclient_memory_soft_limit_bytes",
        "waclient_python_blocks",
        "waclient_listeners",
        "waclient_client_state",
        "waclient_recorder_spooled",
        "waclient_recorder_redis_up",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    routes = {s.labels.get("route") for s in families["waclient_http_requests"].samples}
    assert "/health" in routes
    state = {s.labels["state"]: s.value for s in families["waclient_client_state"].samples}
    assert state["connected"] == 1 and sum(state.values()) == 1


def test_openapi_documents_everything(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    for path in (
        "/health",
        "/health/ready",
        "/health/memory",
        "/health/redis",
        "/metrics",
        "/messages/text",
        "/scheduled",
        "/scheduled/{job_id}",
        "/session",
        "/session/qr",
        "/session/qr.png",
        "/session/pair-code",
    ):
        assert path in spec["paths"], path
        for op in spec["paths"][path].values():
            assert op.get("summary") or op.get("description")
    send = spec["paths"]["/messages/text"]["post"]["responses"]
    assert {"200", "401", "413", "422", "429", "503"} <= set(send)


def test_unknown_route_is_json_404(anon: httpx.Client, api: httpx.Client) -> None:
    r = api.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    # without the key, the door answers first: every path but the open ones needs it
    assert anon.get("/nope").json()["error"] == "unauthorized"


# -- sending -----------------------------------------------------------------------------------


def test_send_text_and_it_is_recorded(api: httpx.Client, redis_server: RedisServer) -> None:
    r = api.post("/messages/text", json={"to": PHONE, "text": "hello"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chat"] == JID and body["text"] == "hello" and body["id"].startswith("SIM")
    r = api.post("/messages/text", json={"to": "120363012345678901@g.us", "text": "hi group"})
    assert r.status_code == 200 and r.json()["chat"] == "120363012345678901@g.us"
    deadline = time.monotonic() + 30
    while True:
        stats = api.get("/health/redis").json()["recorders"]["out"]
        if stats["written"] >= 2 and stats["buffered"] == 0:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    import redis as redis_sync

    with redis_sync.Redis.from_url(redis_server.url) as r2:
        ids = {fields[b"id"].decode() for _, fields in r2.xrange("waclient:messages:out")}
    assert body["id"] in ids


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"to": "12345", "text": "hi"}, "to: not a phone number"),
        ({"to": "+1555abc4567", "text": "hi"}, "to: not a phone number"),
        ({"to": "15551234567@example.com", "text": "hi"}, "to: not a phone number"),
        ({"to": "1234567890123456", "text": "hi"}, "to: not a phone number"),
        ({"to": PHONE + "\n", "text": "hi"}, "to: not a phone number"),
        ({"to": PHONE, "text": ""}, "text: String should have at least 1 character"),
        ({"to": PHONE, "text": "  \n\t "}, "text: text must not be empty"),
        ({"to": PHONE, "text": "x" * 4097}, "text: String should have at most 4096"),
        ({"to": PHONE}, "text: Field required"),
        ({"text": "hi"}, "to: Field required"),
        ({"to": PHONE, "text": "hi", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"to": 15551234567, "text": "hi"}, "to: Input should be a valid string"),
        ([], "Input should be a valid dictionary"),
    ],
)
def test_send_bad_input_is_422(api: httpx.Client, payload: Any, fragment: str) -> None:
    r = api.post("/messages/text", json=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_error"
    assert fragment in body["message"], body["message"]
    assert all("input" not in d for d in body["details"])


def test_send_lone_surrogate_is_422(api: httpx.Client) -> None:
    r = api.post(
        "/messages/text",
        content=b'{"to": "+15551234567", "text": "bad \\ud800 text"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "unicode" in r.json()["message"]


def test_send_malformed_json_is_422(api: httpx.Client) -> None:
    r = api.post("/messages/text", content=b'{"to": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_body_over_limit_is_413_by_content_length(api: httpx.Client) -> None:
    r = api.post("/messages/text", json={"to": PHONE, "text": "x" * 70_000})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_body_over_limit_is_413_when_streamed(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"to": "+15551234567", "text": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = api.post("/messages/text", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_streamed_body_under_limit_is_accepted(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"to": "+15551234567", '
        yield b'"text": "streamed"}'

    r = api.post("/messages/text", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/scheduled", "/session/pair-code"])
def test_other_bodies_over_limit_are_413(api: httpx.Client, path: str) -> None:
    r = api.post(path, content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


# -- scheduled ---------------------------------------------------------------------------------


def test_schedule_list_get_cancel(api: httpx.Client) -> None:
    r = api.post(
        "/scheduled",
        json={"to": PHONE, "text": "daily", "cron": "0 9 * * *", "tz": "Europe/Lisbon"},
    )
    assert r.status_code == 201, r.text
    cron_job = r.json()
    assert cron_job["kind"] == "cron" and cron_job["tz"] == "Europe/Lisbon"
    assert cron_job["chat"] == JID
    r = api.post("/scheduled", json={"to": JID, "text": "once", "at": future()})
    assert r.status_code == 201, r.text
    once = r.json()
    assert once["kind"] == "once"
    listed = api.get("/scheduled").json()
    ids = [j["id"] for j in listed["jobs"]]
    assert cron_job["id"] in ids and once["id"] in ids and listed["count"] == len(ids)
    assert api.get(f"/scheduled/{once['id']}").json()["text"] == "once"
    assert api.delete(f"/scheduled/{once['id']}").status_code == 204
    assert api.get(f"/scheduled/{once['id']}").status_code == 404
    assert api.delete(f"/scheduled/{once['id']}").status_code == 404
    assert api.delete(f"/scheduled/{cron_job['id']}").status_code == 204


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"to": PHONE, "text": "x", "cron": "not a cron"}, "cron"),
        ({"to": PHONE, "text": "x", "cron": "0 9 30 2 *"}, "never fires"),
        ({"to": PHONE, "text": "x", "cron": "61 * * * *"}, "cron"),
        ({"to": PHONE, "text": "x", "at": "2001-01-01T00:00:00+00:00"}, "in the past"),
        ({"to": PHONE, "text": "x", "at": "2030-01-01T00:00:00"}, "timezone"),
        ({"to": PHONE, "text": "x", "at": "tomorrow"}, "at:"),
        ({"to": PHONE, "text": "x"}, "exactly one of"),
        ({"to": PHONE, "text": "x", "cron": "0 9 * * *", "at": future()}, "exactly one of"),
        ({"to": PHONE, "text": "x", "cron": "0 9 * * *", "tz": "Mars/Base"}, "time zone"),
        ({"to": "nope", "text": "x", "cron": "0 9 * * *"}, "to: not a phone number"),
        ({"to": PHONE, "text": " ", "cron": "0 9 * * *"}, "text"),
    ],
)
def test_schedule_bad_input_is_422(
    api: httpx.Client, payload: dict[str, Any], fragment: str
) -> None:
    r = api.post("/scheduled", json=payload)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["message"], r.json()["message"]


@pytest.mark.parametrize("job_id", ["abc", "0" * 31, "G" * 32, "0" * 33])
def test_bad_job_id_is_422(api: httpx.Client, job_id: str) -> None:
    assert api.get(f"/scheduled/{job_id}").status_code == 422
    assert api.delete(f"/scheduled/{job_id}").status_code == 422


# -- session -----------------------------------------------------------------------------------


def test_session_state(api: httpx.Client) -> None:
    body = api.get("/session").json()
    assert body["state"] == "connected" and body["connected"] is True
    assert body["transport"] == "simulated" and body["qr_available"] is False


def test_qr_absent_is_404(api: httpx.Client) -> None:
    assert api.get("/session/qr").status_code == 404
    assert api.get("/session/qr.png").status_code == 404


def test_qr_is_not_offered_once_connected(api: httpx.Client, running: RunningServer) -> None:
    transport = running.app.state.host.transport
    transport.latest_qr = "2@stale"
    try:
        assert api.get("/session/qr").status_code == 404
        assert api.get("/session").json()["qr_available"] is False
    finally:
        transport.latest_qr = None


def test_qr_present_as_text_and_png(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(auto_connect=False)  # a session waiting to be paired
    sim.latest_qr = "2@abcdef,ghijkl,mnopqr,stuvwx"
    with (
        serve(create_app(make_settings(tmp_path, redis_url), transport=sim)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}) as api,
    ):
        assert api.get("/session/qr").json() == {"qr": "2@abcdef,ghijkl,mnopqr,stuvwx"}
        assert api.get("/session").json()["qr_available"] is True
        png = api.get("/session/qr.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("phone", ["", "abc", "12345", "+1 555 123 4567", "1234567890123456"])
def test_pair_code_bad_phone_is_422(api: httpx.Client, phone: str) -> None:
    r = api.post("/session/pair-code", json={"phone": phone})
    assert r.status_code == 422 and "phone" in r.json()["message"]


class NoPairing:
    """A transport without the Pairing capability: everything else is a simulated one's."""

    def __init__(self) -> None:
        self.inner = SimulatedTransport()

    async def run(self, sink: Any) -> None:
        await self.inner.run(sink)

    async def stop(self) -> None:
        await self.inner.stop()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.call(method, *args, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


def test_pair_code_unsupported_is_409(tmp_path: Path, redis_url: str) -> None:
    app = create_app(make_settings(tmp_path, redis_url), transport=NoPairing())
    with serve(app) as srv, httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}) as api:
        wait_ready(api)
        r = api.post("/session/pair-code", json={"phone": PHONE})
        assert r.status_code == 409 and r.json()["error"] == "pair_code_unsupported"
        assert api.get("/session").json()["pair_code_supported"] is False


def test_pair_code_with_a_transport_that_pairs(api: httpx.Client, running: RunningServer) -> None:
    sim = running.app.state.host.transport
    before = sim.whatsapp.count("PairPhone")
    r = api.post("/session/pair-code", json={"phone": PHONE})
    assert r.status_code == 200 and r.json() == {"code": "51234567"}  # the simulated code
    assert sim.whatsapp.count("PairPhone") == before + 1
    assert api.get("/session").json()["pair_code_supported"] is True


def test_huge_streamed_body_is_refused_and_the_host_survives(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8 * 1024):  # 8 MiB, past the drain cap: the host may just hang up
            yield b"x" * 1024

    try:
        r = api.post(
            "/messages/text", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
    except httpx.TransportError:
        pass  # connection closed while we were still sending: refused all the same
    assert api.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/scheduled", "GET, HEAD, POST"),
        ("POST", f"/scheduled/{VALID_JOB}", "DELETE, GET, HEAD"),
        ("DELETE", "/messages/text", "POST"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
def test_405_names_every_allowed_method(
    api: httpx.Client, method: str, path: str, allow: str
) -> None:
    r = api.request(method, path)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"] == "method_not_allowed"


def test_undecodable_body_is_400(api: httpx.Client) -> None:
    r = api.post(
        "/messages/text", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.json()["error"] in ("bad_request", "validation_error")
