"""``/session``: the WhatsApp session's state, and pairing (QR code as text and PNG, pair code)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response

from waclient.client import ClientStats
from waclient.transports import Pairing, TransportError

from ..config import Settings
from ..deps import HostDep, KeyDep
from ..errors import ApiError, error_responses
from ..models import InboxBody, PairCodeBody, PairCodeRequest, QrBody, SessionBody

__all__ = ["router"]

PAIR_TIMEOUT = 30.0


def _latest_qr(host: Any) -> str | None:
    """The QR code waiting to be scanned; None once connected (the last one is stale then)."""
    if host.client is not None and host.client.connected:
        return None
    if not isinstance(host.transport, Pairing):
        return None
    qr = host.transport.latest_qr
    return qr if isinstance(qr, str) and qr else None


def _qr(host: Any) -> str:
    qr = _latest_qr(host)
    if qr is None:
        raise ApiError(
            404,
            "no QR code: the session is paired already, or WhatsApp has not sent one yet",
            code="no_qr",
        )
    return qr


def _pairer(host: Any) -> Callable[[str], Awaitable[str]] | None:
    return host.transport.pair_phone if isinstance(host.transport, Pairing) else None


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["session"])

    @r.get(
        "/session",
        response_model=SessionBody,
        summary="The WhatsApp session's state",
        description="The client's lifecycle state (idle, connecting, connected, reconnecting, "
        "backoff, logged_out, failed...), its counters, whether a QR code is waiting to be "
        "scanned, and the isolated worker's process figures.",
        responses=error_responses(401),
    )
    async def session(host: HostDep, _key: KeyDep) -> dict[str, Any]:
        stats = host.statistics()
        client = stats.client
        return {
            "state": client.state.value if client is not None else "stopped",
            "connected": bool(host.client is not None and host.client.connected),
            "transport": settings.transport,
            "qr_available": _latest_qr(host) is not None,
            "pair_code_supported": _pairer(host) is not None,
            "generation": client.generation if client is not None else 0,
            "attempts": client.attempts if client is not None else 0,
            "failures_in_a_row": client.failures_in_a_row if client is not None else 0,
            "last_error": client.last_error if client is not None else None,
            "worker": stats.worker.to_dict() if stats.worker is not None else None,
            "inbox": _inbox(client) if client is not None else None,
            "healing": stats.healing.to_dict() if stats.healing is not None else None,
        }

    @r.get(
        "/session/qr",
        response_model=QrBody,
        summary="The pairing QR code, as text",
        description="The latest QR code WhatsApp sent (it changes every ~20 s until scanned). "
        "404 when there is none, or once the session is connected.",
        responses=error_responses(401, 404),
    )
    async def qr_text(host: HostDep, _key: KeyDep) -> dict[str, str]:
        return {"qr": _qr(host)}

    @r.get(
        "/session/qr.png",
        summary="The pairing QR code, as a PNG image",
        description="Scan it with WhatsApp: Settings > Linked devices > Link a device.",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(401, 404),
        },
    )
    async def qr_png(host: HostDep, _key: KeyDep) -> Response:
        qr = _qr(host)

        def render() -> bytes:
            import segno

            buffer = io.BytesIO()
            segno.make(qr, error="l").save(buffer, kind="png", scale=8, border=4)
            return buffer.getvalue()

        png = await asyncio.to_thread(render)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @r.post(
        "/session/pair-code",
        response_model=PairCodeBody,
        summary="Pair with a phone number instead of a QR code",
        description="Asks WhatsApp for an 8-character code to type on the phone (Linked "
        "devices > Link with phone number instead). 409 when the transport cannot do it; 503 "
        "when no session is running.",
        responses=error_responses(400, 401, 409, 413, 422, 502, 503),
    )
    async def pair_code(host: HostDep, _key: KeyDep, body: PairCodeRequest) -> dict[str, str]:
        pair = _pairer(host)
        if pair is None:
            raise ApiError(
                409,
                f"the {settings.transport} transport cannot make pair codes; scan the QR code",
                code="pair_code_unsupported",
            )
        client = host.client
        if client is None or client.state.terminal:
            raise ApiError(503, "no session is running", code="not_running")
        try:
            async with asyncio.timeout(PAIR_TIMEOUT):
                code = await pair(body.phone)
        except TimeoutError as exc:
            raise ApiError(503, "WhatsApp did not answer in time", code="pair_timeout") from exc
        except TransportError as exc:
            raise ApiError(502, f"pairing failed: {exc}", code="pair_failed") from exc
        return {"code": code}

    return r


def _inbox(client: ClientStats) -> InboxBody:
    return InboxBody(
        events=client.inbox,
        bytes=client.inbox_bytes,
        disk_events=client.inbox_disk,
        disk_bytes=client.inbox_disk_bytes,
        overflowed=client.overflowed,
        producers_waiting=client.producers_waiting,
        producer_waits=client.producer_waits,
        dropped_at_close=client.dropped_at_close,
    )
