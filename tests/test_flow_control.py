"""Flow control: a bot that talks back never stalls, whatever the events do.

A burst larger than the inbox overflows to disk and comes back in order; a reply never waits
behind events (in process and through the worker); the Go side waits only when the disk budget
is full too, and then nothing is lost; ``close()`` works from a handler, from two tasks at once
and when cancelled, and leaves no worker, no handler and no task of the client.

The bursts run in a process of their own (tests/burst_bot.py) so their peak RSS is the bot's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest
from waiting import eventually

from waclient import Backoff, Client, ClientState
from waclient.events import Event, MessageEv
from waclient.lifetime import LifetimeError
from waclient.transports.isolated import IsolatedTransport
from waclient.transports.simulated import SimulatedTransport, message_event

NO_WAIT = Backoff(0, 0, jitter=0)
BOT = Path(__file__).with_name("burst_bot.py")
BURST = 50_000
PEAK_GROWTH = 20 * 2**20
"""The bot's peak RSS growth over a burst of 50,000 messages (issue 17)."""

TRANSPORTS = ["inprocess", "isolated"]


def run_bot(kind: str, directory: Path, *budget: int) -> dict[str, Any]:
    """The burst bot's report (its own process; a hang fails at the suite's timeout)."""
    args = [sys.executable, str(BOT), kind, str(BURST), str(directory), *map(str, budget)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_burst_of_50000_with_a_reply_each_is_answered_in_order(kind: str, tmp_path: Path) -> None:
    report = run_bot(kind, tmp_path)
    assert report["answered"] == BURST and report["in_order"], report
    assert report["failed"] == 0, report["first_failure"]
    assert report["overflowed"] > BURST // 2  # a real burst: most of it waited on disk
    assert report["producer_waits"] == 0  # the Go side never waited
    assert 0 < report["peak_disk_bytes"] <= report["max_disk_bytes"]
    assert report["disk_after"] == 0
    assert report["peak_rss_growth"] < PEAK_GROWTH, report


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_with_the_disk_budget_full_the_producer_waits_and_nothing_is_lost(
    kind: str, tmp_path: Path
) -> None:
    budget = 256 * 2**10
    report = run_bot(kind, tmp_path, budget)
    assert report["answered"] == BURST and report["in_order"], report
    assert report["failed"] == 0, report["first_failure"]
    assert report["producer_waits"] > 0  # the budget was full: the Go side waited
    assert report["peak_disk_bytes"] <= budget
    assert report["disk_after"] == 0


# -- close() from anywhere -------------------------------------------------------------------


def make_transport(kind: str, tmp_path: Path) -> Any:
    if kind == "isolated":
        return IsolatedTransport(tmp_path / "s.db", worker="simulated")
    return SimulatedTransport()


def assert_all_gone(client: Client, pid: int | None) -> None:
    stats = client.statistics()
    assert client.state is ClientState.STOPPED
    assert stats.listeners == 0 and stats.tasks == 0
    assert pid is None or not psutil.pid_exists(pid), "the worker process is still there"


async def connected(client: Client, transport: Any) -> int | None:
    await client.start()
    await client.wait_for(ClientState.CONNECTED, timeout=60)
    return transport.worker_pid if isinstance(transport, IsolatedTransport) else None


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_close_from_a_handler_returns_and_the_teardown_completes(
    kind: str, tmp_path: Path
) -> None:
    transport = make_transport(kind, tmp_path)
    client = Client(transport, backoff=NO_WAIT)
    returned = asyncio.Event()

    async def stop_command(ev: Event) -> None:
        await client.close()  # returns at once: the teardown waits for this handler
        assert client.closing
        returned.set()

    client.on(MessageEv, stop_command)
    pid = await connected(client, transport)
    await transport.emit(message_event(text="stop"))
    await asyncio.wait_for(returned.wait(), 60)
    await client.wait_closed()
    assert_all_gone(client, pid)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_two_concurrent_closes_both_wait_for_one_teardown(kind: str, tmp_path: Path) -> None:
    transport = make_transport(kind, tmp_path)
    client = Client(transport, backoff=NO_WAIT)
    client.on(MessageEv, lambda ev: None)
    pid = await connected(client, transport)
    await asyncio.gather(client.close(), client.close())
    assert_all_gone(client, pid)
    await client.close()  # idempotent
    assert_all_gone(client, pid)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_cancelled_close_still_finishes_the_teardown(kind: str, tmp_path: Path) -> None:
    transport = make_transport(kind, tmp_path)
    client = Client(transport, backoff=NO_WAIT)
    busy = asyncio.Event()

    async def slow(ev: Event) -> None:
        busy.set()
        await asyncio.sleep(0.5)  # the close waits for it: 0.01 s cannot be enough

    client.on(MessageEv, slow)
    pid = await connected(client, transport)
    await transport.emit(message_event(text="slow"))
    await asyncio.wait_for(busy.wait(), 60)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.close(), 0.01)
    assert_all_gone(client, pid)


async def test_a_closed_client_refuses_to_reopen() -> None:
    client = Client(SimulatedTransport(), backoff=NO_WAIT)
    async with client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        with pytest.raises(LifetimeError, match="already started"):
            await client.start()
    with pytest.raises(LifetimeError, match="closed and cannot be reopened: create a new one"):
        await client.start()


def test_a_client_never_closed_warns_when_collected() -> None:
    async def forget() -> None:
        # Given up (no session runs, nothing refers to it) but never closed.
        sim = SimulatedTransport(default_outcome="fail")
        client = Client(sim, backoff=NO_WAIT, max_failures=1)
        await client.start()
        await client.wait_for(ClientState.FAILED, timeout=60)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(forget())
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and "Client was never closed" in str(w.message)
        for w in caught
    ), [str(w.message) for w in caught]


async def test_a_reply_waits_behind_no_event_even_without_a_disk_budget() -> None:
    """With no disk the Go side waits for room, but a handler's call is still answered."""
    sim = SimulatedTransport()
    replies = 0
    async with Client(sim, backoff=NO_WAIT, inbox_size=8, overflow_bytes=0) as client:

        async def reply(ev: Any) -> None:
            nonlocal replies
            await client.reply(ev, "pong")
            replies += 1

        client.on(MessageEv, reply)
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await sim.emit(*[message_event(text=str(i), id=f"B{i}") for i in range(200)])
        await eventually(lambda: replies == 200, "200 replies")
        assert client.statistics().producer_waits > 0


async def test_a_handler_that_never_returns_cannot_hold_close_past_its_timeout() -> None:
    sim = SimulatedTransport()
    client = Client(sim, backoff=NO_WAIT, close_timeout=0.2)
    stuck = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(ev: Event) -> None:
        stuck.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    client.on(MessageEv, forever)
    await connected(client, sim)
    await sim.emit(*[message_event(text=str(i)) for i in range(5)])
    await asyncio.wait_for(stuck.wait(), 60)
    await client.close()
    assert cancelled.is_set()
    assert client.statistics().dropped_at_close == 4
    assert_all_gone(client, None)
