"""The WhatsApp surface: every typed method and ``call`` by name, through the in-process
simulated transport and through the isolated worker, with real neonize protobuf answers."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from neonize.client import NewClient
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from waiting import until_waiting

from waclient import (
    Backoff,
    CallError,
    Client,
    ClientState,
    IsolatedTransport,
    NotConnectedError,
    PayloadTooLarge,
    SentMessage,
    TransportError,
)
from waclient.events import SUPPORTED_EVENTS, TERMINAL_EVENTS, ConnectedEv, MessageEv
from waclient.transports import calls
from waclient.transports.simulated import (
    SimulatedTransport,
    media_message_event,
    message_event,
    simulated_media,
)

NO_WAIT = Backoff(0, 0, jitter=0)
CHAT = "15550000001@s.whatsapp.net"
KIB = 1024


def _simulated(_tmp: Path) -> Any:
    return SimulatedTransport()


def _isolated(tmp: Path) -> Any:
    return IsolatedTransport(tmp / "s.db", worker="simulated")


TRANSPORTS: dict[str, Callable[[Path], Any]] = {"simulated": _simulated, "isolated": _isolated}


@pytest.fixture(params=sorted(TRANSPORTS))
async def connected(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    transport = TRANSPORTS[request.param](tmp_path)
    async with Client(transport, backoff=NO_WAIT, strict_listeners=True) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        yield client
    assert client.listener_count() == 0


async def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (the thing awaited lives in another process)."""
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.005)


async def _emit(client: Client, *events: Any) -> None:
    await client.transport.emit(*events)
    await client.idle()


# -- sending -----------------------------------------------------------------------------------


async def test_every_send_is_a_sent_message_event(connected: Client, tmp_path: Path) -> None:
    sent: list[SentMessage] = []
    connected.on(SentMessage, sent.append)
    image = os.urandom(256 * KIB)
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4 simulated")

    text = await connected.send_text("+1 555 000 0001", "hi")
    photo = await connected.send_image(CHAT, image, caption="look")
    video = await connected.send_video(CHAT, b"\x00" * 1000, caption="clip", gif=True)
    audio = await connected.send_audio(CHAT, b"OggS" * 10, voice_note=True)
    document = await connected.send_document(CHAT, path, caption="the report")
    sticker = await connected.send_sticker(CHAT, b"RIFF....WEBP")

    assert [s.kind for s in sent] == ["text", "image", "video", "audio", "document", "sticker"]
    assert sent == [text, photo, video, audio, document, sticker]
    assert text.chat == CHAT and text.text == "hi" and text.method == "send_message"
    assert photo.text == "look" and document.text == "the report"
    assert len({s.id for s in sent}) == len(sent)


async def test_reply_react_edit_revoke_and_read(connected: Client) -> None:
    sent: list[SentMessage] = []
    connected.on(SentMessage, sent.append)
    inbound = message_event(chat=CHAT, text="question?", id="IN1")

    reply = await connected.reply(inbound, "answer")
    reaction = await connected.react(inbound, "👍")
    removed = await connected.react(inbound, "")
    edited = await connected.edit(reply, "better answer")
    revoked = await connected.revoke(reply)
    await connected.mark_read(inbound)
    await connected.send_chat_presence(CHAT, "typing")
    await connected.send_chat_presence(CHAT, "recording")
    await connected.send_presence(available=False)

    assert reply.chat == CHAT and reply.text == "answer" and reply.method == "reply_message"
    assert reaction.kind == "reaction" and reaction.text == "👍"
    assert removed.kind == "reaction" and removed.text == ""
    assert edited.method == "edit_message" and revoked.method == "revoke_message"
    assert (edited.kind, edited.text) == ("edit", "better answer")  # not its wrapper's "other"
    assert (revoked.kind, revoked.text) == ("revoke", "")
    assert sent == [reply, reaction, removed, edited, revoked]
    with pytest.raises(ValueError, match="chat presence"):
        await connected.send_chat_presence(CHAT, "dancing")  # type: ignore[arg-type]


async def test_download_inbound_media_to_memory_and_to_a_path(
    connected: Client, tmp_path: Path
) -> None:
    event = media_message_event("image", 256 * KIB, seed=7, caption="cat")
    data = await connected.download(event)
    assert data == simulated_media(7, 256 * KIB)
    assert hashlib.sha256(data).digest() == event.Message.imageMessage.fileSHA256
    target = await connected.download(event, tmp_path / "cat.jpg")
    assert target == tmp_path / "cat.jpg" and target.read_bytes() == data
    with pytest.raises(ValueError, match="no media"):
        await connected.download(message_event(text="plain"))


