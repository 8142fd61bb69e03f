"""Rigs the built-in scenarios and the mutants share: a started Client on a simulated transport,
the WhatsApp surface through the isolated worker, and the bot that talks back to a burst."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from harness.model import Workload

if TYPE_CHECKING:
    from waclient import Client
    from waclient.transports.simulated import SimulatedTransport

__all__ = ["client_rig", "media_churn_rig", "reconnect_cycle", "talkback_rig"]


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


@contextlib.asynccontextmanager
async def talkback_rig(
    transport: Callable[[str], Any] | None = None,
    *,
    burst: int = 1000,
    inbox_size: int = 64,
    overflow_bytes: int = 256 * 2**20,
    name: str = "talkback",
) -> AsyncIterator[Workload]:
    """The ordinary bot under bursts: a handler replies to every message. Each cycle ``burst``
    messages arrive at once (more than the ``inbox_size`` events the client holds in memory:
    the rest overflow to disk, up to ``overflow_bytes``) and the cycle ends when every one has
    been answered; it fails when a reply fails or the disk queue is not empty again.

    ``transport(database)`` makes the transport; default ``IsolatedTransport`` with the
    simulated worker.
    """
    from waclient import Backoff, Client, ClientState
    from waclient.events import MessageEv
    from waclient.transports.isolated import IsolatedTransport
    from waclient.transports.simulated import message_event

    chats = [f"1555000{n:04d}@s.whatsapp.net" for n in range(8)]
    with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
        database = os.path.join(tmp, "talkback.db")
        made = transport(database) if transport else IsolatedTransport(database, worker="simulated")
        client = Client(
            made, backoff=Backoff(0, 0, jitter=0), inbox_size=inbox_size,
            overflow_bytes=overflow_bytes,
        )  # fmt: skip
        replies = {"sent": 0, "failed": 0, "peak_disk": 0}
        first_failure: list[str] = []

        async def reply(ev: Any) -> None:
            try:
                await client.reply(ev, "pong")
            except Exception as exc:
                replies["failed"] += 1
                if not first_failure:
                    first_failure.append(f"{type(exc).__name__}: {exc}")
                return
            replies["sent"] += 1

        async with client:
            client.on(MessageEv, reply)
            await client.wait_for(ClientState.CONNECTED, timeout=60)

            async def cycle(i: int) -> None:
                before = replies["sent"]
                await made.emit(
                    *(
                        message_event(chats[j % 8], f"burst {i} #{j}", id=f"T{i:07d}M{j:04d}")
                        for j in range(burst)
                    )
                )
                replies["peak_disk"] = max(replies["peak_disk"], client.statistics().inbox_disk)
                await client.idle()
                if replies["failed"]:
                    raise RuntimeError(f"{replies['failed']} replies failed: {first_failure[0]}")
                if replies["sent"] - before != burst:
                    raise RuntimeError(f"{replies['sent'] - before} of {burst} messages answered")
                left = client.statistics().inbox_disk
                if left:
                    raise RuntimeError(f"{left} events still on disk after the burst was answered")

            notes: list[str] = []
            yield Workload(cycle, [client.registry], notes=notes)
            st = client.statistics()
            notes.append(
                f"talkback: {replies['sent']} replies, {st.overflowed} events overflowed to "
                f"disk (at most {replies['peak_disk']} at once), {st.producer_waits} producer "
                f"waits"
            )
