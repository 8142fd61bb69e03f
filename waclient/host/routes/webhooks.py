"""``/webhooks``: add, list, delete endpoints and replay their dead letters; and, with the
simulated transport only, ``POST /debug/inbound`` to watch a webhook arrive without WhatsApp.

No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from waclient.transports import Simulating, TransportError
from waclient.webhooks import (
    EndpointStore,
    EventFilterError,
    SecretError,
    TooManyEndpointsError,
    WebhookDispatcher,
    WebhookURLError,
    forget_endpoint,
)

from ..config import Settings
from ..deps import HostDep, KeyDep
from ..errors import ApiError, error_responses
from ..models import Chat
from ..runtime import Host
from .scheduled import _redis_errors

__all__ = ["debug_router", "router"]

EndpointId = Annotated[
    str,
    Path(pattern=r"^(ep_[0-9a-f]{16}|env-[0-9a-f]{12})$", description="The endpoint's id."),
]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http:// or https:// URL to POST events to.")
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="whsec_<base64>; omitted: one is generated and shown once in the answer.",
    )
    events: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Event types (e.g. message.received, session.*); empty: every event.",
    )


class WebhookBody(BaseModel):
    id: str
    url: str
    events: list[str]
    created: float
    origin: str
    stats: dict[str, Any] | None = None


class WebhookCreated(WebhookBody):
    secret: str = Field(description="The signing secret; shown only in this answer.")


class WebhookList(BaseModel):
    count: int
    endpoints: list[WebhookBody]


class Replayed(BaseModel):
    replayed: int


class InboundBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sender: Chat = Field(alias="from", description="Phone number or JID of the sender.")
    text: str = Field(min_length=1, max_length=4096)


def _webhooks(host: Host) -> tuple[WebhookDispatcher, EndpointStore, Redis]:
    if host.webhooks is None or host.webhook_store is None or host.redis is None:
        raise ApiError(503, "webhooks need Redis: set REDIS_URL", code="redis_not_configured")
    return host.webhooks, host.webhook_store, host.redis


def _with_stats(dispatcher: WebhookDispatcher, public: dict[str, Any]) -> dict[str, Any]:
    stats = dispatcher.statistics().endpoints.get(public["id"])
    return {**public, "stats": _stats_dict(stats) if stats is not None else None}


def _stats_dict(stats: Any) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in stats.__slots__ if name not in ("id", "url")}


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["webhooks"])

    @r.post(
        "/webhooks",
        status_code=201,
        response_model=WebhookCreated,
        summary="Add a webhook endpoint",
        description="Events are POSTed to `url` as JSON, signed by the Standard Webhooks "
        "specification with `secret` (generated when omitted; shown only in this answer). "
        "422 for a URL that is not http(s), or that resolves to a loopback, link-local or "
        "private address (unless WACLIENT_WEBHOOK_ALLOW_PRIVATE=1), a bad secret or an unknown "
        "event type; 409 past WACLIENT_WEBHOOK_MAX_ENDPOINTS.",
        responses=error_responses(400, 401, 409, 413, 422, 503),
    )
    async def create(host: HostDep, _key: KeyDep, body: WebhookCreate) -> dict[str, Any]:
        dispatcher, store, _ = _webhooks(host)
        try:
            async with _redis_errors():
                endpoint = await store.add(body.url, secret=body.secret, events=body.events)
                await dispatcher.refresh()
        except TooManyEndpointsError as exc:
            raise ApiError(409, str(exc), code="too_many_endpoints") from exc
        except (WebhookURLError, SecretError, EventFilterError) as exc:
            raise ApiError(422, str(exc), code="validation_error") from exc
        return {**endpoint.public(), "secret": endpoint.secrets[0]}

    @r.get(
        "/webhooks",
        response_model=WebhookList,
        summary="List webhook endpoints",
        description="Configured (WACLIENT_WEBHOOK_URLS) and added endpoints, with their "
        "delivery figures; never their secrets. At most WACLIENT_WEBHOOK_MAX_ENDPOINTS plus "
        "the configured ones.",
        responses=error_responses(401, 503),
    )
    async def list_endpoints(host: HostDep, _key: KeyDep) -> dict[str, Any]:
        dispatcher, store, _ = _webhooks(host)
        async with _redis_errors():
            stored = await store.list()
        endpoints = [*dispatcher.static, *stored]
        return {
            "count": len(endpoints),
            "endpoints": [_with_stats(dispatcher, e.public()) for e in endpoints],
        }

    @r.delete(
        "/webhooks/{endpoint_id}",
        status_code=204,
        response_class=Response,
        summary="Delete a webhook endpoint",
        description="Stops its deliveries and drops its backlog position, dead letters and "
        "consumer groups. 409 for a configured endpoint (remove it from WACLIENT_WEBHOOK_URLS).",
        responses={204: {"description": "Deleted."}, **error_responses(401, 404, 409, 422, 503)},
    )
    async def delete(host: HostDep, _key: KeyDep, endpoint_id: EndpointId) -> Response:
        dispatcher, store, redis = _webhooks(host)
        if any(e.id == endpoint_id for e in dispatcher.static):
            raise ApiError(409, "a configured endpoint: remove it from WACLIENT_WEBHOOK_URLS")
        async with _redis_errors():
            if not await store.delete(endpoint_id):
                raise ApiError(404, f"no webhook endpoint {endpoint_id}")
            await dispatcher.refresh()
            await forget_endpoint(redis, dispatcher.keys, endpoint_id, dispatcher.streams)
        return Response(status_code=204)

    @r.post(
        "/webhooks/{endpoint_id}/replay",
        response_model=Replayed,
        summary="Replay an endpoint's dead letters",
        description="Every event that went to the endpoint's dead letters (after "
        "WACLIENT_WEBHOOK_MAX_ATTEMPTS failed attempts) is delivered again, oldest first, "
        "with its original webhook-id.",
        responses=error_responses(401, 404, 422, 503),
    )
    async def replay(host: HostDep, _key: KeyDep, endpoint_id: EndpointId) -> dict[str, int]:
        dispatcher, store, _ = _webhooks(host)
        async with _redis_errors():
            known = any(e.id == endpoint_id for e in dispatcher.static)
            if not known and await store.get(endpoint_id) is None:
                raise ApiError(404, f"no webhook endpoint {endpoint_id}")
            return {"replayed": await dispatcher.replay(endpoint_id)}

    return r


def debug_router(settings: Settings) -> APIRouter:
    """``POST /debug/inbound``; the app includes it only with WACLIENT_TRANSPORT=simulated."""
    r = APIRouter(tags=["debug"])

    @r.post(
        "/debug/inbound",
        status_code=202,
        summary="Simulate an inbound text message",
        description="Only with WACLIENT_TRANSPORT=simulated: the simulated WhatsApp side emits "
        "an inbound text message, which is recorded and delivered to webhooks like a real one. "
        "409 while no session is connected.",
        responses=error_responses(400, 401, 409, 413, 422),
    )
    async def inbound(host: HostDep, _key: KeyDep, body: InboundBody) -> dict[str, str]:
        from waclient.transports.simulated import message_event

        transport, client = host.transport, host.client
        if not isinstance(transport, Simulating) or client is None or not client.connected:
            raise ApiError(409, "no simulated session is running")
        event = message_event(body.sender, body.text)
        try:
            await asyncio.shield(transport.emit(event))
        except TransportError as exc:
            raise ApiError(409, f"no simulated session is running ({exc})") from exc
        return {"id": str(event.Info.ID)}

    return r
