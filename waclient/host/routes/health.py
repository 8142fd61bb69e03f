"""Health and metrics: ``/health`` (liveness), ``/health/ready``, ``/health/memory``,
``/health/redis``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from ..config import Settings
from ..deps import HostDep, KeyDep, require_key
from ..errors import error_responses
from ..metrics import CONTENT_TYPE
from ..models import Liveness, MemoryBody, Readiness, RedisBody

__all__ = ["router"]


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
        reason = _gave_up(host)
        if reason is not None:
            return JSONResponse({"status": "failed", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @r.head("/health", include_in_schema=False)
    async def health_head(host: HostDep) -> Response:
        return Response(status_code=503 if _gave_up(host) is not None else 200)

    @r.get(
        "/health/ready",
        response_model=Readiness,
        summary="Readiness: WhatsApp connected and Redis up and taking writes",
        description="200 when WhatsApp is connected and Redis (if configured) answers a PING "
        "and takes a write within 1 s (a result is reused for 1 s); else 503 with the same "
        "body. A Redis refusing writes (maxmemory, MISCONF, READONLY) is not ready. No key "
        "needed; it reveals states only. HEAD answers the same status without a body.",
        responses={503: {"model": Readiness, "description": "Not ready."}},
    )
    async def ready(host: HostDep) -> JSONResponse:
        state = await host.readiness.check()
        body = Readiness(ready=state.ready, whatsapp=state.whatsapp, redis=state.redis)
        return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)

    @r.head("/health/ready", include_in_schema=False)
    async def ready_head(host: HostDep) -> Response:
        state = await host.readiness.check()
        return Response(status_code=200 if state.ready else 503)

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
        stats = host.statistics()
        return {
            "snapshot": snap.to_dict(),
            "guard": stats.guard.to_dict(),
            "listeners": dict(snap.listeners),
            "worker": stats.worker.to_dict() if stats.worker is not None else None,
        }

    @r.get(
        "/health/redis",
        response_model=RedisBody,
        summary="Redis and the recorders",
        description="Whether Redis answers, and each recorder's state: up/down, buffered, "
        "spooled, dropped, written, duplicates, replayed, outages; the scheduler's counters; "
        "the event streams' writers (published, dropped, backlog waiting for Redis).",
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
        stats = host.statistics()
        return {
            "configured": host.redis is not None,
            "up": up,
            "probe": probe,
            "recorders": {d: st.to_dict() for d, st in stats.recorders.items()},
            "scheduler": stats.scheduler.to_dict() if stats.scheduler is not None else None,
            "events": {name: st.to_dict() for name, st in stats.events.items()},
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


def _gave_up(host: Any) -> str | None:
    """Why liveness fails (self-healing gave up), or None."""
    healing = host.healing
    return healing.liveness_failure() if healing is not None else None
