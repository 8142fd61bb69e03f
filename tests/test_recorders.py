"""waclient.recorders against a real redis-server: records, idempotence, order, spool, wiring."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from neonize.proto import Neonize_pb2 as pb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from redis.asyncio import Redis

from harness.faults import FaultProxy, RedisServer
from waclient import Backoff, Client, ClientState, SentMessage
from waclient.events import MessageEv
from waclient.recorders import (
    InboundRecorder,
    MessageRecord,
    OutboundRecorder,
    Recorder,
    RecorderClosedError,
    RecorderOutage,
    jid_to_str,
)
from waclient.redis import open_redis
from waclient.spool import Spool
from waclient.transports.simulated import SimulatedTransport, message_event

FAST: dict[str, Any] = {"retry_initial": 0.01, "retry_max": 0.1, "probe_timeout": 0.3}


def fast_redis(url: str) -> Redis:
    return open_redis(url, connect_timeout=0.3, socket_timeout=0.3, retries=1, backoff_cap=0.05)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = fast_redis(redis_url)
    yield client
    await client.aclose()


def rec(i: int, chat: str = "c") -> MessageRecord:
    return MessageRecord(f"id{i}", chat, "s@x", f"text {i}", 1_700_000_000 + i, "in")


async def entries(redis: Redis, stream: str) -> list[MessageRecord]:
    raw: Any = await redis.xrange(stream)
    return [MessageRecord.from_fields(fields) for _, fields in raw]


def extended_text_event(chat: str, text: str, msg_id: str) -> MessageEv:
    user, _, server = chat.partition("@")
    jid = pb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0)
    info = pb.MessageInfo(
        MessageSource=pb.MessageSource(Chat=jid, Sender=jid, IsFromMe=False, IsGroup=False),
        ID=msg_id,
        Type="text",
        Pushname="",
        Timestamp=1_700_000_123,
    )
    msg = e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text=text))
    return pb.Message(Info=info, Message=msg)


# -- records -------------------------------------------------------------------------------


async def test_inbound_records_carry_id_chat_sender_text_timestamp_direction(r: Redis) -> None:
    recorder = InboundRecorder(r, **FAST)
    group = message_event(
        "120363000000000001@g.us",
        "hi all",
        id="A1",
        sender="15550000009@s.whatsapp.net",
        timestamp=1_700_000_001,
    )
    await recorder.handle(group)
    await recorder.handle(extended_text_event("15550000002@s.whatsapp.net", "quoted", "A2"))
    assert await recorder.flush(10)
    got = await entries(r, "waclient:messages:in")
    assert got == [
        MessageRecord(
            "A1",
            "120363000000000001@g.us",
            "15550000009@s.whatsapp.net",
            "hi all",
            1_700_000_001,
            "in",
        ),
        MessageRecord(
            "A2",
            "15550000002@s.whatsapp.net",
            "15550000002@s.whatsapp.net",
            "quoted",
            1_700_000_123,
            "in",
        ),
    ]
    await recorder.close()


async def test_outbound_records_sent_messages(r: Redis) -> None:
    recorder = OutboundRecorder(r, sender="me@s.whatsapp.net", **FAST)
    await recorder.handle(SentMessage(id="S1", chat="1555@s.whatsapp.net", text="yo", timestamp=5))
    assert await recorder.flush(10)
    assert await entries(r, "waclient:messages:out") == [
        MessageRecord("S1", "1555@s.whatsapp.net", "me@s.whatsapp.net", "yo", 5, "out")
    ]
    await recorder.close()


def test_jid_to_str() -> None:
    assert jid_to_str(pb.JID(User="1", Server="s.whatsapp.net")) == "1@s.whatsapp.net"
    assert jid_to_str(pb.JID(User="", Server="broadcast")) == "broadcast"


def test_record_bytes_round_trip() -> None:
    original = MessageRecord("i", "c", "s", "ünïcode ✓ \n", 12, "out")
    assert MessageRecord.from_bytes(original.to_bytes()) == original
    with pytest.raises(ValueError):
        MessageRecord.from_bytes(b'["i","c","s","t",1,"sideways"]')


# -- idempotence and order -----------------------------------------------------------------


async def test_a_replay_never_duplicates(r: Redis, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    recorder = InboundRecorder(r, spool=spool, **FAST)
    for i in range(100):
        await recorder.record(rec(i))
    assert await recorder.flush(10)
    # The same messages again (a redelivery) and a replay of a spool holding them.
    for i in range(50):
        await recorder.record(rec(i))
    spool.append([(10_000 + i, rec(i).to_bytes()) for i in range(100)])
    assert await recorder.flush(10)
    stats = recorder.statistics()
    assert stats.written == 100 and stats.duplicates == 150
    assert len(await entries(r, recorder.stream)) == 100
    await recorder.close()
    spool.close()


async def test_order_per_chat_is_kept_and_stream_is_trimmed(r: Redis) -> None:
    recorder = InboundRecorder(r, maxlen=1000, batch_size=64, **FAST)
    chats = [f"chat{n}" for n in range(7)]
    for i in range(3000):
        await recorder.record(rec(i, chats[i % 7]))
    assert await recorder.flush(20)
    got = await entries(r, recorder.stream)
    assert 1000 <= len(got) < 3000  # MAXLEN ~ trims whole nodes, never below maxlen
    for chat in chats:
        seqs = [int(e.id[2:]) for e in got if e.chat == chat]
        assert seqs == sorted(seqs)
    await recorder.close()


async def test_dedupe_keys_expire(r: Redis) -> None:
    recorder = InboundRecorder(r, dedupe_ttl=1000, **FAST)
    await recorder.record(rec(1))
    assert await recorder.flush(10)
    keys = [k async for k in r.scan_iter("waclient:dedupe:*")]
    assert keys == [b"waclient:dedupe:in:c:id1"]
    assert 0 < await r.ttl(keys[0]) <= 1000
    await recorder.close()


# -- outages -------------------------------------------------------------------------------


async def test_reset_connections_lose_nothing(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    redis = fast_redis(fault_proxy.url)
    recorder = InboundRecorder(redis, spool=tmp_path / "s.db", batch_size=16, **FAST)
    for i in range(2000):
        await recorder.record(rec(i, f"c{i % 3}"))
        if i % 150 == 0:
            fault_proxy.reset()
            await asyncio.sleep(0)
    assert await recorder.flush(30)
    got = await entries(redis, recorder.stream)
    assert sorted(int(e.id[2:]) for e in got) == list(range(2000))
    for c in ("c0", "c1", "c2"):
        seqs = [int(e.id[2:]) for e in got if e.chat == c]
        assert seqs == sorted(seqs)
    await recorder.close()
    await redis.aclose()


async def test_down_then_up_spools_and_replays_in_order(
    killable_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="waclient.recorders")
    redis = fast_redis(killable_redis.url)
    recorder = InboundRecorder(redis, spool=tmp_path / "s.db", max_buffer=50, **FAST)
    for i in range(100):
        await recorder.record(rec(i))
    assert await recorder.flush(10)
    killable_redis.kill()
    for i in range(100, 600):
        await recorder.record(rec(i))
    assert not await recorder.flush(0.3)  # nothing can reach Redis now
    stats = recorder.statistics()
    assert not stats.up and stats.outages == 1 and stats.last_error
    assert stats.buffered <= recorder.memory_bound == 50 + 256 + 50
    assert stats.spooled + stats.buffered == 500 and stats.dropped == 0
    assert stats.down_since is not None
    killable_redis.restart()
    assert await recorder.flush(30)
    stats = recorder.statistics()
    assert stats.up and stats.spooled == 0 and stats.buffered == 0
    assert stats.written == 600 and stats.replayed >= 400
    got = await entries(redis, recorder.stream)
    assert [e.id for e in got] == [f"id{i}" for i in range(600)]
    assert any("Redis is down" in m for m in caplog.messages)
    assert any("Redis is back" in m for m in caplog.messages)
    await recorder.close()
    await redis.aclose()


async def test_flush_times_out_while_down_and_close_spools_the_rest(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Records taken while Redis is unreachable survive the recorder (and the process)."""
    redis = fast_redis(fault_proxy.url)
    path = tmp_path / "s.db"
    recorder = InboundRecorder(redis, spool=path, **FAST)
    fault_proxy.refuse(True)
    fault_proxy.reset()
    for i in range(300):
        await recorder.record(rec(i))
    assert not await recorder.flush(0.2)
    await recorder.close(timeout=0.2)
    await recorder.close()  # idempotent
    with pytest.raises(RecorderClosedError):
        await recorder.record(rec(999))
    with Spool(path) as left:
        assert len(left) == 300
    # A new recorder (a new process) on the same spool drains it once Redis is reachable.
    fault_proxy.refuse(False)
    again = InboundRecorder(redis, spool=path, **FAST)
    await again.start()
    assert await again.flush(20)
    assert [e.id for e in await entries(redis, again.stream)] == [f"id{i}" for i in range(300)]
    assert again.statistics().replayed == 300
    await again.close()
    await redis.aclose()


