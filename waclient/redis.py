"""Redis connections with safe defaults, and a health probe. The one way to open Redis here.

redis-py has no offline queue: a command during an outage raises once its timeouts and retries
are spent. :func:`open_redis` makes that happen quickly and boundedly: short connect and socket
timeouts, a few retries with capped exponential backoff and jitter, periodic health checks on
idle connections, and a *blocking* pool with a fixed number of connections, so a burst of callers
waits for a free connection (up to ``pool_timeout``) instead of opening sockets without limit.
Anything the project keeps during an outage is its own bounded buffer (see
:mod:`waclient.recorders`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["HealthStatus", "RedisHealth", "is_unavailable", "open_redis"]


def open_redis(
    url: str,
    *,
    connect_timeout: float = 2.0,
    socket_timeout: float = 2.0,
    retries: int = 2,
    backoff_base: float = 0.05,
    backoff_cap: float = 1.0,
    health_check_interval: int = 10,
    max_connections: int = 8,
    pool_timeout: float = 2.0,
    client_name: str | None = "waclient",
    decode_responses: bool = False,
) -> Redis:
    """An asyncio Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    - ``connect_timeout`` / ``socket_timeout``: seconds before a connect or a reply gives up.
    - ``retries``: extra attempts after a connection error or timeout, waiting
      ``min(backoff_cap, backoff_base * 2**n)`` with jitter between them. The worst case for one
      command is about ``(retries + 1) * (connect_timeout + socket_timeout) + retries *
      backoff_cap`` seconds.
    - ``health_check_interval``: a connection idle longer than this is PINGed before reuse.
    - ``max_connections``: the pool's size; callers beyond it wait up to ``pool_timeout`` seconds.

    Close it with ``await client.aclose()`` (that closes its pool too).
    """
    if connect_timeout <= 0 or socket_timeout <= 0:
        raise ValueError("connect_timeout and socket_timeout must be > 0")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if max_connections < 1:
        raise ValueError("max_connections must be >= 1")
    if pool_timeout <= 0:
        raise ValueError("pool_timeout must be > 0")
    retry = Retry(
        ExponentialWithJitterBackoff(cap=backoff_cap, base=backoff_base),
        retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )
    kwargs: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": pool_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": health_check_interval,
        "decode_responses": decode_responses,
    }
    if client_name:
        kwargs["client_name"] = client_name
    pool = BlockingConnectionPool.from_url(url, **kwargs)
    return Redis.from_pool(pool)


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The outcome of one probe."""

    up: bool
    latency: float | None
    """Seconds the PING took, when it succeeded."""
    last_error: str | None
    """The latest failure seen by the probe (kept after recovery, for the record)."""
    changed_at: float
    """``time.time()`` of the latest up/down change (or of the first probe)."""
    checked_at: float
    """``time.time()`` of this probe."""
    failures: int
    """Probes in a row that failed (0 when up)."""


class RedisHealth:
    """A PING probe for one Redis client: ``await probe.check()`` -> :class:`HealthStatus`.

    Each probe is bounded by ``timeout`` seconds whatever the client's own retries, so a
    blackholed server reads as down after ``timeout``, not after every retry has run.
    """

    def __init__(self, redis: Redis, *, timeout: float = 1.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.redis = redis
        self.timeout = timeout
        self._status: HealthStatus | None = None

    @property
    def status(self) -> HealthStatus | None:
        """The latest probe's result, or None before the first."""
        return self._status

    async def check(self) -> HealthStatus:
        """PING once; return (and remember) the result."""
        started = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
        except TimeoutError:
            error = f"timeout: no PONG within {self.timeout:g}s"
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        previous = self._status
        up = error is None
        changed_at = now if previous is None or previous.up != up else previous.changed_at
        self._status = HealthStatus(
            up=up,
            latency=time.perf_counter() - started if up else None,
            last_error=error if error is not None else (previous.last_error if previous else None),
            changed_at=changed_at,
            checked_at=now,
            failures=0 if up else (previous.failures + 1 if previous else 1),
        )
        return self._status


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis could not be reached, not that the request was wrong.

    Besides redis-py's own errors and socket errors, a connection torn down mid-command can
    surface from asyncio as ``RuntimeError("unable to perform operation on <TCPTransport
    closed=True ...>; the handler is closed")``, which redis-py lets through unwrapped.
    """
    if isinstance(exc, RedisError | OSError | TimeoutError):
        return True
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)
