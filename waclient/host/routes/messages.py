"""``POST /messages/text``: send a text message.

No ``from __future__ import annotations`` here: the body's model is made per app (its length
limit comes from the settings) and FastAPI must see the class itself in the signature.
"""

import asyncio
from typing import Any

from fastapi import APIRouter

from waclient.client import NotConnectedError
from waclient.transports import TransportError

from ..config import Settings
from ..deps import ClientDep, HostDep, SendLimited
from ..errors import ApiError, error_responses
from ..models import SentBody, send_request_model

__all__ = ["router"]


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["messages"])
    SendText = send_request_model(settings.max_text_length)

    @r.post(
        "/messages/text",
        response_model=SentBody,
        summary="Send a text message",
        description="Sends `text` to `to` (a phone number with country code, or a JID) and "
        "returns WhatsApp's message id. The sent message is recorded to Redis (stream "
        "`<session>:messages:out`) by the outbound recorder. Rate limited per API key "
        "and for the number as a whole, scheduled sends included (WACLIENT_SEND_RATE, "
        "WACLIENT_SEND_BURST). 503 when WhatsApp is not connected "
        "(`not_connected`) or memory is past the soft limit (`memory_shedding`).",
        responses=error_responses(400, 401, 413, 422, 429, 502, 503, 504),
    )
    async def send_text(
        host: HostDep,
        _key: SendLimited,
        client: ClientDep,
        body: SendText,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        data = body.model_dump()  # type: ignore[attr-defined]
        if host.guard.shedding:
            host.metrics.sends.labels("shed").inc()
            raise ApiError(
                503,
                "memory is past the soft limit: new sends are refused until it is back under",
                code="memory_shedding",
                headers={"Retry-After": "30"},
            )
        try:
            async with asyncio.timeout(settings.send_timeout):
                sent = await client.send_text(data["to"], data["text"])
        except NotConnectedError as exc:
            host.metrics.sends.labels("not_connected").inc()
            raise ApiError(
                503,
                f"WhatsApp is not connected ({client.state.value}); retry later",
                code="not_connected",
                headers={"Retry-After": "5"},
            ) from exc
        except TransportError as exc:
            if not client.connected:  # the connection dropped under the send
                host.metrics.sends.labels("not_connected").inc()
                raise ApiError(
                    503,
                    f"WhatsApp disconnected during the send ({exc}); retry later",
                    code="not_connected",
                    headers={"Retry-After": "5"},
                ) from exc
            host.metrics.sends.labels("failed").inc()
            raise ApiError(502, f"the send failed: {exc}", code="send_failed") from exc
        except TimeoutError as exc:
            host.metrics.sends.labels("failed").inc()
            raise ApiError(
                504, f"the send took longer than {settings.send_timeout:g} s", code="send_timeout"
            ) from exc
        host.metrics.sends.labels("sent").inc()
        return {"id": sent.id, "chat": sent.chat, "text": sent.text, "timestamp": sent.timestamp}

    return r