async def test_the_outage_listener_hears_when_an_outage_begins_and_ends(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    heard: list[RecorderOutage] = []
    redis = fast_redis(fault_proxy.url)
    recorder = InboundRecorder(redis, spool=tmp_path / "s.db", on_outage=heard.append, **FAST)
    await recorder.record(rec(0))
    assert await recorder.flush(10) and heard == []
    fault_proxy.refuse(True)
    fault_proxy.reset()
    before = time.time()
    for i in range(1, 21):
        await recorder.record(rec(i))
    assert not await recorder.flush(0.3)
    [began] = heard
    assert (began.stream, began.direction, began.ended, began.duration) == (
        recorder.stream,
        "in",
        None,
        None,
    )
    assert before <= began.began and began.error
    assert began.to_dict().keys() == {"stream", "direction", "began", "error"}
    fault_proxy.refuse(False)
    assert await recorder.flush(30)
    began_again, ended = heard
    assert began_again is began and ended.began == began.began
    assert ended.ended is not None and ended.duration == ended.ended - ended.began >= 0
    assert ended.spooled == recorder.statistics().spooled_total == 20 and ended.dropped == 0
    assert ended.to_dict()["spooled"] == 20 and ended.to_dict()["duration"] == ended.duration
    assert [e.id for e in await entries(redis, recorder.stream)] == [f"id{i}" for i in range(21)]
    await recorder.close()
    await redis.aclose()


async def test_a_failing_outage_listener_is_logged_and_recording_goes_on(
    fault_proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(outage: RecorderOutage) -> None:
        raise RuntimeError("listener bug")

    redis = fast_redis(fault_proxy.url)
    recorder = InboundRecorder(redis, spool=tmp_path / "s.db", on_outage=broken, **FAST)
    fault_proxy.refuse(True)
    fault_proxy.reset()
    await recorder.record(rec(0))
    assert not await recorder.flush(0.3)
    fault_proxy.refuse(False)
    assert await recorder.flush(30)
    assert [e.id for e in await entries(redis, recorder.stream)] == ["id0"]
    assert caplog.messages.count(f"recorder {recorder.stream}: the outage listener failed") == 2
    await recorder.close()
    await redis.aclose()


async def test_without_spool_memory_is_bounded_and_overflow_is_counted(
    fault_proxy: FaultProxy,
) -> None:
    redis = fast_redis(fault_proxy.url)
    recorder = InboundRecorder(redis, spool=None, max_buffer=100, **FAST)
    fault_proxy.blackhole(True)
    for i in range(1000):
        await recorder.record(rec(i))
        assert recorder.statistics().buffered <= recorder.memory_bound
    stats = recorder.statistics()
    assert stats.dropped + stats.written + stats.buffered == 1000 and stats.dropped > 0
    assert stats.buffered > 0  # without a spool, memory keeps what fits
    fault_proxy.blackhole(False)
    await recorder.record(rec(5000))
    assert await recorder.flush(20)
    stats = recorder.statistics()
    assert stats.up and stats.dropped + stats.written == 1001
    got = await entries(redis, recorder.stream)
    assert got[-1].id == "id5000" and len(got) == stats.written
    await recorder.close()
    await redis.aclose()


async def test_stats_snapshot_is_a_dict(r: Redis) -> None:
    recorder = OutboundRecorder(r, stream="custom:out", **FAST)
    d = recorder.statistics().to_dict()
    assert d["stream"] == "custom:out" and d["up"] is True
    for key in ("buffered", "spooled", "dropped", "replayed", "written", "duplicates", "outages"):
        assert d[key] == 0
    assert d["last_error"] is None
    await recorder.close()


def test_bad_settings(tmp_path: Path) -> None:
    redis = open_redis("redis://127.0.0.1:1/0")
    for kwargs in (
        {"max_buffer": 0},
        {"batch_size": 0},
        {"maxlen": 0},
        {"dedupe_ttl": 0},
        {"retry_initial": 0},
        {"retry_initial": 2, "retry_max": 1},
        {"spill_after": 0},
    ):
        with pytest.raises(ValueError):
            InboundRecorder(redis, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        Recorder(redis).to_record(object())


# -- wiring to a Client ----------------------------------------------------------------------


async def test_attached_to_a_client_records_both_directions(r: Redis) -> None:
    inbound = InboundRecorder(r, **FAST)
    outbound = OutboundRecorder(r, **FAST)
    sim = SimulatedTransport(name="rec-wiring")
    async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
        base = client.listener_count()
        sub_in = inbound.attach(client)
        sub_out = outbound.attach(client)
        assert client.listener_count(MessageEv) == 1
        assert client.listener_count(SentMessage) == 1
        await sim.wait_session()
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        for i in range(20):
            await sim.emit(message_event("1555@s.whatsapp.net", f"in {i}", id=f"IN{i}"))
            await client.send_text("1555@s.whatsapp.net", f"out {i}")
        await client.idle()
        assert await inbound.flush(10) and await outbound.flush(10)
        got_in = await entries(r, inbound.stream)
        got_out = await entries(r, outbound.stream)
        assert [e.text for e in got_in] == [f"in {i}" for i in range(20)]
        assert [e.text for e in got_out] == [f"out {i}" for i in range(20)]
        assert {e.direction for e in got_out} == {"out"}
        # The subscriptions live with the client; closing the recorders removes them.
        await inbound.close()
        await outbound.close()
        assert not sub_in.active and not sub_out.active
        assert client.listener_count() == base


async def test_close_during_a_hanging_write_keeps_the_batch(
    fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    slow = open_redis(fault_proxy.url, socket_timeout=30, retries=0)  # a write that hangs
    path = tmp_path / "s.db"
    recorder = InboundRecorder(slow, spool=path, **FAST)
    await recorder.start()
    fault_proxy.blackhole(True)
    for i in range(100):
        await recorder.record(rec(i))
    # The writer is the recorder's only Redis user: once the proxy drops bytes, it is inside a
    # write that will hang, holding its batch in flight.
    await asyncio.to_thread(fault_proxy.wait_for, lambda s: s.bytes_dropped > 0)
    assert recorder._inflight and recorder._inflight[0][1].id == "id0"
    await recorder.close(timeout=0.2)
    stats = recorder.statistics()
    assert stats.dropped == 0 and stats.written == 0
    with Spool(path) as left:
        assert [MessageRecord.from_bytes(p).id for _, p in left.peek(1000)] == [
            f"id{i}" for i in range(100)
        ]
    fault_proxy.blackhole(False)
    await slow.aclose()


async def test_a_failing_spool_counts_and_logs_once(
    fault_proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    caplog.set_level(logging.ERROR, logger="waclient.recorders")
    redis = fast_redis(fault_proxy.url)
    spool = Spool(tmp_path / "s.db")

    def disk_full(rows: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    spool.append = disk_full  # type: ignore[method-assign,assignment]
    recorder = InboundRecorder(redis, spool=spool, max_buffer=20, **FAST)
    fault_proxy.refuse(True)
    fault_proxy.reset()
    for i in range(300):
        await recorder.record(rec(i))  # never raises, never blocks for long
    assert await recorder.flush(10)  # nothing pending: every record was dropped and counted
    stats = recorder.statistics()
    assert stats.dropped == 300 and stats.buffered == 0 and stats.written == 0
    failures = [m for m in caplog.messages if "the spool failed" in m]
    assert len(failures) == 1 and "disk is full" in failures[0]
    fault_proxy.refuse(False)
    await recorder.close()
    spool.close()
    await redis.aclose()


async def test_no_busy_loop_while_down(killable_redis: RedisServer) -> None:
    """While Redis is down the writer sleeps its capped backoff before every probe, never loops."""
    redis = fast_redis(killable_redis.url)
    recorder = InboundRecorder(redis, retry_initial=0.01, retry_max=0.1, probe_timeout=0.3)
    steps: list[float | str] = []
    eighth_probe = asyncio.Event()
    check, sleep = recorder.health.check, recorder.sleep

    async def logged_sleep(delay: float) -> bool:
        steps.append(delay)
        return await sleep(delay)

    async def logged_check() -> Any:
        steps.append("probe")
        if steps.count("probe") == 8:
            eighth_probe.set()
        return await check()

    recorder.sleep = logged_sleep  # type: ignore[method-assign]
    recorder.health.check = logged_check  # type: ignore[method-assign]
    killable_redis.kill()
    await recorder.record(rec(1))
    await asyncio.wait_for(eighth_probe.wait(), 60)
    assert not recorder.statistics().up
    # 0.01, doubling, capped at 0.1: a sleep before every probe.
    expected = [0.01, "probe", 0.02, "probe", 0.04, "probe", 0.08, "probe"] + [0.1, "probe"] * 4
    assert steps[:16] == pytest.approx(expected)
    killable_redis.restart()
    assert await recorder.flush(20)
    await recorder.close()
    await redis.aclose()


async def test_wrapped_messages_are_recorded_with_their_real_text(r: Redis) -> None:
    """A view-once image's caption and an edit's new text reach the records (and so the
    webhooks made from them), not the wrappers' empty text."""
    inbound = InboundRecorder(r, **FAST)
    outbound = OutboundRecorder(r, **FAST)
    sim = SimulatedTransport(name="rec-wrapped")
    async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
        inbound.attach(client)
        outbound.attach(client)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        view_once = message_event("1555@s.whatsapp.net", "", id="V1")
        view_once.Message.Clear()
        view_once.Message.viewOnceMessageV2.message.imageMessage.caption = "see once"
        await sim.emit(view_once)
        sent = await client.send_text("1555@s.whatsapp.net", "typo")
        edited = await client.edit(sent, "fixed")
        await client.idle()
        assert await inbound.flush(10) and await outbound.flush(10)
        assert [e.text for e in await entries(r, inbound.stream)] == ["see once"]
        assert [e.text for e in await entries(r, outbound.stream)] == ["typo", "fixed"]
        assert edited.kind == "edit"
    await inbound.close()
    await outbound.close()
