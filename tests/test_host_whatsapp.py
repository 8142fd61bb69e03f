"""The host's WhatsApp endpoints over real HTTP (uvicorn, the simulated transport, a real
Redis): media, replies, reactions, read receipts, presence, contacts, groups."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from test_host_api import JID, KEY, PHONE, make_settings, wait_ready

from harness.faults import RedisServer
from waclient.host import create_app
from waclient.host.limits import BodyLimit
from waclient.host.testing import RunningServer, serve
from waclient.transports.simulated import SimulatedTransport

MEDIA_LIMIT = 512 * 1024


@pytest.fixture(scope="module")
def running(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    if not redis_server.running:
        redis_server.restart()
    settings = make_settings(
        tmp_path_factory.mktemp("host"), redis_server.url, max_media_bytes=MEDIA_LIMIT
    )
    with serve(create_app(settings)) as srv:
        yield srv


@pytest.fixture
def sim(running: RunningServer) -> SimulatedTransport:
    transport: SimulatedTransport = running.app.state.host.transport
    transport.whatsapp.heal()
    return transport


@pytest.fixture
def api(running: RunningServer, sim: SimulatedTransport) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, headers={"X-API-Key": KEY}, timeout=30) as c:
        wait_ready(c)
        yield c


def _recorded(url: str, message_id: str) -> dict[bytes, bytes]:
    with redis_sync.Redis.from_url(url) as r:
        for _, fields in r.xrange("waclient:messages:out"):
            if fields[b"id"] == message_id.encode():
                return fields
    raise AssertionError(f"{message_id} was not recorded")


# -- media ---------------------------------------------------------------------------------------


def test_media_is_sent_as_what_its_content_type_says(
    api: httpx.Client, sim: SimulatedTransport, redis_server: RedisServer
) -> None:
    image = os.urandom(300 * 1024)
    r = api.post(
        "/messages/media",
        params={"to": PHONE, "caption": "a cat"},
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "image" and body["text"] == "a cat" and body["chat"] == JID
    _wait_for(lambda: _has_record(redis_server.url, body["id"]))
    assert _recorded(redis_server.url, body["id"])[b"text"] == b"a cat"
    kinds = {
        ("video/mp4", None): "video",
        ("audio/ogg", None): "audio",
        ("audio/ogg", "voice"): "audio",
        ("application/pdf", None): "document",
        ("image/webp", "sticker"): "sticker",
    }
    for (content_type, kind), expected in kinds.items():
        params = {"to": PHONE, "filename": "x.bin"} | ({"kind": kind} if kind else {})
        r = api.post(
            "/messages/media", params=params, content=b"\x01" * 64,
            headers={"Content-Type": content_type},
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["kind"] == expected, (content_type, r.text)
    assert sim.whatsapp.count("send_image") >= 1 and sim.whatsapp.count("send_audio") >= 2


def _has_record(url: str, message_id: str) -> bool:
    try:
        _recorded(url, message_id)
    except AssertionError:
        return False
    return True


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if condition():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {condition}")
        time.sleep(0.02)


def test_bad_media_is_a_clear_4xx(api: httpx.Client, sim: SimulatedTransport) -> None:
    before = sim.whatsapp.count("send_image")
    r = api.post(
        "/messages/media", params={"to": PHONE}, content=b"", headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 422 and "empty" in r.json()["message"]
    r = api.post(
        "/messages/media", params={"to": PHONE}, content=b"\x00" * (MEDIA_LIMIT + 1),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    r = api.post("/messages/media", params={"to": "nobody"}, content=b"x")
    assert r.status_code == 422 and "to" in r.json()["message"]
    r = api.post("/messages/media", params={"to": PHONE, "kind": "hologram"}, content=b"x")
    assert r.status_code == 422
    assert sim.whatsapp.count("send_image") == before
    anon = httpx.post(f"{str(api.base_url).rstrip('/')}/messages/media", params={"to": PHONE})
    assert anon.status_code == 401


def test_media_uploads_held_at_once_are_capped(api: httpx.Client, running: RunningServer) -> None:
    host, port = running.url.removeprefix("http://").split(":")
    limit = running.middleware(BodyLimit)
    held = []
    try:
        for _ in range(2):  # two uploads that announce 1,000 bytes and send 10
            s = socket.create_connection((host, int(port)))
            s.sendall(
                f"POST /messages/media?to={PHONE[1:]} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                "Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n".encode()
                + b"0" * 10
            )
            held.append(s)
        _wait_for(lambda: limit.holding("/messages/media") == 2)
        r = api.post("/messages/media", params={"to": PHONE}, content=b"x")
        assert r.status_code == 503 and r.json()["error"] == "busy"
    finally:
        for s in held:
            s.close()
    _wait_for(lambda: limit.holding("/messages/media") == 0)
    r = api.post("/messages/media", params={"to": PHONE}, content=b"x")
    assert r.status_code == 200


# -- replies, reactions, receipts, presence -------------------------------------------------------


def test_reply_reaction_read_and_presence(api: httpx.Client, sim: SimulatedTransport) -> None:
    message = {"chat": JID, "id": "3EB0C431C26A1916A3F5"}
    r = api.post("/messages/text", json={"to": PHONE, "text": "yes", "quoted": message})
    assert r.status_code == 200 and sim.whatsapp.count("reply_message") == 1
    r = api.post("/messages/reaction", json={"message": message, "emoji": "👍"})
    assert r.status_code == 200 and r.json()["kind"] == "reaction" and r.json()["text"] == "👍"
    r = api.post("/messages/reaction", json={"message": message, "emoji": ""})
    assert r.status_code == 200 and r.json()["text"] == ""
    assert api.post("/messages/read", json={"message": message}).status_code == 204
    assert sim.whatsapp.count("mark_read") == 1
    assert api.post("/presence", json={"state": "typing", "chat": PHONE}).status_code == 204
    assert api.post("/presence", json={"state": "unavailable"}).status_code == 204
    assert sim.whatsapp.count("send_chat_presence") == 1
    assert sim.whatsapp.count("send_presence") == 1
    bad = [
        ("/presence", {"state": "typing"}),
        ("/presence", {"state": "available", "chat": PHONE}),
        ("/presence", {"state": "dancing"}),
        ("/messages/reaction", {"message": {"chat": JID, "id": "bad id!"}, "emoji": "x"}),
        ("/messages/reaction", {"message": message, "emoji": "x" * 17}),
        ("/messages/read", {"message": {"chat": "nobody", "id": "A"}}),
        ("/messages/text", {"to": PHONE, "text": "x", "quoted": {"id": "A"}}),
    ]
    for path, body in bad:
        r = api.post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error"] == "validation_error"


# -- contacts and groups --------------------------------------------------------------------------


def test_contacts(api: httpx.Client) -> None:
    r = api.get(f"/contacts/{PHONE}")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "phone": PHONE[1:],
        "on_whatsapp": True,
        "jid": JID,
        "status": "simulated",
        "picture_id": "",
    }
    assert api.get("/contacts/not-a-phone").status_code == 422


def test_groups_create_list_read_and_change(api: httpx.Client, sim: SimulatedTransport) -> None:
    made = []
    for name in ("alpha", "beta", "gamma"):
        r = api.post("/groups", json={"name": name, "participants": [PHONE]})
        assert r.status_code == 201, r.text
        made.append(r.json())
    assert made[0]["participants"][0]["jid"] == JID
    first = api.get("/groups", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = api.get("/groups", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    names = {g["name"] for g in first["items"] + second["items"]}
    assert {"alpha", "beta", "gamma"} <= names
    jid = made[1]["jid"]
    assert api.get(f"/groups/{jid}").json()["name"] == "beta"
    r = api.post(f"/groups/{jid}/participants", json={"participants": [PHONE], "action": "promote"})
    assert r.status_code == 200 and r.json()[0]["jid"] == JID
    assert api.get("/groups/12345@s.whatsapp.net").status_code == 422
    assert api.post("/groups", json={"name": ""}).status_code == 422
    r = api.post(f"/groups/{jid}/participants", json={"participants": [], "action": "add"})
    assert r.status_code == 422
    sim.whatsapp.fail("get_group_info", "not-authorized")
    r = api.get(f"/groups/{jid}")
    assert r.status_code == 502 and r.json()["error"] == "whatsapp_failed"
    assert "not-authorized" in r.json()["message"]


def test_whatsapp_endpoints_need_the_key_and_a_connection(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(auto_connect=False)  # never connected
    with serve(create_app(make_settings(tmp_path, redis_url), transport=sim)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as anon:
            for method, path in [
                ("GET", f"/contacts/{PHONE}"),
                ("GET", "/groups"),
                ("POST", "/messages/reaction"),
                ("POST", "/presence"),
            ]:
                assert anon.request(method, path).status_code == 401, path
        with httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as api:
            r = api.get("/groups")
            assert r.status_code == 503 and r.json()["error"] == "not_connected"
            r = api.post("/messages/media", params={"to": PHONE}, content=b"x")
            assert r.status_code == 503 and r.json()["error"] == "not_connected"
