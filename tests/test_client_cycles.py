"""10,000 connect -> 20 events -> disconnect cycles: exact counts, nothing outlives a cycle."""

from __future__ import annotations

import gc
import weakref

from waclient import Backoff, Client, ClientState
from waclient.events import ConnectedEv, DisconnectedEv, Event, MessageEv, ReceiptEv
from waclient.transports.simulated import SimulatedTransport, message_event

CYCLES = 10_000
EVENTS_PER_CYCLE = 20


class Recorder:
    """A connection-scoped handler object, so that its lifetime can be watched."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ev: Event) -> None:
        self.calls += 1


async def test_ten_thousand_reconnect_cycles_keep_counts_exact() -> None:
    sim = SimulatedTransport(auto_connect=False)
    handler_refs: list[weakref.ref[Recorder]] = []
    scope_refs: list[weakref.ref[object]] = []
    counts_seen_during: set[int] = set()
    counts_seen_between: set[int] = set()
    delivered = 0

    async with Client(sim, backoff=Backoff(0, 0, jitter=0), strict_listeners=True) as client:

        def on_connected(ev: Event) -> None:
            scope = client.connection
            scope_refs.append(weakref.ref(scope))
            for kind in (MessageEv, MessageEv, MessageEv, ReceiptEv, DisconnectedEv):
                handler = Recorder()
                handler_refs.append(weakref.ref(handler))
                scope.on(kind, handler)

        def on_message(ev: Event) -> None:
            nonlocal delivered
            delivered += 1
            counts_seen_during.add(client.listener_count())

        client.on(ConnectedEv, on_connected)
        client.on(MessageEv, on_message)

        for cycle in range(1, CYCLES + 1):
            await sim.wait_session(cycle)
            counts_seen_between.add(client.listener_count())
            await sim.connect()
            await sim.emit(*(message_event(text=f"{cycle}/{i}") for i in range(EVENTS_PER_CYCLE)))
            await client.idle()
            assert client.state is ClientState.CONNECTED
            counts_seen_during.add(client.listener_count())
            await sim.disconnect()
        await sim.wait_session(CYCLES + 1)
        counts_seen_between.add(client.listener_count())

        assert counts_seen_during == {7}
        assert counts_seen_between == {2}
        assert delivered == CYCLES * EVENTS_PER_CYCLE
        assert client.statistics().handler_errors == 0 and client.stale_events == 0
        assert sim.max_live_sessions == 1

        gc.collect()
        assert len(handler_refs) == 5 * CYCLES and len(scope_refs) == CYCLES
        alive_handlers = sum(1 for ref in handler_refs if ref() is not None)
        alive_scopes = sum(1 for ref in scope_refs if ref() is not None)
        assert alive_handlers == 0, f"{alive_handlers} handlers of earlier cycles are alive"
        assert alive_scopes == 0, f"{alive_scopes} connection scopes of earlier cycles are alive"
