"""How the host is served: uvicorn's httptools protocol with a guard in front of the app.

uvicorn (0.54, httptools) has no limit on header size or count and no timeout on reading a
request's headers or body, and its ``limit_concurrency`` counts idle connections, so slow
clients that never finish a request starve everyone. :func:`server_config` makes a
``uvicorn.Config`` whose protocol is :class:`GuardedHttpToolsProtocol`, which adds:

- a limit on the request line plus headers (``max_header_bytes``, counted in raw bytes while
  they arrive, so an endless header is cut at the limit, never buffered) and on their number
  (``max_headers``): past either, 431;
- a header-read timeout from the connection's (or the request's) first byte, and a body-read
  timeout from the end of the headers: 408;
- the door (:mod:`.door`): when a request's headers are complete, a keyless or wrong-key
  request to a keyed path is answered 401 (429 once its address failed too often) before its
  body is read and before it counts as a request in progress or takes an upload slot; the
  request's client address (``scope["client"]``) is the one the door works out;
- at most ``max_connections_per_client`` open connections per client address and
  ``max_connections`` in all (more are closed at once), and at most ``max_requests`` requests
  in progress (more are answered 503); connections still sending their headers do not count
  as requests in progress, so slow clients cannot make ``/health`` answer 503.

A refused request is answered with the JSON error body, ``connection: close`` and a half-close,
and whatever the client still sends is read and thrown away for up to :data:`LINGER` seconds
(so it reads the answer rather than a reset), then the connection is closed. docs/host.md
says why this guard rather than h11's limits or another server. Needs httptools (part of
the host extra).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .config import SHUTDOWN_SHARES, Settings
from .door import Door, Refusal
from .errors import error_json, send_error

__all__ = [
    "LINGER",
    "ConnectionLimits",
    "GuardStats",
    "GuardedHttpToolsProtocol",
    "HttpGuardStats",
    "guard_stats",
    "server_config",
]

LINGER = 1.0
"""Seconds a refused connection's further input is read and discarded before it is closed."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_client: int = 32
    max_connections: int = 2048
    max_requests: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes or cls.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections_per_client=settings.max_connections_per_client,
            max_connections=settings.max_connections,
            max_requests=settings.max_requests,
        )