async def test_contacts_and_account(connected: Client) -> None:
    found = await connected.is_on_whatsapp("15550000001", "15550000002")
    assert [r.IsIn for r in found] == [True, True] and found[0].Query == "15550000001"
    info = await connected.user_info(CHAT)
    assert info[0].JID.User == "15550000001"
    picture = await connected.profile_picture(CHAT)
    assert picture.URL.startswith("https://")
    me = await connected.me()
    assert me.JID.User and me.Initialized


async def test_groups(connected: Client) -> None:
    group = await connected.create_group("soak", ["15550000001", "15550000002"])
    jid = f"{group.JID.User}@{group.JID.Server}"
    assert group.GroupName.Name == "soak" and len(group.Participants) == 2
    await connected.set_group_name(jid, "renamed")
    await connected.set_group_topic(jid, "the topic")
    info = await connected.group_info(jid)
    assert info.GroupName.Name == "renamed" and info.GroupTopic.Topic == "the topic"
    assert [g.GroupName.Name for g in await connected.joined_groups()] == ["renamed"]
    changed = await connected.update_participants(jid, ["15550000003"], "promote")
    assert changed[0].JID.User == "15550000003"
    assert (await connected.group_invite_link(jid)).startswith("https://chat.whatsapp.com/")
    await connected.leave_group(jid)
    assert await connected.joined_groups() == []
    with pytest.raises(ValueError, match="action"):
        await connected.update_participants(jid, [], "kick")  # type: ignore[arg-type]
    await connected.logout()


# -- call by name --------------------------------------------------------------------------------


async def test_call_by_name_with_protobuf_results(connected: Client) -> None:
    blocklist = await connected.call("get_blocklist")
    assert blocklist.DESCRIPTOR.full_name == "neonize.Blocklist"
    assert await connected.call("set_group_locked", "120363000000000001@g.us", True) is None
    jid = calls.NeonizeEnum("ChatPresence", "CHAT_PRESENCE_PAUSED")
    assert await connected.call("send_chat_presence", CHAT, jid, _media_text()) is None


def _media_text() -> calls.NeonizeEnum:
    return calls.NeonizeEnum("ChatPresenceMedia", "CHAT_PRESENCE_MEDIA_TEXT")


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("no_such_method", (), "not a public method"),
        ("_NewClient__client", (), "not a public method"),
        ("connect", (), "driven by Client"),
        ("stop", (), "driven by Client"),
        ("send_message", (CHAT, object()), "send_message: an argument of type object"),
        ("send_message", (CHAT, {"a": 1}), "send_message: an argument of type dict"),
    ],
)
async def test_bad_calls_fail_before_anything_is_sent(
    connected: Client, method: str, args: tuple[Any, ...], message: str
) -> None:
    before = await _answered(connected)
    with pytest.raises(CallError, match=message):
        await connected.call(method, *args)
    assert await _answered(connected) == before + 1  # only _answered's own probe


async def _answered(client: Client) -> int:
    """Calls the Go side has answered so far (itself included)."""
    transport = client.transport
    if isinstance(transport, SimulatedTransport):
        await client.call("generate_message_id")
        return transport.whatsapp.call_count
    ids = [await client.call("generate_message_id")]
    return int(str(ids[0])[-8:], 16)  # the simulated worker numbers its ids


async def test_calls_need_a_connection(tmp_path: Path) -> None:
    sim = SimulatedTransport(auto_connect=False)
    async with Client(sim, backoff=NO_WAIT) as client:
        with pytest.raises(NotConnectedError, match="send_message"):
            await client.send_text(CHAT, "too early")
        with pytest.raises(CallError):  # a bad call is refused before the connection is asked
            await client.call("nope")
    assert sim.whatsapp.call_count == 0


# Arguments for the methods whose simulated answer reads them; the rest take none.
WALK_ARGS: dict[str, tuple[Any, ...]] = {
    "send_message": (CHAT, "walk"),
    "send_image": (CHAT, b"img"),
    "send_video": (CHAT, b"vid"),
    "send_audio": (CHAT, b"aud"),
    "send_document": (CHAT, b"doc"),
    "send_sticker": (CHAT, b"stk"),
    "reply_message": ("walk", message_event()),
    "edit_message": (CHAT, "ID1", e2e.Message(conversation="edited")),
    "revoke_message": (CHAT, CHAT, "ID1"),
    "download_any": (media_message_event(size=16),),
    "is_on_whatsapp": ("15550000001",),
    "get_user_info": (CHAT,),
    "get_profile_picture": (CHAT,),
    "create_group": ("walk",),
    "get_group_info": ("120363000000000001@g.us",),
    "update_group_participants": ("120363000000000001@g.us", [CHAT], None),
    "leave_group": ("120363000000000001@g.us",),
    "get_group_invite_link": ("120363000000000001@g.us",),
    "set_group_name": ("120363000000000001@g.us", "walk"),
    "set_group_topic": ("120363000000000001@g.us", "", "", "walk"),
    "PairPhone": ("+15550000001", True),
}


