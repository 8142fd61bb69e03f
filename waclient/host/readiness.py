"""Readiness: WhatsApp connected, Redis answering, and Redis taking writes.

A Redis that answers PING may still refuse every write: past ``maxmemory`` with the
``noeviction`` policy (``OOM``), after a failed snapshot (``MISCONF``), as a replica
(``READONLY``), or without enough replicas (``NOREPLICAS``). The recorders and the scheduler
need writes, so readiness also writes a small key that expires by itself
(``<session>:health:probe``, 10 s). Results are reused for :data:`PROBE_CACHE` seconds: the
route needs no key, so probes must not follow the request rate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from waclient.redis import is_unavailable

if TYPE_CHECKING:
    from .runtime import Host

__all__ = ["PROBE_CACHE", "ReadinessProbe", "ReadyState"]

PROBE_CACHE = 1.0
"""Seconds a Redis probe's result is reused."""
PROBE_TTL_MS = 10_000


@dataclass(frozen=True, slots=True)
class ReadyState:
    ready: bool
    whatsapp: dict[str, Any]
    redis: dict[str, Any]


class ReadinessProbe:
    def __init__(self, host: Host, *, timeout: float = 1.0) -> None:
        self.host = host
        self.timeout = timeout
        self._writable: bool | None = None
        self._write_error: str | None = None
        self._checked_at = 0.0

    async def check(self) -> ReadyState:
        host = self.host
        client = host.client
        connected = client is not None and client.connected
        whatsapp: dict[str, Any] = {
            "state": client.state.value if client else "stopped",
            "connected": connected,
        }
        healing = self.host.healing
        if healing is not None:  # failures in a row, restarts, next restart, what to do
            whatsapp.update(healing.statistics().to_dict())
        redis: dict[str, Any] = {"configured": host.redis_health is not None, "up": None}
        if host.redis_health is not None:
            status = host.redis_health.status
            if status is None or time.time() - status.checked_at > PROBE_CACHE:
                status = await host.redis_health.check()
            redis["up"] = status.up
            if status.up:
                redis["writable"] = await self._writes()
                if self._write_error is not None:
                    redis["write_error"] = self._write_error
        ok = connected and redis["up"] is not False and redis.get("writable") is not False
        return ReadyState(ok, whatsapp, redis)

    async def _writes(self) -> bool:
        """Whether Redis took a write of the probe key (reused for PROBE_CACHE seconds)."""
        now = time.monotonic()
        if self._writable is not None and now - self._checked_at <= PROBE_CACHE:
            return self._writable
        redis = self.host.redis
        assert redis is not None
        key = f"{self.host.settings.session_name}:health:probe"
        try:
            async with asyncio.timeout(self.timeout):
                await redis.set(key, str(time.time()), px=PROBE_TTL_MS)
        except Exception as exc:  # ResponseError: OOM, MISCONF, READONLY, NOREPLICAS...
            if not isinstance(exc, ResponseError | TimeoutError) and not is_unavailable(exc):
                raise
            first_line = str(exc).split("\n")[0]
            self._writable, self._write_error = False, f"{type(exc).__name__}: {first_line}"[:200]
        else:
            self._writable, self._write_error = True, None
        self._checked_at = now
        return self._writable
