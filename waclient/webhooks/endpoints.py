"""Webhook endpoints: where events go, signed with which secrets, filtered to which types.

Endpoints come from two places: the environment (``WACLIENT_WEBHOOK_URLS``, with
``WACLIENT_WEBHOOK_SECRET``; see :func:`static_endpoints`) and :class:`EndpointStore`, a Redis
hash the host's ``/webhooks`` routes write. Every dispatcher on the same Redis sees the same
stored endpoints.
"""

from __future__ import annotations

import hashlib
import json
import secrets as _secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from waclient.errors import WaclientError

from .events import parse_event_filter
from .signing import generate_secret, parse_secret
from .urls import check_url

__all__ = ["Endpoint", "EndpointStore", "TooManyEndpointsError", "static_endpoints"]


class TooManyEndpointsError(WaclientError, RuntimeError):
    """The store already holds its maximum number of endpoints."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    url: str
    secrets: tuple[str, ...] = field(repr=False)
    """Every delivery is signed with each (several during a rotation)."""
    events: tuple[str, ...] = ()
    """Event types (or ``category.*``) this endpoint wants; empty: all."""
    created: float = 0.0
    origin: str = "api"
    """``env`` (from WACLIENT_WEBHOOK_URLS) or ``api`` (stored by POST /webhooks)."""

    def public(self) -> dict[str, Any]:
        """What may be shown: everything but the secrets."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "created": self.created,
            "origin": self.origin,
        }

    def to_json(self) -> str:
        return json.dumps({**self.public(), "secrets": list(self.secrets)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Endpoint:
        d = json.loads(raw)
        return cls(
            id=str(d["id"]),
            url=str(d["url"]),
            secrets=tuple(str(s) for s in d["secrets"]),
            events=tuple(str(e) for e in d.get("events", ())),
            created=float(d.get("created", 0.0)),
            origin=str(d.get("origin", "api")),
        )


def static_endpoints(urls: Sequence[str], secrets: Sequence[str]) -> list[Endpoint]:
    """Endpoints for configured URLs, all signed with ``secrets``. Each id is derived from its
    URL (``env-`` and 12 hex digits), so it stays the same across restarts and reorderings."""
    for secret in secrets:
        parse_secret(secret)
    out: list[Endpoint] = []
    for url in dict.fromkeys(u.strip() for u in urls if u.strip()):
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        out.append(Endpoint(f"env-{digest}", url, tuple(secrets), origin="env"))
    return out


class EndpointStore:
    """Endpoints in the Redis hash ``{key_prefix}:webhooks:endpoints``."""

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = "waclient",
        max_endpoints: int = 16,
        allow_private: bool = False,
    ) -> None:
        self.redis = redis
        self.key = f"{key_prefix}:webhooks:endpoints"
        self.max_endpoints = max_endpoints
        self.allow_private = allow_private

    async def add(
        self, url: str, *, secret: str | None = None, events: Sequence[str] = ()
    ) -> Endpoint:
        """Check ``url`` (:class:`~waclient.webhooks.urls.WebhookURLError`), the secret
        (:class:`~waclient.webhooks.signing.SecretError`) and the filter, then store a new
        endpoint. Without ``secret`` one is generated; the returned endpoint holds it."""
        await check_url(url, allow_private=self.allow_private)
        if secret is not None:
            parse_secret(secret)
        endpoint = Endpoint(
            id="ep_" + _secrets.token_hex(8),
            url=url,
            secrets=(secret or generate_secret(),),
            events=parse_event_filter(events),
            created=time.time(),
        )
        added = await self.redis.eval(
            _ADD_SCRIPT, 1, self.key, endpoint.id, endpoint.to_json(), self.max_endpoints
        )
        if not added:
            raise TooManyEndpointsError(f"at most {self.max_endpoints} webhook endpoints")
        return endpoint

    async def list(self) -> list[Endpoint]:
        raw = await self.redis.hgetall(self.key)
        return sorted((Endpoint.from_json(v) for v in raw.values()), key=lambda e: e.created)

    async def get(self, endpoint_id: str) -> Endpoint | None:
        raw = await self.redis.hget(self.key, endpoint_id)
        return None if raw is None else Endpoint.from_json(raw)

    async def delete(self, endpoint_id: str) -> bool:
        return bool(await self.redis.hdel(self.key, endpoint_id))


_ADD_SCRIPT = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