async def test_every_public_newclient_method_is_reachable(connected: Client) -> None:
    public = {n for n, v in vars(NewClient).items() if not n.startswith("_") and callable(v)}
    assert public == calls.PUBLIC_METHODS, "neonize's NewClient changed: update calls.py"
    reachable = sorted(public - calls.LIFECYCLE_METHODS)
    for method in reachable:
        await connected.call(method, *WALK_ARGS.get(method, ()))
    print(f"\n{len(reachable)} of {len(public)} NewClient methods called through the transport;")
    print(f"the {len(calls.LIFECYCLE_METHODS)} lifecycle ones are Client.start/close/proxy.")
    assert len(reachable) + len(calls.LIFECYCLE_METHODS) == len(public) == 101


# -- events ------------------------------------------------------------------------------------


async def test_all_42_event_types_reach_their_handlers(connected: Client) -> None:
    assert len(SUPPORTED_EVENTS) == 42
    seen: dict[type[Any], int] = {}
    for kind in SUPPORTED_EVENTS:
        connected.on(kind, lambda ev, k=kind: seen.__setitem__(k, seen.get(k, 0) + 1))
    ordinary = [k for k in SUPPORTED_EVENTS if k not in TERMINAL_EVENTS and k is not ConnectedEv]
    await _emit(connected, *(kind() for kind in ordinary))
    await _emit(connected, ConnectedEv(status=True))  # Disconnected above dropped the connection
    assert seen == dict.fromkeys([*ordinary, ConnectedEv], 1)


