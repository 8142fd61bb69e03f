"""The inbox between the Go side's threads and the loop: order, bounds, wake-ups, join."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from waiting import until_waiting

from waclient.inbox import Inbox
from waclient.overflow import DiskQueue


def never() -> bool:
    return False


async def put_from_thread(inbox: Inbox[int], items: list[tuple[int, int]]) -> list[bool]:
    """Put ``(item, size)`` pairs in order from another thread; what each put returned."""
    return await asyncio.to_thread(lambda: [inbox.put(item, size, never) for item, size in items])


async def test_items_arrive_in_order_and_join_waits_for_them() -> None:
    inbox: Inbox[int] = Inbox(asyncio.get_running_loop(), 1000, 2**20)
    assert await put_from_thread(inbox, [(i, 10) for i in range(100)]) == [True] * 100
    joined = asyncio.create_task(inbox.join())
    got = []
    for _ in range(100):
        got.append(await inbox.get())
        await asyncio.sleep(0)
        assert not joined.done()  # taken is not done
        inbox.task_done()
    assert got == list(range(100))
    await asyncio.wait_for(joined, 10)
    assert inbox.statistics().events == inbox.statistics().bytes == 0
    await asyncio.wait_for(inbox.join(), 10)  # nothing unfinished: returns at once


async def test_a_burst_while_the_loop_is_busy_costs_one_wake_up(monkeypatch: Any) -> None:
    loop = asyncio.get_running_loop()
    wakes = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        if getattr(callback, "__name__", "") == "set":  # the executor's own callbacks aside
            wakes.append(callback)
        return real(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    inbox: Inbox[int] = Inbox(loop, 1000, 2**20)
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # the loop waits in get(): the first put wakes it
    await put_from_thread(inbox, [(i, 1) for i in range(50)])
    assert await asyncio.wait_for(getter, 10) == 0
    assert [await inbox.get() for _ in range(49)] == list(range(1, 50))
    assert len(wakes) == 1


async def test_a_full_inbox_makes_the_go_thread_wait_until_an_item_is_taken() -> None:
    inbox: Inbox[int] = Inbox(asyncio.get_running_loop(), 4, 2**20)
    assert await put_from_thread(inbox, [(i, 1) for i in range(4)]) == [True] * 4
    fifth = asyncio.create_task(put_from_thread(inbox, [(4, 1)]))
    await until_waiting(inbox.statistics)
    stats = inbox.statistics()
    assert not fifth.done() and stats.events == 4  # never more than the bound
    assert stats.producer_waits == 1
    assert await inbox.get() == 0
    assert await asyncio.wait_for(fifth, 10) == [True]
    assert [await inbox.get() for _ in range(4)] == [1, 2, 3, 4]


async def test_bytes_are_bounded_and_an_oversized_item_goes_in_alone() -> None:
    inbox: Inbox[int] = Inbox(asyncio.get_running_loop(), 100, 1000)
    assert await put_from_thread(inbox, [(0, 600)]) == [True]
    second = asyncio.create_task(put_from_thread(inbox, [(1, 600)]))
    await until_waiting(inbox.statistics)
    assert not second.done() and inbox.statistics().bytes == 600
    assert await inbox.get() == 0
    assert await asyncio.wait_for(second, 10) == [True]
    assert await inbox.get() == 1
    assert await put_from_thread(inbox, [(2, 5000)]) == [True]  # larger than the bound, alone
    assert inbox.statistics().bytes == 5000


async def test_abandon_stops_the_wait_and_queues_nothing() -> None:
    inbox: Inbox[int] = Inbox(asyncio.get_running_loop(), 1, 2**20)
    stop = threading.Event()
    assert await put_from_thread(inbox, [(0, 1)]) == [True]
    waiting = asyncio.create_task(asyncio.to_thread(inbox.put, 1, 1, stop.is_set))
    await until_waiting(inbox.statistics)
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is False
    stats = inbox.statistics()
    assert stats.events == 1 and stats.producers_waiting == 0 and await inbox.get() == 0


def test_bounds_must_leave_room() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="at least one event"):
            Inbox(loop, 0, 10)
        with pytest.raises(ValueError, match="at least one event"):
            Inbox(loop, 10, 0)
    finally:
        loop.close()


# -- overflow to disk ------------------------------------------------------------------------


def int_codec() -> tuple[Any, Any]:
    """An item's disk form (its decimal digits) and the way back (item, size)."""
    return (lambda item: lambda: str(item).encode()), (lambda data: (int(data), len(data)))


def overflowing(tmp_path: Any, max_events: int, disk_bytes: int) -> Inbox[int]:
    _, decode = int_codec()
    disk = DiskQueue(tmp_path / "overflow", disk_bytes, segment_bytes=64)
    return Inbox(asyncio.get_running_loop(), max_events, 2**20, overflow=disk, decode=decode)


async def put_spilling(inbox: Inbox[int], items: range) -> list[bool]:
    encode, _ = int_codec()
    return await asyncio.to_thread(
        lambda: [inbox.put(i, len(str(i)), never, encode(i)) for i in items]
    )


async def test_a_burst_overflows_to_disk_and_comes_back_in_order(tmp_path: Any) -> None:
    inbox = overflowing(tmp_path, 4, 2**20)
    assert await put_spilling(inbox, range(1000)) == [True] * 1000  # nobody waited
    stats = inbox.statistics()
    assert stats.events == 4 and stats.disk_events == 996 and stats.overflowed == 996
    assert stats.producer_waits == 0
    got = []
    for _ in range(500):
        got.append(await inbox.get())
        inbox.task_done()
    # New items go behind the ones on disk, whatever room memory has now.
    assert await put_spilling(inbox, range(1000, 1010)) == [True] * 10
    for _ in range(510):
        got.append(await inbox.get())
        inbox.task_done()
    assert got == list(range(1010))
    await asyncio.wait_for(inbox.join(), 10)
    stats = inbox.statistics()
    assert stats.events == stats.disk_events == stats.disk_bytes == 0
    assert not list((tmp_path / "overflow").glob("*.overflow")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "overflow").glob("*.overflow")
    )


async def test_a_full_disk_budget_makes_the_producer_wait_and_loses_nothing(
    tmp_path: Any,
) -> None:
    inbox = overflowing(tmp_path, 2, 60)  # room on disk for 10 records of 2 digits
    producer = asyncio.create_task(put_spilling(inbox, range(10, 100)))
    await until_waiting(inbox.statistics)
    stats = inbox.statistics()
    assert stats.events == 2 and stats.disk_bytes <= 60 and stats.producer_waits == 1
    got = []
    while len(got) < 90:
        got.append(await inbox.get())
        inbox.task_done()
    assert await asyncio.wait_for(producer, 10) == [True] * 90
    assert got == list(range(10, 100))
    assert inbox.statistics().producers_waiting == 0
