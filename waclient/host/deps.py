"""Typed dependencies: the running host, the API key, the rate limits, the live client.

All ``async``: FastAPI runs a sync dependency in its thread pool (a thread hop per request, and
the limiters would be shared across threads); these run on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from waclient.client import Client

from .door import API_KEY_HEADER, Refusal
from .errors import ApiError
from .limits import RateLimiter
from .runtime import Host

__all__ = [
    "API_KEY_HEADER",
    "ClientDep",
    "HostDep",
    "KeyDep",
    "ScheduleLimited",
    "SendLimited",
    "get_host",
    "require_key",
]


_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The key set in WACLIENT_API_KEY on the host.",
)


async def get_host(request: Request) -> Host:
    host: Host = request.app.state.host
    return host


HostDep = Annotated[Host, Depends(get_host)]


async def require_key(
    request: Request, host: HostDep, key: Annotated[str | None, Security(_api_key)]
) -> str:
    """The id of the presented key (``key0``...); 401 if it is missing or wrong, 429 once the
    client's address has failed ``WACLIENT_AUTH_FAILURES`` times in the window (the right key
    is never refused). Under the HTTP guard the door has refused a bad key before the request
    ran (:mod:`.door`); this is the same check for an app served without it."""
    address = request.client.host if request.client is not None else "?"
    verdict = host.door.authenticate(key, address)
    if isinstance(verdict, Refusal):
        raise ApiError(
            verdict.status, verdict.message, code=verdict.code, headers=dict(verdict.headers)
        )
    return verdict


KeyDep = Annotated[str, Depends(require_key)]


def _refuse_if_waiting(wait: float, message: str) -> None:
    if wait > 0:
        retry = RateLimiter.retry_after(wait)
        raise ApiError(429, f"{message}; retry after {retry} s", headers={"Retry-After": retry})


def _limit(limiter: RateLimiter, key_id: str, what: str) -> None:
    _refuse_if_waiting(
        limiter.acquire(key_id),
        f"too many {what} for this API key: at most {limiter.rate:g}/s with bursts of "
        f"{limiter.burst}",
    )


async def send_limited(host: HostDep, key_id: KeyDep) -> str:
    """The API key, after taking a token from its send bucket and one from the number's
    outbound budget, shared with scheduled sends (429 when either is empty)."""
    budget = host.send_budget
    try:
        _limit(host.send_limiter, key_id, "sends")
        _refuse_if_waiting(
            budget.try_take(),
            f"this number's outbound budget is spent (at most {budget.limiter.rate:g} sends/s "
            f"with bursts of {budget.limiter.burst}, scheduled sends included)",
        )
    except ApiError:
        host.metrics.sends.labels("rate_limited").inc()
        raise
    return key_id


async def schedule_limited(host: HostDep, key_id: KeyDep) -> str:
    _limit(host.schedule_limiter, key_id, "scheduling requests")
    return key_id


SendLimited = Annotated[str, Depends(send_limited)]
ScheduleLimited = Annotated[str, Depends(schedule_limited)]


async def get_client(host: HostDep) -> Client:
    client = host.client
    if client is None:
        raise ApiError(503, "the client is not running", code="not_started")
    return client


ClientDep = Annotated[Client, Depends(get_client)]
