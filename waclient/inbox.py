"""``InboxBudget``: how many events, and how many bytes of them, may wait for the event loop.

Events cross from the Go side's thread to the loop. A Go thread that finds the budget spent
waits (backpressure): neither a flood of small events nor a history sync of large ones can grow
memory past the budget. One event larger than the whole byte budget is let in alone, when
nothing else waits, so it cannot block forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["InboxBudget", "InboxStats"]


@dataclass(frozen=True, slots=True)
class InboxStats:
    events: int
    bytes: int
    max_events: int
    max_bytes: int


class InboxBudget:
    """Slots and bytes for events waiting between the Go thread and the loop."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("an inbox needs room for at least one event and one byte")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events = 0
        self._bytes = 0
        self._cond = threading.Condition()

    def acquire(self, size: int, abandon: Callable[[], bool]) -> bool:
        """Wait for room for one event of ``size`` bytes; False when ``abandon()`` says so."""
        with self._cond:
            while self._events >= self.max_events or (
                self._bytes and self._bytes + size > self.max_bytes
            ):
                if abandon():
                    return False
                self._cond.wait(0.25)
            self._events += 1
            self._bytes += size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self._events -= 1
            self._bytes -= size
            self._cond.notify()

    def statistics(self) -> InboxStats:
        return InboxStats(self._events, self._bytes, self.max_events, self.max_bytes)
