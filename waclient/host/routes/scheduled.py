"""``/scheduled``: create, list, read and cancel scheduled messages (persisted in Redis).

No ``from __future__ import annotations``: the body's model is made per app (see messages.py).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from waclient.redis import is_unavailable
from waclient.scheduler import JobPosition, Scheduler, SchedulerError, TooManyJobsError

from ..config import Settings
from ..deps import HostDep, KeyDep, ScheduleLimited
from ..errors import ApiError, error_responses
from ..models import JobBody, JobList, schedule_request_model
from ..pagination import MAX_PAGE_BYTES, MAX_PAGE_SIZE, PageDep, bounded_page

__all__ = ["router"]

JobId = Annotated[
    str,
    Path(pattern=r"^[0-9a-f]{32}$", description="The job's id (32 hex digits)."),
]


def _scheduler(host: Any) -> Scheduler:
    scheduler: Scheduler | None = host.scheduler
    if scheduler is None:
        raise ApiError(503, "scheduling needs Redis: set REDIS_URL", code="redis_not_configured")
    return scheduler


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        raise ApiError(
            503,
            f"Redis is unavailable ({type(exc).__name__}); retry later",
            code="redis_unavailable",
            headers={"Retry-After": "5"},
        ) from exc


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["scheduled"])
    ScheduleText = schedule_request_model(settings.max_text_length)

    @r.post(
        "/scheduled",
        status_code=201,
        response_model=JobBody,
        summary="Schedule a text message",
        description="Sends `text` to `to` at `at` (once) or each time `cron` fires in `tz`. "
        "Exactly one of `at` and `cron`. Jobs live in Redis and survive restarts. 422 for a "
        "bad cron expression, a date in the past or without an offset, an unknown time zone; "
        "409 when the session already holds WACLIENT_MAX_SCHEDULED jobs; 503 when Redis is "
        "down or not configured.",
        responses=error_responses(400, 401, 409, 413, 422, 429, 503),
    )
    async def create(
        host: HostDep,
        _key: ScheduleLimited,
        body: ScheduleText,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        data = body.model_dump()  # type: ignore[attr-defined]
        scheduler = _scheduler(host)
        cron, at = data.get("cron"), data.get("at")
        try:
            async with _redis_errors():
                if cron is not None:
                    job = await scheduler.create_cron(data["to"], data["text"], cron, tz=data["tz"])
                else:
                    job = await scheduler.create_once(data["to"], data["text"], at)
        except TooManyJobsError as exc:
            raise ApiError(409, str(exc), code="too_many_jobs") from exc
        except SchedulerError as exc:
            raise ApiError(422, str(exc), code="validation_error") from exc
        return job.to_dict()

    @r.get(
        "/scheduled",
        response_model=JobList,
        summary="List scheduled messages",
        description="The session's jobs, soonest first (a job being sent sorts at the end of "
        f"its lease), a page at a time: at most `limit` jobs ({MAX_PAGE_SIZE} at most) and "
        f"about {MAX_PAGE_BYTES // 1024} KiB of JSON; pass `next_cursor` back as `cursor` for "
        "the next page (null: no more). A job that cannot be read is skipped and logged.",
        responses=error_responses(401, 422, 503),
    )
    async def list_jobs(host: HostDep, _key: KeyDep, page: PageDep) -> dict[str, Any]:
        scheduler = _scheduler(host)
        after = None
        if page.after is not None:
            try:
                after = JobPosition.parse(*page.after)
            except (TypeError, ValueError) as exc:
                raise ApiError(422, "cursor: not a cursor of this list") from exc
        async with _redis_errors():
            rows, next_position = await scheduler.page(page.limit, after)
        jobs, cursor = bounded_page([(pos, job.to_dict()) for pos, job in rows], next_position)
        return {"count": len(jobs), "jobs": jobs, "next_cursor": cursor}

    @r.get(
        "/scheduled/{job_id}",
        response_model=JobBody,
        summary="Read a scheduled message",
        responses=error_responses(401, 404, 422, 503),
    )
    async def get_job(host: HostDep, _key: KeyDep, job_id: JobId) -> dict[str, Any]:
        scheduler = _scheduler(host)
        async with _redis_errors():
            job = await scheduler.get(job_id)
        if job is None:
            raise ApiError(404, f"no scheduled message {job_id}")
        return job.to_dict()

    @r.delete(
        "/scheduled/{job_id}",
        status_code=204,
        response_class=Response,
        summary="Cancel a scheduled message",
        responses={204: {"description": "Cancelled."}, **error_responses(401, 404, 422, 503)},
    )
    async def cancel(host: HostDep, _key: KeyDep, job_id: JobId) -> Response:
        scheduler = _scheduler(host)
        async with _redis_errors():
            removed = await scheduler.cancel(job_id)
        if not removed:
            raise ApiError(404, f"no scheduled message {job_id}")
        return Response(status_code=204)

    return r
