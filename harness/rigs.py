"""Rigs the built-in scenarios and the mutants share: a started Client on a simulated transport,
and the WhatsApp surface through the isolated worker."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from harness.model import Workload

if TYPE_CHECKING:
    from waclient import Client
    from waclient.transports.simulated import SimulatedTransport

__all__ = ["client_rig", "media_churn_rig", "reconnect_cycle"]


@contextlib.asynccontextmanager
async def client_rig(
    *, max_listeners: int | None = 100, name: str = "soak"
) -> AsyncIterator[tuple[Client, SimulatedTransport, int]]:
    """A started Client on a SimulatedTransport with zero backoff; yields (client, sim, n).

    ``n`` is the number of the first session, already live (Connected is on its way).
    """
    from waclient import Backoff, Client
    from waclient.transports.simulated import SimulatedTransport

    # A short call log: it fills during the warm-up, not the measured cycles.
    sim = SimulatedTransport(auto_connect=True, name=name, call_log=20)
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
    from waclient.transports.simulated import message_event

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


@contextlib.asynccontextmanager
async def media_churn_rig(
    on_download: Any = None, *, name: str = "media-churn"
) -> AsyncIterator[Workload]:
    """A Client on IsolatedTransport with the simulated worker; each cycle sends a 256 KiB
    image, reacts to it, replies to an inbound message, receives a 256 KiB inbound media
    message through the worker and downloads it, and queries a group. ``on_download(data)``
    sees each downloaded payload."""
    from waclient import Backoff, Client, ClientState
    from waclient.events import MessageEv
    from waclient.transports.isolated import IsolatedTransport
    from waclient.transports.simulated import media_message_event, message_event

    image = os.urandom(256 * 1024)
    with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
        transport = IsolatedTransport(os.path.join(tmp, "media.db"), worker="simulated")
        client = Client(transport, backoff=Backoff(0, 0, jitter=0))
        async with client:
            await client.wait_for(ClientState.CONNECTED, timeout=60)
            group = await client.create_group("soak", ["15550000001"])
            inbound: deque[Any] = deque(maxlen=1)
            client.on(MessageEv, inbound.append)

            async def cycle(i: int) -> None:
                sent = await client.send_image("15550000001", image, caption=f"c{i}")
                await client.react(sent, "👍")
                await client.reply(message_event(text=f"q{i}", id=f"Q{i}"), f"a{i}")
                await transport.emit(media_message_event("image", 256 * 1024, seed=i % 16))
                await client.idle()
                data = await client.download(inbound.pop())
                if on_download is not None:
                    on_download(data)
                await client.group_info(group.JID)

            yield Workload(cycle, [client.registry])
