"""Health and metrics: ``/health`` (liveness), ``/health/ready``, ``/health/memory``,
``/health/redis``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from ..config import Settings
from ..deps import HostDep, KeyDep, require_key
from ..errors import error_responses
from ..metrics import CONTENT_TYPE
from ..models import Liveness, MemoryBody, Readiness, RedisBody

__all__ = ["READY_PROBE_CACHE", "router"]

READY_PROBE_CACHE = 1.0
"""Seconds a Redis probe result is reused by /health/ready (it needs no key: no PING flood)."""


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["health"])

    @r.get(
        "/health",
        response_model=Liveness,
        summary="Liveness",
        description="200 while the process serves HTTP. Touches nothing else (no WhatsApp, no "
        "Redis): use it for the platform's health check. 503 with the reason once self-healing "
        "has used up WACLIENT_MAX_RESTARTS in the hour (the platform should restart the "
        "machine); a logged-out session stays 200 (a restart cannot help).",
        responses={503: {"model": Liveness, "description": "Self-healing gave up."}},
    )
    async def health(host: HostDep) -> JSONResponse:
        healing = host.healing
        reason = healing.liveness_failure() if healing is not None else None
        if reason is not None:
            return JSONResponse({"status": "failed", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @r.get(
        "/health/ready",
        response_model=Readiness,
        summary="Readiness: WhatsApp connected and Redis up",
        description="200 when WhatsApp is connected and Redis (if configured) answers a PING "
        "within 1 s (a result is reused for 1 s); else 503 with the same body. No key needed; "
        "it reveals states only.",
        responses={503: {"model": Readiness, "description": "Not ready."}},
    )
    async def ready(host: HostDep) -> JSONResponse:
        client = host.client
        connected = client is not None and client.connected
        whatsapp: dict[str, Any] = {
            "state": client.state.value if client else "stopped",
            "connected": connected,
        }
        if host.healing is not None:
            whatsapp.update(host.healing.statistics().to_dict())
        redis: dict[str, Any] = {"configured": host.redis_health is not None, "up": None}
        if host.redis_health is not None:
            status = host.redis_health.status
            if status is None or time.time() - status.checked_at > READY_PROBE_CACHE:
                status = await host.redis_health.check()
            redis["up"] = status.up
        ok = connected and redis["up"] is not False
        body = Readiness(ready=ok, whatsapp=whatsapp, redis=redis)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @r.get(
        "/health/memory",
        response_model=MemoryBody,
        summary="Memory: process, worker, listeners, guard",
        description="A snapshot of the host process (rss, pss, python blocks, gc counts, fds, "
        "threads, asyncio tasks), the worker process (rss, recycles...), live listeners per "
        "event type, and the memory guard (limits, level, shedding). `gc_objects=true` also "
        "counts every object the collector tracks (slower).",
        responses=error_responses(401, 422),
    )
    async def memory(
        host: HostDep,
        _key: KeyDep,
        gc_objects: bool = Query(False, description="Count gc-tracked objects (slower)."),
    ) -> dict[str, Any]:
        snap = host.snapshot(gc_objects=gc_objects)
        return {
            "snapshot": snap.to_dict(),
            "guard": host.guard.stats(),
            "listeners": dict(snap.listeners),
            "worker": host.worker_stats(),
        }

    @r.get(
        "/health/redis",
        response_model=RedisBody,
        summary="Redis and the recorders",
        description="Whether Redis answers, and each recorder's state: up/down, buffered, "
        "spooled, dropped, written, duplicates, replayed, outages; the scheduler's counters.",
        responses=error_responses(401),
    )
    async def redis(host: HostDep, _key: KeyDep) -> dict[str, Any]:
        probe: dict[str, Any] | None = None
        up: bool | None = None
        if host.redis_health is not None:
            status = await host.redis_health.check()
            up = status.up
            probe = {
                "up": status.up,
                "latency": status.latency,
                "last_error": status.last_error,
                "failures": status.failures,
                "changed_at": status.changed_at,
            }
        recorders = {
            rec.direction: rec.stats().to_dict()
            for rec in (host.inbound, host.outbound)
            if rec is not None
        }
        return {
            "configured": host.redis is not None,
            "up": up,
            "probe": probe,
            "recorders": recorders,
            "scheduler": host.scheduler.stats() if host.scheduler is not None else None,
        }

    metrics_deps = [] if settings.metrics_public else [Depends(require_key)]

    @r.get(
        "/metrics",
        summary="Prometheus metrics",
        description="The Prometheus text exposition format. Needs the key unless "
        "WACLIENT_METRICS_PUBLIC=true.",
        response_class=Response,
        dependencies=metrics_deps,
        responses={
            200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
            **({} if settings.metrics_public else error_responses(401)),
        },
    )
    async def metrics(host: HostDep) -> Response:
        body = host.metrics.render()  # on the loop: it reads the loop's tasks; ~1 ms
        return Response(body, media_type=CONTENT_TYPE)

    return r
