"""``Inbox``: the events waiting between the Go side's threads and the event loop.

Events cross from the Go side's threads to the loop. The inbox holds them in memory up to a
bound in events and in bytes; past it, a burst overflows to a bounded on-disk queue
(:class:`~waclient.overflow.DiskQueue`) and comes back in order as the loop catches up. Only
when the disk budget is full too (or there is no disk queue) does a Go thread wait
(backpressure): counted in :attr:`InboxStats.producer_waits`, shown while it lasts in
:attr:`InboxStats.producers_waiting`, and logged once. So the Go side is never held up by a
burst, and neither a flood of small events nor a history sync of large ones can grow memory
past the bound. One event larger than the whole byte bound is let into memory alone, when
nothing else waits, so it cannot block forever.

Order is kept across memory and disk: while anything waits on disk, new events go to disk
behind it; memory is refilled from the oldest on disk first.

A Go thread wakes the loop only when the loop waits for an event: a burst of events queued while
the loop dispatches costs one wake-up, not one per event (each wake-up is a write to the loop's
self-pipe and a callback on the loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from waclient.overflow import DiskQueue

__all__ = ["Inbox", "InboxStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_REFILL = 256
"""Records moved from disk to memory at a time (at most the room there is)."""


@dataclass(frozen=True, slots=True)
class InboxStats:
    events: int
    """Events in memory now."""
    bytes: int
    max_events: int
    max_bytes: int
    disk_events: int
    """Events waiting on disk now."""
    disk_bytes: int
    """Bytes the disk queue's files take now."""
    max_disk_bytes: int
    """The disk budget (0: no disk queue)."""
    overflowed: int
    """Events ever written to disk."""
    producers_waiting: int
    """Go threads waiting now for room (memory and disk full)."""
    producer_waits: int
    """Times a Go thread had to wait for room."""


class Inbox(Generic[T]):
    """Items put from other threads and taken, in order, on ``loop``; bounded in count and bytes
    in memory, overflowing to ``overflow`` (bytes on disk, read back with ``decode``).

    :meth:`put` is called from any thread but the loop's; :meth:`get`, :meth:`task_done` and
    :meth:`join` on the loop, as with :class:`asyncio.Queue`. An item's room is freed when it is
    taken; :meth:`join` waits until every item put so far has been marked done.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_events: int,
        max_bytes: int,
        *,
        overflow: DiskQueue | None = None,
        decode: Callable[[bytes], tuple[T, int]] | None = None,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("an inbox needs room for at least one event and one byte")
        if (overflow is None) != (decode is None):
            raise ValueError("an overflow queue needs a decode function, and only then")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._overflow = overflow
        self._decode = decode
        self._loop = loop
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._unfinished = 0
        self._waiting_producers = 0
        self._producer_waits = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False
        """The loop waits in :meth:`get`: the next put wakes it."""
        self._ready = asyncio.Event()
        self._done = asyncio.Event()

    def put(
        self,
        item: T,
        size: int,
        abandon: Callable[[], bool],
        encode: Callable[[], bytes] | None = None,
    ) -> bool:
        """Queue ``item`` of ``size`` bytes: in memory if it fits, else on disk (``encode()``
        gives its disk form), else wait for room. False when ``abandon()`` says to stop waiting
        (asked every 0.25 s; nothing is queued), or when the loop has closed (nobody will take
        the item)."""
        disk = self._overflow

        def spill() -> bool:
            return disk is not None and encode is not None and disk.append(encode())

        with self._cond:
            counted = False
            while not self._fits(size):
                if spill():
                    break
                if abandon():
                    self._stop_waiting(counted)
                    return False
                if not counted:
                    counted = True
                    self._waiting_producers += 1
                    self._producer_waits += 1
                    if self._producer_waits == 1:
                        log.warning(
                            "the inbox is full (%d events in memory, %d on disk): the Go side "
                            "waits until the handlers catch up",
                            len(self._items),
                            len(disk) if disk is not None else 0,
                        )
                self._cond.wait(0.25)
            else:
                self._items.append((item, size))
                self._bytes += size
            self._stop_waiting(counted)
            self._unfinished += 1
            wake, self._waiting = self._waiting, False
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop has closed: nobody will take it
                return False
        return True

    async def get(self) -> T:
        """The next item; its room is freed for the Go threads."""
        while True:
            with self._cond:
                if not self._items:
                    self._refill()
                if self._items:
                    item, size = self._items.popleft()
                    self._bytes -= size
                    self._cond.notify_all()
                    return item
                self._waiting = True
                self._ready.clear()
            await self._ready.wait()

    def task_done(self) -> None:
        """One item taken by :meth:`get` has been handled."""
        with self._cond:
            self._unfinished -= 1
            finished = self._unfinished == 0
        if finished:
            self._done.set()

    async def join(self) -> None:
        """Wait until every item put before this call has been marked done."""
        with self._cond:
            if self._unfinished == 0:
                return
            self._done.clear()  # set again, on the loop, by the task_done that reaches zero
        await self._done.wait()

    def close(self) -> None:
        """Delete what waits on disk (the inbox is not used afterwards)."""
        if self._overflow is not None:
            self._overflow.close()

    def statistics(self) -> InboxStats:
        disk = self._overflow.statistics() if self._overflow is not None else None
        return InboxStats(
            events=len(self._items),
            bytes=self._bytes,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            disk_events=disk.records if disk is not None else 0,
            disk_bytes=disk.bytes if disk is not None else 0,
            max_disk_bytes=disk.max_bytes if disk is not None else 0,
            overflowed=disk.written if disk is not None else 0,
            producers_waiting=self._waiting_producers,
            producer_waits=self._producer_waits,
        )

    # -- helpers (under the lock) -------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        """Room in memory, and nothing older waits on disk."""
        if self._overflow is not None and len(self._overflow):
            return False
        items = self._items
        return not items or (len(items) < self.max_events and self._bytes + size <= self.max_bytes)

    def _refill(self) -> None:
        """Move the oldest records on disk into memory, up to its room."""
        disk, decode = self._overflow, self._decode
        if disk is None or decode is None or not len(disk):
            return
        for record in disk.pop(min(_REFILL, self.max_events), self.max_bytes):
            item, size = decode(record)
            self._items.append((item, size))
            self._bytes += size
        self._cond.notify_all()

    def _stop_waiting(self, counted: bool) -> None:
        if counted:
            self._waiting_producers -= 1