@dataclass(frozen=True, slots=True)
class HttpGuardStats:
    """What :meth:`GuardStats.statistics` returns: the guard's refusals so far."""

    connections_refused: int
    headers_too_large: int
    header_timeouts: int
    body_timeouts: int
    busy: int
    clients: int
    """Client addresses with a connection open now."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class GuardStats:
    """What the guard refused, since the server started (its protocol instances count here)."""

    connections_refused: int = 0
    headers_too_large: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0
    busy: int = 0
    open_per_client: Counter[str] = field(default_factory=Counter)

    def statistics(self) -> HttpGuardStats:
        return HttpGuardStats(
            connections_refused=self.connections_refused,
            headers_too_large=self.headers_too_large,
            header_timeouts=self.header_timeouts,
            body_timeouts=self.body_timeouts,
            busy=self.busy,
            clients=len(self.open_per_client),
        )


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration the host runs under (``python -m waclient.host`` and
    :func:`waclient.host.testing.serve`): the guarded protocol, no websockets, no server
    header, uvicorn's own concurrency limit off (the guard's replaces it)."""
    limits = ConnectionLimits.from_settings(settings)
    stats = GuardStats()
    host = getattr(getattr(app, "state", None), "host", None)
    door = getattr(host, "door", None)
    protocol = type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "stats": stats, "door": door if isinstance(door, Door) else None},
    )
    if host is not None:
        host.http_guard = stats  # for /metrics
    options: dict[str, Any] = {
        "host": settings.bind,
        "port": settings.port,
        "http": protocol,
        "ws": "none",
        "loop": "asyncio",  # not uvloop: ~2 MiB less RSS; the host's traffic does not need it
        "lifespan": "on",
        "log_level": settings.log_level,
        "proxy_headers": False,  # the door works out the client address
        "server_header": False,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": settings.shutdown_timeout * SHUTDOWN_SHARES["requests"],
        "limit_concurrency": None,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def guard_stats(config: uvicorn.Config) -> GuardStats | None:
    """The guard's counters of a config made by :func:`server_config`."""
    stats = getattr(config.http, "stats", None)
    return stats if isinstance(stats, GuardStats) else None


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, read timeouts and connection caps.

    :func:`server_config` makes a subclass per server holding its ``limits`` and ``stats``.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    stats: ClassVar[GuardStats] = GuardStats()
    door: ClassVar[Door | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # counts idle connections: replaced by max_requests
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._raw_head_bytes = 0
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: Refusal | None = None
        self._discarding = False

    # -- connections ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else "?"
        open_here = self.stats.open_per_client
        if (
            open_here[address] >= self.limits.max_connections_per_client
            or len(self.connections) > self.limits.max_connections
        ):
            self.stats.connections_refused += 1
            transport.close()
            return
        open_here[address] += 1
        self._address = address
        self._arm(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            open_here = self.stats.open_per_client
            open_here[self._address] -= 1
            if open_here[self._address] <= 0:
                del open_here[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head:
            self._raw_head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._raw_head_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_head(f"more than {self.limits.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        refusal = self._refusal
        if refusal is not None:  # a parser callback refused the request
            self._refuse(refusal.status, refusal.code, refusal.message, refusal.headers)
        else:
            super().send_400_response(msg)

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            self._arm(self.limits.header_timeout, self._header_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = _head_refusal(f"more than {self.limits.max_headers} headers")
            self.stats.headers_too_large += 1
            raise _Refused
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        pipelined = self.cycle is not None and not self.cycle.response_complete
        if self.door is not None and not pipelined:  # pipelined: the app's check answers
            self._at_door(self.door)
        self._in_head = False
        self._disarm()
        busy = len(self.tasks) >= self.limits.max_requests
        app = self.app
        if busy:
            self.stats.busy += 1
            self.app = _busy
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        self._raw_head_bytes = self._head_bytes = self._header_count = 0
        super().on_message_complete()

    # -- helpers -------------------------------------------------------------------------------

    def _at_door(self, door: Door) -> None:
        """The door's verdict on the request whose headers are complete: refuse it (before
        it runs) or let it in with the client address the door found."""
        url = httptools.parse_url(self.url)
        path = urllib.parse.unquote(url.path.decode("ascii"))
        peer, port = self.client if self.client else ("?", 0)
        address, verdict = door.check(path, url.query or b"", peer, self.headers)
        self.scope["client"] = (address, port)
        if isinstance(verdict, Refusal):
            if self.access_log:  # as uvicorn logs an answered request (no query: none read)
                method = self.parser.get_method().decode("ascii")
                version = self.parser.get_http_version()
                self.access_logger.info(
                    '%s:%d - "%s %s HTTP/%s" %d',
                    address,
                    port,
                    method,
                    path,
                    version,
                    verdict.status,
                )
            self._refusal = verdict
            raise _Refused

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            self._refusal = _head_refusal(f"more than {self.limits.max_header_bytes} bytes")
            self.stats.headers_too_large += 1
            raise _Refused

    def _refuse_head(self, why: str) -> None:
        self.stats.headers_too_large += 1
        refusal = _head_refusal(why)
        self._refuse(refusal.status, refusal.code, refusal.message)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # We are the slow side (an earlier request's answer is still being made).
            self._arm(self.limits.header_timeout, self._header_timed_out)
            return
        self.stats.header_timeouts += 1
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers took longer than {self.limits.header_timeout:g} s",
        )

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            return
        self.stats.body_timeouts += 1
        started = cycle.response_started
        cycle.disconnected = True  # the app reads a disconnect, and its answer is dropped
        cycle.message_event.set()
        if started:  # answered (or answering) already: nothing more to say
            self.transport.close()
            return
        self._refuse(
            408,
            "request_timeout",
            f"the request body took longer than {self.limits.body_timeout:g} s",
        )

    def _refuse(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Answer ``status`` and close: half-close, discard input for LINGER s, then close."""
        if self.transport.is_closing():
            return
        body = error_json(code, message)
        extra = [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    *extra,
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self._discarding = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self._timer = self.loop.call_later(LINGER, self.transport.close)


def _head_refusal(why: str) -> Refusal:
    return Refusal(431, "headers_too_large", f"the request line and headers are too large: {why}")


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer while ``max_requests`` requests are in progress."""
    await send_error(
        send, 503, "busy", "too many requests in progress; retry shortly", [(b"retry-after", b"1")]
    )
