"""Rigs the built-in scenarios and the mutants share: a started Client on a simulated transport."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.simulate import SimulatedTransport
    from waclient import Client

__all__ = ["client_rig", "reconnect_cycle"]


@contextlib.asynccontextmanager
async def client_rig(
    *, max_listeners: int | None = 100, name: str = "soak"
) -> AsyncIterator[tuple[Client, SimulatedTransport, int]]:
    """A started Client on a SimulatedTransport with zero backoff; yields (client, sim, n).

    ``n`` is the number of the first session, already live (Connected is on its way).
    """
    from harness.simulate import SimulatedTransport
    from waclient import Backoff, Client

    # A short sent-message log: it fills during the warm-up, not the measured cycles.
    sim = SimulatedTransport(auto_connect=True, name=name, sent_log=20)
    client = Client(
        sim,
        backoff=Backoff(0, 0, jitter=0),
        max_failures=1_000_000,
        max_listeners=max_listeners,
    )
    async with client:
        first = await sim.wait_session()
        yield client, sim, first.number


def reconnect_cycle(client: Client, sim: SimulatedTransport, first: int, messages: int = 20) -> Any:
    """A cycle: wait for the next session, ``messages`` messages, Disconnected, all dispatched."""
    from harness.simulate import message_event

    chats = [f"1555000{n:04d}@s.whatsapp.net" for n in range(8)]

    async def cycle(i: int) -> None:
        await sim.wait_session(first + i, timeout=10.0)
        await sim.emit(
            *(
                message_event(chats[(i + j) % 8], f"cycle {i} message {j}", id=f"C{i:08d}M{j:03d}")
                for j in range(messages)
            )
        )
        await sim.disconnect()
        await client.idle()

    return cycle
