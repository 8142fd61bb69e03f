"""``Inbox``: the events waiting between the Go side's threads and the event loop.

Events cross from the Go side's threads to the loop. The inbox is bounded in events and in bytes:
a Go thread that finds it full waits (backpressure), so neither a flood of small events nor a
history sync of large ones can grow memory past the bound. One event larger than the whole byte
bound is let in alone, when nothing else waits, so it cannot block forever.

A Go thread wakes the loop only when the loop waits for an event: a burst of events queued while
the loop dispatches costs one wake-up, not one per event (each wake-up is a write to the loop's
self-pipe and a callback on the loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Inbox", "InboxStats"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InboxStats:
    events: int
    bytes: int
    max_events: int
    max_bytes: int


class Inbox(Generic[T]):
    """Items put from other threads and taken, in order, on ``loop``; bounded in count and bytes.

    :meth:`put` is called from any thread but the loop's; :meth:`get`, :meth:`task_done` and
    :meth:`join` on the loop, as with :class:`asyncio.Queue`. An item's room is freed when it is
    taken; :meth:`join` waits until every item put so far has been marked done.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("an inbox needs room for at least one event and one byte")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._loop = loop
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._unfinished = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False
        """The loop waits in :meth:`get`: the next put wakes it."""
        self._ready = asyncio.Event()
        self._done = asyncio.Event()

    def put(self, item: T, size: int, abandon: Callable[[], bool]) -> bool:
        """Wait for room for ``item`` of ``size`` bytes and queue it. False when ``abandon()``
        says to stop waiting (asked every 0.25 s; nothing is queued), or when the loop has
        closed (nobody will take the item)."""
        with self._cond:
            while self._items and (
                len(self._items) >= self.max_events or self._bytes + size > self.max_bytes
            ):
                if abandon():
                    return False
                self._cond.wait(0.25)
            self._items.append((item, size))
            self._bytes += size
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
                if self._items:
                    item, size = self._items.popleft()
                    self._bytes -= size
                    self._cond.notify()
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

    def statistics(self) -> InboxStats:
        return InboxStats(len(self._items), self._bytes, self.max_events, self.max_bytes)
