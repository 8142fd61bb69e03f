"""Webhook signing, secrets, URL checks and event filters (no network, no Redis)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from waclient.transports.simulated import ReceiptKind, receipt_event
from waclient.webhooks import (
    Event,
    EventFilterError,
    SecretError,
    WebhookURLError,
    check_url,
    generate_secret,
    parse_event_filter,
    parse_secret,
    parse_url,
    signature_headers,
    static_endpoints,
)
from waclient.webhooks.events import event_from_receipt, matches
from waclient.webhooks.urls import pin_url, refused_address


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = generate_secret()
    body = Event("message.received", 1_764_000_000.0, {"text": "héllo"}).body()
    headers = signature_headers("in_1-0", body, [secret])
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_signature_is_the_specs_example() -> None:
    # The example of the Standard Webhooks specification (and of the reference libraries).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = signature_headers(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", body, [secret], timestamp=1614265330
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    body = b'{"a":1}'
    headers = signature_headers("ev_1", body, [old, new])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_tampered_body_does_not_verify() -> None:
    secret = generate_secret()
    headers = signature_headers("ev_1", b'{"a":1}', [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "16 to 64 bytes"),
    ],
)
def test_bad_secrets_are_refused(secret: str, fragment: str) -> None:
    with pytest.raises(SecretError, match=fragment):
        parse_secret(secret)


def test_generated_secret_has_32_bytes() -> None:
    assert len(parse_secret(generate_secret())) == 32


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/x", "only http"),
        ("file:///etc/passwd", "only http"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://exa mple.com/", "printable"),
        ("javascript:alert(1)", "only http"),
    ],
)
def test_bad_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(WebhookURLError, match=fragment):
        parse_url(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refused_address(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refused_address(address) is None


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "https://[::1]/x"]
)
async def test_loopback_urls_need_allow_private(url: str) -> None:
    with pytest.raises(WebhookURLError, match="ALLOW_PRIVATE"):
        await check_url(url)
    await check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "address", "pinned", "host", "sni"),
    [
        ("https://hooks.example/a?b=1", "93.184.215.14", "https://93.184.215.14/a?b=1",
         "hooks.example", "hooks.example"),
        ("http://hooks.example:8080/a", "2606:4700::1111", "http://[2606:4700::1111]:8080/a",
         "hooks.example:8080", None),
    ],
)  # fmt: skip
async def test_a_url_is_pinned_to_the_address_it_was_checked_at(
    url: str, address: str, pinned: str, host: str, sni: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    async def getaddrinfo(name: str, port: int, **_: object) -> list[object]:
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, 1, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    target = await pin_url(url)
    assert (target.url, target.headers) == (pinned, {"host": host})
    assert target.extensions == ({"sni_hostname": sni} if sni else {})
    assert (await pin_url(url, allow_private=True)).url == url  # no policy: as it is


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(WebhookURLError, match="does not resolve"):
        await check_url("http://no-such-host.invalid/hook")


def test_event_filter() -> None:
    assert parse_event_filter(["message.received", "session.*", "message.received"]) == (
        "message.received",
        "session.*",
    )
    for bad in ["message", "message.nope", "nope.*", "Message.received"]:
        with pytest.raises(EventFilterError):
            parse_event_filter([bad])
    assert matches("session.failed", ("session.*",))
    assert not matches("message.sent", ("message.received",))
    assert matches("message.sent", ())
    assert parse_event_filter(["message.receipt", "recorder.*"]) == (
        "message.receipt",
        "recorder.*",
    )
    assert matches("message.receipt", ("message.*",))
    assert not matches("message.receipt", ("message.received",))
    assert matches("recorder.outage_ended", ("recorder.*",))


@pytest.mark.parametrize(
    ("kind", "name"), [("delivered", "delivered"), ("played", "played"), ("read_self", "read_self")]
)
def test_receipt_events_name_the_receipt_type(kind: ReceiptKind, name: str) -> None:
    group = "120363000000000001@g.us"
    member = "15550000002@s.whatsapp.net"
    ms = 1_764_358_200_123  # a timestamp in milliseconds is read as such
    event = event_from_receipt(receipt_event(["A"], kind, chat=group, sender=member, timestamp=ms))
    assert event.type == "message.receipt" and event.timestamp == ms / 1000
    assert event.data["type"] == name and event.data["message_ids"] == ["A"]
    assert (event.data["chat"], event.data["sender"]) == (group, member)


def test_static_endpoints_have_stable_ids() -> None:
    secret = generate_secret()
    a = static_endpoints(["https://a.example/h", "https://b.example/h"], [secret])
    b = static_endpoints([" https://b.example/h", "https://a.example/h", ""], [secret])
    assert {e.id for e in a} == {e.id for e in b}
    assert all(e.id.startswith("env-") and e.origin == "env" for e in a)
    assert "secret" not in json.dumps(a[0].public())


def test_body_is_the_standard_payload_shape() -> None:
    body = json.loads(Event("session.failed", 1_764_000_000.5, {"reason": "x"}).body())
    assert body == {
        "type": "session.failed",
        "timestamp": "2025-11-24T16:00:00.500000Z",
        "data": {"reason": "x"},
    }
