"""``StateEvents``: events the host publishes to a Redis stream (state events, receipts), in the
order they happened, bounded, through Redis outages.

:meth:`StateEvents.emit` never waits: it puts the event, stamped with the time it happened, at
the end of a backlog in memory, and one writer task XADDs the backlog oldest first. While Redis
is down the writer retries with a capped backoff, cut short by the next event (which may be the
news that Redis is back); the events wait in the backlog meanwhile. The backlog holds at most
``max_backlog`` events (plus the one being written): past that the oldest is dropped and counted
in ``dropped``. So an outage's own events (``recorder.outage_began`` is emitted while Redis is
unreachable) reach the stream once it is back, before the ones that followed, each with its
original timestamp.

The stream is trimmed with ``MAXLEN ~ maxlen``; the webhook dispatcher delivers its entries
(:func:`waclient.webhooks.events.decode_state` reads them back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waclient.client import Backoff
from waclient.lifetime import Lifetime
from waclient.webhooks.events import state_fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["StateEvents", "StateEventsStats"]

log = logging.getLogger("waclient.host")

RETRY = Backoff(initial=0.1, maximum=5.0)
"""The wait between failed writes (the first retry waits at least ``initial``)."""


@dataclass(frozen=True, slots=True)
class StateEventsStats:
    stream: str
    published: int
    """Events added to the stream."""
    dropped: int
    """Events lost: pushed out of a full backlog (the oldest first), or left when closing."""
    backlog: int
    """Events waiting for Redis now (the one being written included)."""
    max_backlog: int
    up: bool
    """False from a failed write until a write succeeds."""
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class StateEvents(Lifetime):
    """Publishes events to the Redis stream ``stream``; see the module docstring.

    With ``redis`` None (no Redis configured) events are ignored.
    """

    def __init__(
        self,
        redis: Redis | None,
        stream: str,
        *,
        maxlen: int = 10_000,
        max_backlog: int = 100,
        retry: Backoff = RETRY,
    ) -> None:
        if maxlen < 1 or max_backlog < 1:
            raise ValueError("maxlen and max_backlog must be >= 1")
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen
        self.max_backlog = max_backlog
        self.retry = retry
        self.published = 0
        self.dropped = 0
        self._backlog: deque[dict[str, str]] = deque()
        self._writing: dict[str, str] | None = None
        self._up = True
        self._last_error: str | None = None
        self._overflow_logged = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._close_timeout = 2.0

    # -- public API ------------------------------------------------------------------------

    idempotent_start = True
    """``start()`` starts the writer once; events emitted before wait in the backlog."""

    async def _open(self) -> None:
        if self.redis is not None:
            self._task = self.spawn(self._write(), name=f"waclient-events-{self.stream}")

    def emit(self, event_type: str, data: Mapping[str, Any], when: float | None = None) -> None:
        """Queue an event that happened at ``when`` (``time.time()``; default: now)."""
        if self.redis is None:
            return
        if self.closing:
            self.dropped += 1
            return
        if len(self._backlog) >= self.max_backlog:
            self._backlog.popleft()
            self._count_dropped()
        self._backlog.append(state_fields(event_type, data, time.time() if when is None else when))
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the backlog is written; False if ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Write what Redis takes within ``timeout`` seconds (no wait while Redis is down, and
        none once a write fails); what is left is counted as dropped. Idempotent."""
        if not self.closing:
            self._close_timeout = timeout
        await super().close()

    async def _close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._up:
            # The writer ends by itself once the backlog is written or a write fails.
            self._wake.set()
            await asyncio.wait({task}, timeout=self._close_timeout)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        left = self._pending
        if left:
            self.dropped += left
            self._backlog.clear()
            self._writing = None
            log.warning("state events: %d not written to %s before closing", left, self.stream)

    def statistics(self) -> StateEventsStats:
        return StateEventsStats(
            stream=self.stream,
            published=self.published,
            dropped=self.dropped,
            backlog=self._pending,
            max_backlog=self.max_backlog,
            up=self._up,
            last_error=self._last_error,
        )

    # -- the writer ------------------------------------------------------------------------

    @property
    def _pending(self) -> int:
        return len(self._backlog) + (self._writing is not None)

    async def _write(self) -> None:
        assert self.redis is not None
        failures = 0
        while True:
            if not self._backlog:
                self._idle.set()
                if self.closing:
                    return  # all written
                self._wake.clear()
                await self._wake.wait()
                continue
            fields = self._writing = self._backlog.popleft()
            self._wake.clear()
            try:
                await self.redis.xadd(
                    self.stream,
                    fields,  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
            except Exception as exc:
                failures += 1
                self._failed(fields, f"{type(exc).__name__}: {exc}", failures)
                if not await self._pause(failures):
                    return  # closing: what is left is counted as dropped
                continue
            self._writing = None
            self.published += 1
            if not self._up:
                log.warning("state events: Redis is back; writing %d held", self._pending)
            failures = 0
            self._up = True
            self._overflow_logged = False

    def _failed(self, fields: dict[str, str], error: str, failures: int) -> None:
        """Put the event back at the head of the backlog (or drop it, the oldest, if the
        backlog filled up meanwhile)."""
        self._writing = None
        if len(self._backlog) < self.max_backlog:
            self._backlog.appendleft(fields)
        else:
            self._count_dropped()
        self._last_error = error
        if self._up:
            self._up = False
            log.warning("state events: writing to %s failed (%s); holding them", self.stream, error)
        log.debug("state events: attempt %d failed: %s", failures, error)

    async def _pause(self, failures: int) -> bool:
        """The backoff before the next attempt, cut short by a new event, but never shorter
        than the backoff's first step. False (at once) when closing."""
        if not await self.sleep(self.retry.initial):
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self.retry.delay(failures) - self.retry.initial)):
                await self._wake.wait()
        return not self.closing

    def _count_dropped(self) -> None:
        self.dropped += 1
        if not self._overflow_logged:
            self._overflow_logged = True
            log.error(
                "state events: more than %d waiting for Redis; dropping the oldest (counted in "
                "statistics().dropped; logged once per outage)",
                self.max_backlog,
            )
