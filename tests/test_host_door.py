"""The door (issue 19): the API key is checked from the headers, before the body is read and
before a request or upload slot is taken; the failed-key throttle never refuses the right key
and works on the client address the proxy wrote, never one the client wrote. Real uvicorn,
real sockets."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_host_api import KEY, PHONE, make_settings, wait_ready
from test_host_hostile import json_of, status_of
from test_host_limits import client_for

from harness.host_soak.load_process import read_to_eof
from waclient.host import create_app
from waclient.host.http_guard import guard_stats
from waclient.host.testing import RunningServer, serve

DRIPPERS = 60
"""Keyless connections dripping bodies: far more than the request cap the tests set (8)."""


def start_dripping(port: int, path: str, *, length: int, key: str | None = None) -> socket.socket:
    """A connection that sent its headers and the first byte of a ``length``-byte body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
    head += f"Content-Length: {length}\r\n" + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n"
    sock.sendall(head.encode() + b"x")
    return sock


def answer_while_dripping(sock: socket.socket) -> bytes:
    """What the server answers while the body is still 1 byte short of its end (read until
    it closes); the body is never finished."""
    with sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"y")  # still dripping
        return read_to_eof(sock)


@pytest.fixture
def capped(tmp_path: Path, redis_url: str) -> Iterator[RunningServer]:
    """A host whose request cap (8) is far below the keyless connections thrown at it."""
    settings = make_settings(
        tmp_path,
        redis_url,
        max_requests=8,
        max_connections_per_client=4 * DRIPPERS,
        body_timeout=120,
        header_timeout=120,
    )
    with serve(create_app(settings)) as srv:
        yield srv


def test_keyless_slow_bodies_are_401_at_once_and_hold_no_request_slot(
    capped: RunningServer,
) -> None:
    with client_for(capped.url) as api:
        wait_ready(api)
        drippers = [
            start_dripping(capped.port, "/messages/text", length=1000) for _ in range(DRIPPERS)
        ]
        # while every one of them is still sending its body: the open and keyed routes answer
        assert api.get("/health").status_code == 200
        assert api.get("/health/ready").status_code == 200
        sent = api.post("/messages/text", json={"to": PHONE, "text": "through the door"})
        assert sent.status_code == 200, sent.text
        answers = [answer_while_dripping(s) for s in drippers]
    assert {status_of(a) for a in answers} == {401}
    assert json_of(answers[0]) == {"error": "unauthorized", "message": "missing X-API-Key header"}
    stats = guard_stats(capped.server.config)
    assert stats is not None and stats.busy == 0 and stats.body_timeouts == 0


def test_wrong_key_slow_uploads_do_not_take_the_upload_slots(capped: RunningServer) -> None:
    with client_for(capped.url) as api:
        wait_ready(api)
        uploads = [
            start_dripping(capped.port, f"/messages/media?to={PHONE}", length=8 * 2**20, key=k)
            for k in (None, "wrong-key-0123456789abcdef")
        ]
        image = b"\xff\xd8\xff\xe0" + b"\x00" * 4096
        for _ in range(3):  # both upload slots are free: keyed uploads are served
            r = api.post(
                "/messages/media",
                params={"to": PHONE},
                content=image,
                headers={"Content-Type": "image/jpeg"},
            )
            assert r.status_code == 200, r.text
        answers = [answer_while_dripping(s) for s in uploads]
    assert [status_of(a) for a in answers] == [401, 401]
    assert json_of(answers[1])["message"] == "wrong API key"


def test_a_keyless_request_to_an_unknown_path_is_401_and_open_routes_stay_open(
    capped: RunningServer,
) -> None:
    assert httpx.get(f"{capped.url}/no/such/path").status_code == 401
    assert httpx.get(f"{capped.url}/no/such/path", headers={"X-API-Key": KEY}).status_code == 404
    for path in ("/health", "/health/ready", "/openapi.json"):
        assert httpx.get(f"{capped.url}{path}").status_code == 200, path


# -- the throttle ------------------------------------------------------------------------------

WRONG = {"X-API-Key": "wrong-key-0123456789abcdef"}
RIGHT = {"X-API-Key": KEY}


@pytest.fixture
def throttled(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path, None, auth_failures=3, auth_failure_window=3600)
    with serve(create_app(settings)) as srv:
        yield srv


def test_the_right_key_is_served_after_any_number_of_wrong_keys(
    throttled: RunningServer,
) -> None:
    with httpx.Client(base_url=throttled.url) as c:
        codes = [c.get("/session", headers=WRONG).status_code for _ in range(12)]
        assert codes == [401] * 3 + [429] * 9
        assert c.get("/session", headers=RIGHT).status_code == 200
        assert c.get("/session", headers=WRONG).status_code == 429  # the throttle still holds
        assert c.get("/session").status_code == 429


def codes_with(srv: RunningServer, headers: list[dict[str, str]]) -> list[int]:
    with httpx.Client(base_url=srv.url) as c:
        return [c.get("/session", headers={**WRONG, **h}).status_code for h in headers]


def test_rotating_the_forwarded_for_entries_a_client_writes_does_not_escape_the_throttle(
    throttled: RunningServer,
) -> None:
    """Behind a trusted proxy (loopback, the default) that appends the address it saw: the
    client's own entries, to its left, change every time; the throttle sees the proxy's."""
    rotating = [{"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7"} for i in range(10)]
    assert codes_with(throttled, rotating) == [401] * 3 + [429] * 7
    # another client behind the same proxy is a different address
    assert codes_with(throttled, [{"X-Forwarded-For": "203.0.113.8"}]) == [401]


def test_fly_client_ip_is_the_client_address_behind_fly(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        None,
        auth_failures=3,
        auth_failure_window=3600,
        client_ip_header="Fly-Client-IP",
    )
    with serve(create_app(settings)) as srv:
        rotating = [
            {"X-Forwarded-For": f"198.51.100.{i}", "Fly-Client-IP": "203.0.113.7"} for i in range(6)
        ]
        assert codes_with(srv, rotating) == [401] * 3 + [429] * 3
        assert codes_with(srv, [{"Fly-Client-IP": "203.0.113.8"}]) == [401]


def test_an_untrusted_peer_is_its_own_address_whatever_it_forwards(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        None,
        auth_failures=3,
        auth_failure_window=3600,
        trusted_proxies="10.9.9.9",
        client_ip_header="Fly-Client-IP",
    )
    with serve(create_app(settings)) as srv:
        rotating = [
            {"X-Forwarded-For": f"198.51.100.{i}", "Fly-Client-IP": f"192.0.2.{i}"}
            for i in range(6)
        ]
        assert codes_with(srv, rotating) == [401] * 3 + [429] * 3


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    from waclient.host.config import ConfigError

    with pytest.raises(ConfigError, match="WACLIENT_TRUSTED_PROXIES"):
        make_settings(tmp_path, None, trusted_proxies="127.0.0.1,fly-proxy")
