"""Request limits: token buckets with bounded memory (per key, per client address, and the
number's one outbound budget), and a request body size limit."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import send_error

__all__ = ["BodyLimit", "RateLimiter", "SendBudget"]

_CLOSE = [(b"connection", b"close")]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per key: ``rate`` tokens a second up to ``burst``.

    At most ``max_keys`` buckets are kept; past that the least recently used bucket is dropped
    (a dropped key starts again with a full bucket, which errs on the side of letting a rare
    key through, never of growing without bound).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.limited = 0
        """Requests refused."""
        self.evicted = 0
        """Buckets dropped to stay within max_keys."""
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._thread: int | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key``: 0.0 if allowed, else the seconds until it would be."""
        bucket = self._refilled(key)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        self.limited += 1
        return (cost - bucket.tokens) / self.rate

    def available(self, key: str) -> float:
        """Tokens ``key`` holds now (taking none)."""
        return self._refilled(key).tokens

    def _refilled(self, key: str) -> _Bucket:
        thread = threading.get_ident()
        if self._thread is None:
            self._thread = thread
        elif thread != self._thread:
            raise RuntimeError("RateLimiter is loop-only: called from a second thread")
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
                self.evicted += 1
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        return bucket

    @staticmethod
    def retry_after(wait: float) -> str:
        """The Retry-After header value for ``wait`` seconds (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))


class SendBudget:
    """The number's one outbound budget: a single bucket that every send takes a token from,
    whatever its source. HTTP sends :meth:`try_take` (a refusal is a 429); the scheduler
    (a :class:`waclient.scheduler.SendPacer`) waits for its token (:meth:`wait`)."""

    KEY = "number"

    def __init__(self, rate: float, burst: int) -> None:
        self.limiter = RateLimiter(rate, burst, max_keys=1)
        self.waited = 0
        """Scheduled sends that had to wait for a token."""

    def try_take(self) -> float:
        """0.0 if a token was taken, else the seconds until one is free."""
        return self.limiter.acquire(self.KEY)

    def available(self) -> int:
        return int(self.limiter.available(self.KEY))

    async def wait(self) -> None:
        """Take a token, sleeping until there is one."""
        waited = False
        while (delay := self.limiter.acquire(self.KEY)) > 0:
            waited = True
            await asyncio.sleep(delay)
        self.waited += waited


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused without passing anything to the
    app. A body without one (chunked, streamed) is read up to the limit and refused as soon as
    it passes it; a body within the limit is replayed to the app. So at most ``max_bytes`` of a
    body are ever held in memory. Before answering 413, the rest of a refused body is read and
    discarded up to ``drain_cap`` bytes (default: 1 MiB or 4 x the limit), so that a client
    still sending it reads the 413 rather than a connection reset; past that, the connection
    is closed. ``route_limits`` gives some paths a limit of their own, ``(bytes, at once)``
    (the media upload): past ``at once`` bodies being held for that path, the next request is
    503 before its body is read, so such bodies never hold more than ``bytes * at once``.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        on_refused: Callable[[], None] | None = None,
        drain_cap: int | None = None,
        route_limits: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = dict(route_limits or {})
        self._holding = dict.fromkeys(self.route_limits, 0)
        self.on_refused = on_refused
        self.drain_cap = drain_cap if drain_cap is not None else max(2**20, 4 * max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path not in self.route_limits:
            await self._limited(scope, receive, send, self.max_bytes)
            return
        limit, at_once = self.route_limits[path]
        if self._holding[path] >= at_once:
            await send_error(
                send, 503, "busy", f"{at_once} uploads are in progress; retry shortly", _CLOSE
            )
            return
        self._holding[path] += 1
        try:
            await self._limited(scope, receive, send, limit)
        finally:
            self._holding[path] -= 1

    def holding(self, path: str) -> int:
        """Bodies of ``path`` (one with a limit of its own) being read or handled now."""
        return self._holding.get(path, 0)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        length: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = value.decode("latin-1")
                break
        if length is not None:
            try:
                declared = int(length)
                if declared < 0:
                    raise ValueError
            except ValueError:
                await send_error(send, 400, "bad_request", "Content-Length is not a number", _CLOSE)
                return
            if declared > limit:
                if declared <= self.drain_cap:
                    await self._drain(receive, 0)
                await self._refuse(send, limit)
                return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)  # http.disconnect
                break
            total += len(message.get("body", b""))
            if total > limit:
                if message.get("more_body", False):
                    await self._drain(receive, total)
                await self._refuse(send, limit)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        replay += [m for m in messages if m["type"] != "http.request"]

        async def replayed() -> Message:
            if replay:
                return replay.pop(0)
            return await receive()

        await self.app(scope, replayed, send)

    async def _drain(self, receive: Receive, already: int) -> None:
        """Read and discard the rest of a refused body, up to ``drain_cap`` bytes in all, so
        that the client (still sending) reads the 413 instead of a connection reset."""
        total = already
        while total <= self.drain_cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send: Send, limit: int) -> None:
        if self.on_refused is not None:
            self.on_refused()
        await send_error(
            send,
            413,
            "body_too_large",
            f"the request body is larger than {limit} bytes",
            _CLOSE,
        )
