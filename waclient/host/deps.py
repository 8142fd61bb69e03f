"""Typed dependencies: the running host, the API key, the rate limits, the live client."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from waclient.client import Client

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

API_KEY_HEADER = "X-API-Key"

_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The key set in WACLIENT_API_KEY on the host.",
)


def get_host(request: Request) -> Host:
    host: Host = request.app.state.host
    return host


HostDep = Annotated[Host, Depends(get_host)]


def require_key(host: HostDep, key: Annotated[str | None, Security(_api_key)]) -> str:
    """The id of the presented key (``key0``...); 401 if it is missing or wrong."""
    key_id = host.key_id(key)
    if key_id is None:
        host.metrics.auth_failures.inc()
        message = "missing X-API-Key header" if not key else "wrong API key"
        raise ApiError(401, message, headers={"WWW-Authenticate": "APIKey"})
    return key_id


KeyDep = Annotated[str, Depends(require_key)]


def _limit(limiter: RateLimiter, key_id: str, what: str) -> None:
    wait = limiter.acquire(key_id)
    if wait > 0:
        retry = RateLimiter.retry_after(wait)
        raise ApiError(
            429,
            f"too many {what} for this API key: at most {limiter.rate:g}/s with bursts of "
            f"{limiter.burst}; retry after {retry} s",
            headers={"Retry-After": retry},
        )


def send_limited(host: HostDep, key_id: KeyDep) -> str:
    """The API key, after taking a token from its send bucket (429 when it is empty)."""
    try:
        _limit(host.send_limiter, key_id, "sends")
    except ApiError:
        host.metrics.sends.labels("rate_limited").inc()
        raise
    return key_id


def schedule_limited(host: HostDep, key_id: KeyDep) -> str:
    _limit(host.schedule_limiter, key_id, "scheduling requests")
    return key_id


SendLimited = Annotated[str, Depends(send_limited)]
ScheduleLimited = Annotated[str, Depends(schedule_limited)]


def get_client(host: HostDep) -> Client:
    client = host.client
    if client is None:
        raise ApiError(503, "the client is not running", code="not_started")
    return client


ClientDep = Annotated[Client, Depends(get_client)]
