"""Sending: ``POST /messages/text``, ``/messages/media``, ``/messages/reaction``,
``/messages/read`` and ``POST /presence``. Every one takes a token of the number's one send
budget and answers through :func:`~waclient.host.whatsapp_calls.on_whatsapp`.

No ``from __future__ import annotations`` here: the body's model is made per app (its length
limit comes from the settings) and FastAPI must see the class itself in the signature.
"""

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from waclient.client import Client
from waclient.transports import SentMessage

from ..config import Settings
from ..deps import ClientDep, HostDep, SendLimited
from ..errors import ApiError, error_responses
from ..models import (
    MESSAGE_ID_PATTERN,
    Chat,
    MessageKey,
    PresenceRequest,
    ReactionRequest,
    ReadRequest,
    SentBody,
    send_request_model,
    sent_body,
)
from ..whatsapp_calls import on_whatsapp

__all__ = ["MEDIA_AT_ONCE", "media_kind", "router"]

MEDIA_AT_ONCE = 2
"""Media uploads held at once (each up to WACLIENT_MAX_MEDIA_BYTES)."""
MAX_CAPTION = 1024
"""WhatsApp's own caption limit, in characters. In the query string even 4-byte characters
(12 bytes percent-encoded) keep the request line within the 16 KiB header limit."""
MAX_FILENAME = 128

SEND_ANSWERS = error_responses(400, 401, 413, 422, 429, 502, 503, 504)
"""The error statuses of every route that sends to WhatsApp."""

MediaKind = Literal["image", "video", "audio", "voice", "document", "sticker"]


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
        responses=SEND_ANSWERS,
    )
    async def send_text(
        host: HostDep,
        _key: SendLimited,
        client: ClientDep,
        body: SendText,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        to, text, quoted = body.to, body.text, body.quoted  # type: ignore[attr-defined]

        async def send() -> SentMessage:
            if quoted is not None:
                return await client.reply(quoted.ref(), text)
            return await client.send_text(to, text)

        return sent_body(await on_whatsapp(host, client, settings, send, send=True))

    @r.post(
        "/messages/media",
        response_model=SentBody,
        summary="Send an image, video, audio, voice note, document or sticker",
        description="The body is the file itself (no multipart); its `Content-Type` says what it "
        "is: image/* is sent as an image (image/webp with `kind=sticker` as a sticker), "
        "video/* as a video, audio/* as audio, anything else as a document. `kind` overrides "
        f"it. At most WACLIENT_MAX_MEDIA_BYTES ({settings.max_media_bytes} bytes here) and "
        f"{MEDIA_AT_ONCE} uploads at once (503 `busy` past that). `quoted_chat` and "
        "`quoted_id` reply to a message.",
        responses=SEND_ANSWERS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def send_media(
        request: Request,
        host: HostDep,
        _key: SendLimited,
        client: ClientDep,
        to: Annotated[Chat, Query()],
        caption: Annotated[str | None, Query(max_length=MAX_CAPTION)] = None,
        filename: Annotated[str | None, Query(min_length=1, max_length=MAX_FILENAME)] = None,
        kind: Annotated[MediaKind | None, Query()] = None,
        quoted_chat: Annotated[Chat | None, Query()] = None,
        quoted_id: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=MESSAGE_ID_PATTERN)
        ] = None,
    ) -> dict[str, Any]:
        data = await request.body()
        if not data:
            raise ApiError(422, "the body is empty: send the file's bytes", code="validation_error")
        content_type = request.headers.get("content-type", "application/octet-stream")
        chosen = kind or media_kind(content_type)
        quoted = (
            MessageKey(chat=quoted_chat, id=quoted_id).ref()
            if quoted_chat is not None and quoted_id is not None
            else None
        )

        async def send() -> SentMessage:
            return await send_media_kind(client, chosen, to, data, caption, filename, quoted)

        return sent_body(await on_whatsapp(host, client, settings, send, send=True))

    @r.post(
        "/messages/reaction",
        response_model=SentBody,
        summary="React to a message (an empty emoji removes the reaction)",
        responses=SEND_ANSWERS,
    )
    async def react(
        host: HostDep, _key: SendLimited, client: ClientDep, body: ReactionRequest
    ) -> dict[str, Any]:
        ref = body.message.ref()
        sent = await on_whatsapp(
            host, client, settings, lambda: client.react(ref, body.emoji), send=True
        )
        return sent_body(sent)

    @r.post(
        "/messages/read",
        status_code=204,
        summary="Mark a received message read (blue ticks)",
        responses=SEND_ANSWERS,
    )
    async def mark_read(
        host: HostDep, _key: SendLimited, client: ClientDep, body: ReadRequest
    ) -> Response:
        ref = body.message.ref()
        await on_whatsapp(host, client, settings, lambda: client.mark_read(ref), send=True)
        return Response(status_code=204)

    @r.post(
        "/presence",
        status_code=204,
        summary="Show typing/recording/paused in a chat, or the account available/unavailable",
        responses=SEND_ANSWERS,
    )
    async def presence(
        host: HostDep, _key: SendLimited, client: ClientDep, body: PresenceRequest
    ) -> Response:
        state, chat = body.state, body.chat
        if state == "available" or state == "unavailable":
            if chat is not None:
                raise ApiError(422, f"{state} is for the account: leave out `chat`")
            action = functools.partial(client.send_presence, state == "available")
        elif chat is None:
            raise ApiError(422, f"{state} is shown in a chat: give `chat`")
        else:
            action = functools.partial(client.send_chat_presence, chat, state)
        await on_whatsapp(host, client, settings, action, send=True)
        return Response(status_code=204)

    return r


def media_kind(content_type: str) -> MediaKind:
    """What a file of this ``Content-Type`` is sent as."""
    major = content_type.split(";", 1)[0].strip().lower().split("/", 1)[0]
    if major == "image":
        return "image"
    if major == "video":
        return "video"
    if major == "audio":
        return "audio"
    return "document"


async def send_media_kind(
    client: Client,
    kind: MediaKind,
    to: str,
    data: bytes,
    caption: str | None,
    filename: str | None,
    quoted: Any,
) -> SentMessage:
    if kind == "image":
        return await client.send_image(to, data, caption=caption, quoted=quoted)
    if kind == "video":
        return await client.send_video(to, data, caption=caption, quoted=quoted)
    if kind in ("audio", "voice"):
        return await client.send_audio(to, data, voice_note=kind == "voice", quoted=quoted)
    if kind == "sticker":
        return await client.send_sticker(to, data, quoted=quoted)
    return await client.send_document(
        to, data, filename=filename or "file", caption=caption, quoted=quoted
    )