@pytest.mark.parametrize("kind", TERMINAL_EVENTS, ids=lambda k: k.__name__)
async def test_terminal_events_reach_their_handlers_and_end_the_client(kind: type[Any]) -> None:
    # Each ends its session, so each gets a client of its own: 38 + 1 + 4 = 42 types.
    sim = SimulatedTransport()
    async with Client(sim, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        seen: list[Any] = []
        client.on(kind, seen.append)
        await _emit(client, kind())
        state = await client.wait_for(*[s for s in ClientState if s.terminal], timeout=60)
    assert len(seen) == 1 and state.terminal and state is not ClientState.FAILED


def test_registering_a_type_that_is_not_an_event_raises() -> None:
    client = Client(SimulatedTransport())

    class Custom:
        pass

    for kind in (int, Custom, object, "MessageEv"):
        with pytest.raises(TypeError, match="dispatches no events"):
            client.on(kind, print)  # type: ignore[arg-type]
    assert client.listener_count() == 0
    client.on(MessageEv, print)
    client.on(SentMessage, print)


# -- bounded in bytes ----------------------------------------------------------------------------


async def test_media_over_the_frame_limit_is_refused_and_nothing_is_sent(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated", max_frame=256 * KIB)
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        pid = transport.worker_pid
        with pytest.raises(PayloadTooLarge, match=r"send_image.*frame limit"):
            await client.send_image(CHAT, b"\x00" * (512 * KIB))
        # A reply over the limit fails that request; the worker and the session stay.
        with pytest.raises(TransportError, match=r"frame limit.*to a path"):
            await client.download(media_message_event(size=512 * KIB))
        target = await client.download(media_message_event(size=512 * KIB), tmp_path / "big")
        assert target.stat().st_size == 512 * KIB
        assert (await client.send_text(CHAT, "still fine")).text == "still fine"
        assert transport.worker_pid == pid and transport.crashes == 0


async def test_media_over_max_media_bytes_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(3 * 2**20)  # sparse: nothing is read to find out it is too big
    async with Client(SimulatedTransport(), backoff=NO_WAIT, max_media_bytes=2**20) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        for send in (client.send_image, client.send_video, client.send_document):
            with pytest.raises(PayloadTooLarge, match="max_media_bytes"):
                await send(CHAT, big)
        with pytest.raises(PayloadTooLarge, match="pass a path"):
            await client.download(media_message_event(size=2 * 2**20))
        with pytest.raises(FileNotFoundError):
            await client.send_image(CHAT, tmp_path / "missing.jpg")
        assert isinstance(client.transport, SimulatedTransport)
        assert client.transport.whatsapp.count("send_image") == 0


async def test_requests_in_flight_are_capped(tmp_path: Path) -> None:
    transport = IsolatedTransport(
        tmp_path / "s.db", worker="simulated", max_in_flight=2, heartbeat_interval=60
    )
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        pid = transport.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            sends = [asyncio.ensure_future(client.send_text(CHAT, f"m{i}")) for i in range(6)]
            await _until(lambda: transport.in_flight == 2)
            for _ in range(20):  # the other four wait for a slot: nothing more is sent
                await asyncio.sleep(0)
            assert transport.in_flight == 2 and not any(s.done() for s in sends)
        finally:
            os.kill(pid, signal.SIGCONT)
        done = await asyncio.gather(*sends)
        assert [s.text for s in done] == [f"m{i}" for i in range(6)]


async def test_a_worker_that_dies_mid_request_fails_it_and_the_next_call_uses_a_new_one(
    tmp_path: Path,
) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated", heartbeat_interval=60)
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        first, generation = transport.worker_pid, client.generation
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        send = asyncio.ensure_future(client.send_image(CHAT, b"\x01" * KIB))
        await _until(lambda: transport.in_flight == 1)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(TransportError, match="died"):
            await send
        # The request fails at once; the session ends once its last events are delivered.
        await _until(lambda: client.generation > generation and client.connected)
        again = await client.send_image(CHAT, b"\x01" * KIB)
        assert again.kind == "image" and transport.worker_pid not in (None, first)


@pytest.mark.parametrize("disk", [True, False])
async def test_the_inbox_is_bounded_in_bytes(disk: bool) -> None:
    sim = SimulatedTransport()
    budget = 64 * KIB
    overflow = 2**20 if disk else 0
    bounds: dict[str, Any] = {"inbox_bytes": budget, "inbox_size": 10_000}
    async with Client(sim, backoff=NO_WAIT, overflow_bytes=overflow, **bounds) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        release = asyncio.Event()

        async def slow(_ev: Any) -> None:
            await release.wait()

        client.on(MessageEv, slow)
        big = [message_event(text="x" * (20 * KIB), id=f"B{i}") for i in range(20)]
        flood = asyncio.ensure_future(sim.emit(*big))
        if disk:  # the burst is taken in whole: what memory cannot hold waits on disk
            await flood
            stats = client.statistics()
            assert stats.inbox_bytes <= budget and stats.inbox_disk >= 16
        else:  # the Go thread waits: backpressure, not memory
            await until_waiting(client.statistics)
            assert client.statistics().inbox_bytes <= budget and not flood.done()
        release.set()
        await flood
        await client.idle()
        assert client.statistics().inbox_bytes == client.statistics().inbox_disk == 0


SEND_200_MIB = """
import asyncio, os, resource, sys
from waclient import Backoff, Client, ClientState, IsolatedTransport, PayloadTooLarge

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

async def main(tmp):
    big = os.path.join(tmp, "big.mp4")
    with open(big, "wb") as f:
        f.truncate(200 * 2**20)
    data = b"\\x01" * (200 * 2**20)
    refused = []
    transport = IsolatedTransport(os.path.join(tmp, "s.db"), worker="simulated")
    async with Client(transport, backoff=Backoff(0, 0, jitter=0)) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await client.send_image("15550000001", b"\\x01" * 2**20)
        before = peak()
        for media in (big, data):  # the client's limit: the path is never read
            try:
                await client.send_video("15550000001", media)
            except PayloadTooLarge as exc:
                refused.append(str(exc))
        client.max_media_bytes = 2**30  # past the client: the worker's frame limit
        try:
            await client.send_video("15550000001", data)
        except PayloadTooLarge as exc:
            refused.append(str(exc))
        assert (await client.send_text("15550000001", "still fine")).text == "still fine"
    print(len(refused), peak() - before)
    for r in refused:
        print(r)

asyncio.run(main(sys.argv[1]))
"""


def test_200_mib_of_media_is_refused_without_buffering(tmp_path: Path) -> None:
    """Through a worker with the default 64 MiB limits: a clear error, and the parent's peak
    RSS grows by less than 80 MiB (measured in a process of its own)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SEND_200_MIB, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    first, *reasons = done.stdout.strip().splitlines()
    count, growth = (int(x) for x in first.split())
    print(f"\n200 MiB refused {count} times; parent peak RSS growth {growth / 2**20:.1f} MiB")
    assert count == 3 and growth < 80 * 2**20
    assert "max_media_bytes" in reasons[0] and "max_media_bytes" in reasons[1]
    assert "frame limit (64.0 MiB); nothing was sent" in reasons[2]
