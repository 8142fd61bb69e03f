"""The ordinary bot under a burst, in a process of its own: ``python tests/burst_bot.py
TRANSPORT MESSAGES DIR [OVERFLOW_BYTES]`` prints one JSON line of what happened.

A handler replies to every message (the bot that talks back). The whole burst is emitted at
once (chunk after chunk, faster than the handler replies); the bot waits until every message has
been answered. The peak RSS growth is the process's high-water mark during the burst (reset through
``/proc/self/clear_refs`` just before it) less its resident memory at that moment.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from waclient import Client, ClientState, IsolatedTransport, SimulatedTransport
from waclient.events import MessageEv
from waclient.transports.simulated import message_event

CHUNK = 1_000
"""Messages the simulated server makes at a time: the burst is emitted chunk after chunk, without
waiting for a reply, so the measure is the client's and not the simulator's (50,000 protobuf
messages held at once would be 140 MiB of the simulator's own)."""
WARM_UP = 2_000
"""Messages answered before measuring: the first burst sizes the allocator's arenas."""


async def main(transport_kind: str, messages: int, directory: Path, overflow: int) -> None:
    database = directory / "bot.db"
    transport: Any = (
        IsolatedTransport(database, worker="simulated")
        if transport_kind == "isolated"
        else SimulatedTransport(name=str(directory / "sim"))
    )
    answered: list[str] = []
    failed: list[str] = []
    peak_disk = 0
    all_in = asyncio.Event()
    expected = 0

    async with Client(transport, overflow_bytes=overflow) as client:

        async def reply(ev: Any) -> None:
            nonlocal peak_disk
            try:
                await client.reply(ev, "pong")
            except Exception as exc:
                failed.append(f"{type(exc).__name__}: {exc}")
            answered.append(ev.Info.ID)
            if len(answered) % 64 == 0:
                peak_disk = max(peak_disk, client.statistics().inbox_disk_bytes)
            if len(answered) == expected:
                all_in.set()

        client.on(MessageEv, reply)
        await client.wait_for(ClientState.CONNECTED, timeout=60)

        async def burst(count: int, prefix: str) -> None:
            nonlocal expected
            answered.clear()
            all_in.clear()
            expected = count
            for start in range(0, count, CHUNK):
                chunk = range(start, min(start + CHUNK, count))
                await transport.emit(
                    *[message_event(text=str(i), id=f"{prefix}{i}") for i in chunk]
                )
            await all_in.wait()

        await burst(WARM_UP, "W")
        baseline = reset_peak()
        await burst(messages, "M")
        growth = peak() - baseline
        stats = client.statistics()
        order_kept = answered == [f"M{i}" for i in range(messages)]
        worker = transport.worker_pid if transport_kind == "isolated" else None
    print(
        json.dumps(
            {
                "answered": len(answered),
                "in_order": order_kept,
                "failed": len(failed),
                "first_failure": failed[0] if failed else None,
                "peak_rss_growth": growth,
                "peak_disk_bytes": peak_disk,
                "max_disk_bytes": overflow,
                "overflowed": stats.overflowed,
                "producer_waits": stats.producer_waits,
                "disk_after": stats.inbox_disk,
                "worker_pid": worker,
            }
        )
    )


def reset_peak() -> int:
    """Reset the high-water mark of this process's RSS; its RSS now, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


if __name__ == "__main__":
    kind, count, where = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    budget = int(sys.argv[4]) if len(sys.argv) > 4 else 256 * 2**20
    asyncio.run(main(kind, count, where, budget))
