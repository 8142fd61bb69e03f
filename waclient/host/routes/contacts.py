"""``GET /contacts/{phone}``: whether a number is on WhatsApp, and what it shows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from waclient.messages import jid_to_str

from ..config import Settings
from ..deps import ClientDep, HostDep, KeyDep
from ..errors import error_responses
from ..models import PHONE_PATTERN, ContactBody, normalize_phone
from ..whatsapp_calls import on_whatsapp

__all__ = ["router"]


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["contacts"])

    @r.get(
        "/contacts/{phone}",
        response_model=ContactBody,
        summary="Is this number on WhatsApp? Its JID, status and picture id",
        responses=error_responses(401, 422, 502, 503, 504),
    )
    async def contact(
        host: HostDep,
        _key: KeyDep,
        client: ClientDep,
        phone: Annotated[str, Path(pattern=PHONE_PATTERN, description="With country code.")],
    ) -> dict[str, Any]:
        digits = normalize_phone(phone)
        found = await on_whatsapp(host, client, settings, lambda: client.is_on_whatsapp(digits))
        answer = found[0] if found else None
        if answer is None or not answer.IsIn:
            return {"phone": digits, "on_whatsapp": False, "jid": None}
        jid = jid_to_str(answer.JID)
        info = await on_whatsapp(host, client, settings, lambda: client.user_info(jid))
        user = info[0].UserInfo if info else None
        return {
            "phone": digits,
            "on_whatsapp": True,
            "jid": jid,
            "status": user.Status if user is not None else None,
            "picture_id": user.PictureID if user is not None else None,
        }

    return r
