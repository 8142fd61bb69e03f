"""The host's webhook routes over real uvicorn, a real Redis and a real receiver: add, list,
delete, replay, /metrics per endpoint, and POST /debug/inbound (simulated transport only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
from waclient.transports.simulated import SimulatedTransport
from waclient.webhooks import generate_secret

SECRET = generate_secret()


@pytest.fixture
def hook() -> Iterator[tuple[Receiver, FaultProxy]]:
    with receiver(SECRET) as pair:
        yield pair


@pytest.fixture
def api(tmp_path: Path, redis_url: str) -> Iterator[httpx.Client]:
    settings = make_settings(
        tmp_path,
        redis_url,
        webhook_allow_private=True,
        webhook_max_attempts=2,
        webhook_timeout=5.0,
        webhook_max_endpoints=3,
    )
    with (
        serve(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as client,
    ):
        wait_ready(client)
        yield client


def until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
    return result


def metric(api: httpx.Client, name: str, endpoint: str) -> float | None:
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == endpoint:
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
