"""The Client CONTRACT and its reconnect supervisor, driven by the simulated Go side."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from waiting import eventually, until_waiting

from waclient import Backoff, Client, ClientState, NotConnectedError, SentMessage
from waclient.events import ConnectedEv, DisconnectedEv, Event, MessageEv
from waclient.transports.simulated import (
    SimulatedTransport,
    client_outdated_event,
    logged_out_event,
    message_event,
    stream_replaced_event,
    temporary_ban_event,
)

NO_WAIT = Backoff(0, 0, jitter=0)


async def supervisor_ended(client: Client) -> None:
    """Wait until only the event pump is left: no further session can start."""
    await eventually(lambda: client.statistics().tasks == 1, "the supervisor ended")


# -- backoff ---------------------------------------------------------------------------------


@given(
    initial=st.floats(0.001, 10),
    factor=st.floats(1, 4),
    cap=st.floats(0, 600),
    jitter=st.floats(0, 1),
    failures=st.integers(1, 5000),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_stays_within_its_bounds(
    initial: float, factor: float, cap: float, jitter: float, failures: int, seed: int
) -> None:
    backoff = Backoff(initial, max(initial, cap), factor, jitter)
    ceiling = backoff.ceiling(failures)
    assert backoff.ceiling(1) == min(initial, backoff.maximum)
    assert backoff.ceiling(failures - 1) <= ceiling <= backoff.maximum
    if failures <= 30:
        assert ceiling == pytest.approx(min(backoff.maximum, initial * factor ** (failures - 1)))
    delay = backoff.delay(failures, random.Random(seed))
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9


def test_backoff_grows_then_caps_and_jitter_spreads() -> None:
    backoff = Backoff(initial=1, maximum=30, factor=2, jitter=0.5)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    rng = random.Random(7)
    delays = {round(backoff.delay(6, rng), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 15 and max(delays) <= 30


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1}, {"initial": 5, "maximum": 1}, {"factor": 0.5}, {"jitter": 2}]
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- lifecycle -------------------------------------------------------------------------------


async def test_connection_scope_lives_for_one_connection() -> None:
    sim = SimulatedTransport(auto_connect=False)
    async with Client(sim, backoff=NO_WAIT) as client:
        inbound: list[str] = []
        client.on(MessageEv, lambda ev: inbound.append(ev.Message.conversation))
        await sim.wait_session(1)
        with pytest.raises(NotConnectedError):
            client.connection.on(MessageEv, lambda ev: None)
        await sim.connect()
        await client.idle()
        assert client.state is ClientState.CONNECTED
        per_connection: list[str] = []
        client.connection.on(MessageEv, lambda ev: per_connection.append("c"))
        await sim.emit(message_event(text="one"))
        await sim.drop()  # whatsmeow reconnects by itself within the session
        await client.idle()
        assert client.state is ClientState.RECONNECTING
        assert client.listener_count() == 1
        await sim.connect()
        await sim.emit(message_event(text="two"))
        await client.idle()
        assert inbound == ["one", "two"] and per_connection == ["c"]
        assert sim.sessions_started == 1


async def test_connection_handlers_see_their_own_disconnect() -> None:
    sim = SimulatedTransport()
    seen: list[str] = []
    async with Client(sim, backoff=NO_WAIT) as client:

        def on_connected(ev: Event) -> None:
            client.connection.on(DisconnectedEv, lambda ev: seen.append("disconnected"))

        client.on(ConnectedEv, on_connected)
        await sim.wait_session(1)
        await client.idle()
        await sim.disconnect()
        await sim.wait_session(2)
    assert seen == ["disconnected"]


async def test_send_text_dispatches_sent_message() -> None:
    sim = SimulatedTransport()
    async with Client(sim, backoff=NO_WAIT) as client:
        sent: list[SentMessage] = []
        client.on(SentMessage, sent.append)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        result = await client.send_text("15550000002@s.whatsapp.net", "hi")
        assert sent == [result] and result.text == "hi" and sim.whatsapp.count("send_message") == 1
        await sim.disconnect()
        await client.wait_for(ClientState.CONNECTING, ClientState.CONNECTED, timeout=10)
    with pytest.raises(NotConnectedError):
        await client.send_text("15550000002@s.whatsapp.net", "too late")


async def test_close_is_idempotent_and_removes_every_handler() -> None:
    sim = SimulatedTransport()
    client = Client(sim, backoff=NO_WAIT)
    await client.start()
    client.on(MessageEv, lambda ev: None)
    await client.wait_for(ClientState.CONNECTED, timeout=10)
    client.connection.on(MessageEv, lambda ev: None)
    await client.close()
    await client.close()
    assert client.state is ClientState.STOPPED
    assert client.listener_count() == 0 and sim.live_sessions == 0


# -- the supervisor --------------------------------------------------------------------------


async def test_failed_after_n_failures_in_a_row() -> None:
    sim = SimulatedTransport(default_outcome="fail")
    async with Client(sim, backoff=NO_WAIT, max_failures=5) as client:
        assert await client.wait_for(ClientState.FAILED, timeout=10) is ClientState.FAILED
        await supervisor_ended(client)
        assert sim.sessions_started == 5 and client.failures == 5
        assert "simulated connect failure" in (client.last_error or "")
    assert client.state is ClientState.FAILED


async def test_a_connection_resets_the_failure_count() -> None:
    sim = SimulatedTransport(outcomes=["fail", "fail", "ok"], default_outcome="fail")
    async with Client(sim, backoff=NO_WAIT, max_failures=3) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        assert client.failures == 0
        await sim.disconnect()
        await client.wait_for(ClientState.FAILED, timeout=10)
    # 2 failures, 1 session that connected, then 3 failures in a row.
    assert sim.sessions_started == 6


async def test_backoff_waits_between_attempts() -> None:
    sim = SimulatedTransport(default_outcome="fail")
    backoff = Backoff(initial=0.05, maximum=0.2, factor=2, jitter=0)
    async with Client(sim, backoff=backoff, max_failures=4) as client:
        await client.wait_for(ClientState.BACKOFF, timeout=10)
        # During the first backoff there has been exactly one attempt.
        assert sim.sessions_started == 1
        await client.wait_for(ClientState.FAILED, timeout=10)
    assert sim.sessions_started == 4


@pytest.mark.parametrize(
    ("make_event", "state"),
    [
        (logged_out_event, ClientState.LOGGED_OUT),
        (stream_replaced_event, ClientState.STREAM_REPLACED),
        (temporary_ban_event, ClientState.TEMPORARY_BAN),
        (client_outdated_event, ClientState.CLIENT_OUTDATED),
    ],
)
async def test_terminal_events_stop_reconnecting(
    make_event: type[object], state: ClientState
) -> None:
    sim = SimulatedTransport()
    async with Client(sim, backoff=NO_WAIT) as client:
        client.on(MessageEv, lambda ev: None)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        client.connection.on(MessageEv, lambda ev: None)
        await sim.emit(make_event())  # type: ignore[operator]
        assert await client.wait_for(state, timeout=10) is state
        await supervisor_ended(client)
        assert sim.sessions_started == 1 and sim.live_sessions == 0
        assert client.listener_count() == 1 and not client.connected
    assert client.state is state


async def test_late_event_of_an_older_generation_is_dropped() -> None:
    sim = SimulatedTransport()
    async with Client(sim, backoff=NO_WAIT) as client:
        inbound: list[str] = []
        client.on(MessageEv, lambda ev: inbound.append(ev.Message.conversation))
        old = await sim.wait_session(1)
        await sim.disconnect()
        await sim.wait_session(2)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        await sim.emit_late(old, message_event(text="late"))
        await sim.emit(message_event(text="current"))
        await client.idle()
        assert inbound == ["current"]
        assert client.stale_events == 1 and client.generation == 2


async def test_never_more_than_one_live_session() -> None:
    sim = SimulatedTransport(outcomes=["fail", "ok", "fail", "ok"] * 50)
    async with Client(sim, backoff=NO_WAIT, max_failures=3) as client:
        for _ in range(100):
            await client.wait_for(ClientState.CONNECTED, timeout=10)
            await sim.disconnect()
    assert sim.max_live_sessions == 1 and sim.sessions_started >= 200


async def test_supervisor_takes_over_after_the_grace_period() -> None:
    sim = SimulatedTransport()
    async with Client(sim, backoff=NO_WAIT, reconnect_grace=0.05) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        await sim.drop()  # whatsmeow does not get the connection back in time
        await sim.wait_session(2, timeout=10)
        assert sim.max_live_sessions == 1


async def test_a_flood_overflows_to_disk_and_the_go_side_never_waits() -> None:
    sim = SimulatedTransport()
    gate = asyncio.Event()
    seen: list[str] = []

    async def slow(ev: Event) -> None:
        await gate.wait()
        seen.append(ev.Message.conversation)  # type: ignore[attr-defined]

    async with Client(sim, backoff=NO_WAIT, inbox_size=8) as client:
        client.on(MessageEv, slow)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        # The handler holds the pump, yet the whole flood is taken in: memory holds at most
        # inbox_size events, the rest waits on disk, and the Go side never waited.
        await sim.emit(*[message_event(text=str(i)) for i in range(100)])
        stats = client.statistics()
        assert stats.inbox <= 8 and stats.inbox_disk >= 91 and stats.producer_waits == 0
        gate.set()
        await client.idle()
        stats = client.statistics()
        assert stats.inbox == stats.inbox_disk == stats.inbox_disk_bytes == 0
    assert seen == [str(i) for i in range(100)]


async def test_without_a_disk_budget_a_flood_makes_the_go_side_wait() -> None:
    sim = SimulatedTransport()
    gate = asyncio.Event()
    seen = 0

    async def slow(ev: Event) -> None:
        nonlocal seen
        await gate.wait()
        seen += 1

    async with Client(sim, backoff=NO_WAIT, inbox_size=8, overflow_bytes=0) as client:
        client.on(MessageEv, slow)
        await client.wait_for(ClientState.CONNECTED, timeout=10)
        flood = asyncio.ensure_future(sim.emit(*[message_event(text=str(i)) for i in range(100)]))
        await until_waiting(client.statistics)
        stats = client.statistics()
        assert stats.inbox <= 8 and stats.inbox_disk == 0 and not flood.done()
        gate.set()
        await flood
        await client.idle()
        assert client.statistics().producers_waiting == 0
    assert seen == 100
