"""The host's webhook routes over real uvicorn, a real Redis and a real receiver: add, list,
delete, replay, /metrics per endpoint, and POST /debug/inbound (simulated transport only);
receipts and recorder outages delivered as events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_host_api import JID, KEY, PHONE, make_settings, wait_ready
from webhook_receiver import Receiver, proxy_url, receiver

from harness.faults import FaultProxy
from waclient.host import create_app
from waclient.host.testing import serve
from waclient.transports import Transport
from waclient.transports.simulated import SimulatedTransport, receipt_event
from waclient.webhooks import generate_secret

SECRET = generate_secret()
WEBHOOKS: dict[str, Any] = {
    "webhook_allow_private": True,
    "webhook_max_attempts": 2,
    "webhook_timeout": 5.0,
    "webhook_max_endpoints": 3,
}


@pytest.fixture
def hook() -> Iterator[tuple[Receiver, FaultProxy]]:
    with receiver(SECRET) as pair:
        yield pair


@contextmanager
def host_api(
    tmp_path: Path, redis_url: str, transport: Transport | None = None
) -> Iterator[httpx.Client]:
    """A ready host (simulated transport, webhooks to loopback allowed) and a client with the
    key."""
    settings = make_settings(tmp_path, redis_url, **WEBHOOKS)
    with (
        serve(create_app(settings, transport=transport)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as client,
    ):
        wait_ready(client)
        yield client


@pytest.fixture
def api(tmp_path: Path, redis_url: str) -> Iterator[httpx.Client]:
    with host_api(tmp_path, redis_url) as client:
        yield client


def until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
    return result


def metric(api: httpx.Client, name: str, endpoint: str, label: str = "endpoint") -> float | None:
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get(label) == endpoint:
                return float(sample.value)
    return None


def test_inbound_and_sent_messages_reach_the_receiver_signed(
    api: httpx.Client, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    created = api.post("/webhooks", json={"url": proxy_url(proxy), "secret": SECRET})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"] == SECRET and endpoint["id"].startswith("ep_")
    r = api.post("/debug/inbound", json={"from": PHONE, "text": "hello webhook"})
    assert r.status_code == 202, r.text
    assert api.post("/messages/text", json={"to": PHONE, "text": "and back"}).status_code == 200
    until(lambda: rec.wait_for(lambda x: len(x.accepted) >= 2, 1))
    payloads = {p["type"]: p for p in rec.payloads.values()}
    assert payloads["message.received"]["data"]["text"] == "hello webhook"
    assert payloads["message.received"]["data"]["chat"] == JID
    assert payloads["message.sent"]["data"]["text"] == "and back"
    assert rec.bad_signatures == 0
    listed = api.get("/webhooks").json()
    assert listed["count"] == 1
    assert "secret" not in listed["endpoints"][0]
    assert SECRET not in api.get("/webhooks").text
    until(lambda: metric(api, "waclient_webhook_delivered_total", endpoint["id"]) == 2)


def test_dead_letters_are_counted_and_replayed(
    api: httpx.Client, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    rec.mode = "500"
    body = {"url": proxy_url(proxy), "secret": SECRET, "events": ["message.received"]}
    endpoint = api.post("/webhooks", json=body).json()["id"]
    api.post("/debug/inbound", json={"from": PHONE, "text": "one"})
    until(lambda: metric(api, "waclient_webhook_dead_lettered_total", endpoint) == 1)
    until(lambda: metric(api, "waclient_webhook_dead_letters", endpoint) == 1)
    assert metric(api, "waclient_webhook_failed_total", endpoint) == 2
    rec.mode = "ok"
    assert api.post(f"/webhooks/{endpoint}/replay").json() == {"replayed": 1}
    until(lambda: rec.wait_for(lambda x: len(x.accepted) == 1, 1))
    [payload] = rec.payloads.values()
    assert payload["data"]["text"] == "one"
    until(lambda: metric(api, "waclient_webhook_dead_letters", endpoint) == 0)


def test_delete_and_limits(api: httpx.Client, hook: tuple[Receiver, FaultProxy]) -> None:
    _, proxy = hook
    ids = [api.post("/webhooks", json={"url": proxy_url(proxy)}).json()["id"] for _ in range(3)]
    r = api.post("/webhooks", json={"url": proxy_url(proxy)})
    assert r.status_code == 409 and "at most 3" in r.json()["message"]
    assert api.delete(f"/webhooks/{ids[0]}").status_code == 204
    assert api.delete(f"/webhooks/{ids[0]}").status_code == 404
    assert api.post(f"/webhooks/{ids[0]}/replay").status_code == 404
    assert [e["id"] for e in api.get("/webhooks").json()["endpoints"]] == ids[1:]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"url": "ftp://example.com/x"}, "only http"),
        ({"url": "https://example.com/x", "secret": "nope"}, "whsec_"),
        ({"url": "https://example.com/x", "events": ["message.nope"]}, "unknown event type"),
        ({"url": "https://example.com/x", "extra": 1}, "extra"),
        ({}, "url"),
    ],
)
def test_bad_endpoints_are_422(api: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    r = api.post("/webhooks", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.text


def test_private_urls_are_refused_by_default(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url)
    with (
        serve(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as api,
    ):
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://[::1]/"):
            r = api.post("/webhooks", json={"url": url})
            assert r.status_code == 422 and "ALLOW_PRIVATE" in r.json()["message"], r.text


def test_debug_inbound_exists_only_with_the_simulated_transport(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url, transport="neonize")
    app = create_app(settings, transport=SimulatedTransport())
    with (
        serve(app) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as api,
    ):
        assert api.post("/debug/inbound", json={"from": PHONE, "text": "x"}).status_code == 404
        assert "/debug/inbound" not in api.get("/openapi.json").json()["paths"]


def subscribe(api: httpx.Client, proxy: FaultProxy, *events: str) -> None:
    body = {"url": proxy_url(proxy), "secret": SECRET, "events": list(events)}
    created = api.post("/webhooks", json=body)
    assert created.status_code == 201, created.text


def when(payload: Any) -> float:
    return datetime.fromisoformat(payload["timestamp"]).timestamp()


def in_stream_order(rec: Receiver) -> list[Any]:
    """The payloads received, in the order of their stream entries (``<source>_<entry id>``)."""

    def entry(webhook_id: str) -> tuple[int, ...]:
        return tuple(int(n) for n in webhook_id.split("_", 1)[1].split("-"))

    return [rec.payloads[i] for i in sorted(rec.payloads, key=entry)]


def test_a_receipt_arrives_as_message_receipt(
    tmp_path: Path, redis_url: str, hook: tuple[Receiver, FaultProxy]
) -> None:
    rec, proxy = hook
    sim = SimulatedTransport()
    with host_api(tmp_path, redis_url, transport=sim) as api:
        subscribe(api, proxy, "message.receipt")
        # The simulated Go side emits a real neonize Receipt event into the host's client.
        event = receipt_event(["3EB0AA", "3EB0BB"], "read", chat=JID, timestamp=1_764_358_200)
        asyncio.run(sim.emit(event))
        assert rec.wait_for(lambda x: len(x.accepted) == 1)
        receipts = api.get("/health/redis").json()["events"]["receipts"]
        published = metric(api, "waclient_events_published_total", "receipts", label="stream")
        assert published == 1
        assert metric(api, "waclient_events_backlog", "receipts", label="stream") == 0
    assert rec.bad_signatures == 0  # every delivery verified with standardwebhooks
    [(webhook_id, payload)] = rec.payloads.items()
    assert webhook_id.startswith("rc_")
    assert payload == {
        "type": "message.receipt",
        "timestamp": "2025-11-28T19:30:00Z",
        "data": {
            "chat": JID,
            "sender": JID,
            "from_me": False,
            "message_ids": ["3EB0AA", "3EB0BB"],
            "type": "read",
            "timestamp": 1_764_358_200,
        },
    }
    assert receipts["published"] == 1 and receipts["backlog"] == 0 and receipts["dropped"] == 0


def test_a_redis_outage_arrives_as_began_then_ended(
    tmp_path: Path, fault_proxy: FaultProxy, hook: tuple[Receiver, FaultProxy]
) -> None:
    """The host's Redis goes through a FaultProxy that refuses and resets connections: the
    inbound recorder spools a message and tells its outage; ``recorder.outage_began`` waits in
    the state events' backlog (its XADD fails too) and both events arrive once Redis is back."""
    rec, proxy = hook
    with host_api(tmp_path, fault_proxy.url) as api:
        subscribe(api, proxy, "recorder.*")
        fault_proxy.refuse(True)
        fault_proxy.reset()
        r = api.post("/debug/inbound", json={"from": PHONE, "text": "during the outage"})
        assert r.status_code == 202, r.text

        def held() -> bool:
            redis = api.get("/health/redis").json()
            state, inbound = redis["events"]["state"], redis["recorders"]["in"]
            return not inbound["up"] and not state["up"] and state["backlog"] == 1

        until(held)
        fault_proxy.refuse(False)
        assert rec.wait_for(lambda x: len(x.accepted) == 2)
        state = api.get("/health/redis").json()["events"]["state"]
    assert rec.bad_signatures == 0
    began, ended = in_stream_order(rec)
    assert (began["type"], ended["type"]) == ("recorder.outage_began", "recorder.outage_ended")
    assert began["data"].keys() == {"stream", "direction", "began", "error"}
    assert began["data"]["stream"].endswith(":messages:in") and began["data"]["direction"] == "in"
    assert ended["data"]["began"] == began["data"]["began"]
    assert ended["data"]["duration"] == ended["data"]["ended"] - ended["data"]["began"] > 0
    assert ended["data"]["spooled"] == 1 and ended["data"]["dropped"] == 0
    # Each at the time it happened, not when Redis took it.
    assert when(began) == pytest.approx(began["data"]["began"], abs=1e-6)
    assert when(ended) == pytest.approx(ended["data"]["ended"], abs=1e-6)
    assert state["backlog"] == 0 and state["dropped"] == 0 and state["published"] >= 2
