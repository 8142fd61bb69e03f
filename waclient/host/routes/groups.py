"""Groups: ``POST /groups``, ``GET /groups`` (paginated), ``GET /groups/{jid}``,
``POST /groups/{jid}/participants``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from waclient.messages import jid_to_str

from ..config import Settings
from ..deps import ClientDep, HostDep, KeyDep, SendLimited
from ..errors import error_responses
from ..models import (
    GroupBody,
    GroupCreateRequest,
    GroupsPage,
    ParticipantBody,
    ParticipantsRequest,
)
from ..pagination import PageDep, bounded_page
from ..whatsapp_calls import on_whatsapp
from .messages import SEND_ANSWERS

__all__ = ["GROUP_JID_PATTERN", "group_body", "router"]

GROUP_JID_PATTERN = r"^[0-9]{5,20}(-[0-9]{5,20})?@g\.us$"
GroupJid = Annotated[str, Path(pattern=GROUP_JID_PATTERN, description="The group's JID (…@g.us).")]


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["groups"])

    @r.post(
        "/groups",
        response_model=GroupBody,
        status_code=201,
        summary="Create a group",
        responses=SEND_ANSWERS,
    )
    async def create(
        host: HostDep, _key: SendLimited, client: ClientDep, body: GroupCreateRequest
    ) -> dict[str, Any]:
        info = await on_whatsapp(
            host, client, settings, lambda: client.create_group(body.name, body.participants)
        )
        return group_body(info)

    @r.get(
        "/groups",
        response_model=GroupsPage,
        summary="The groups this account is in, a page at a time",
        responses=error_responses(401, 422, 502, 503, 504),
    )
    async def joined(
        host: HostDep, _key: KeyDep, client: ClientDep, page: PageDep
    ) -> dict[str, Any]:
        groups = await on_whatsapp(host, client, settings, client.joined_groups)
        rows = sorted((jid_to_str(g.JID), g) for g in groups)
        after = page.after[0] if page.after else ""
        window = [((jid,), group_body(g)) for jid, g in rows if jid > after][: page.limit + 1]
        kept = window[: page.limit]
        more = len(window) > page.limit
        items, next_cursor = bounded_page(kept, kept[-1][0] if more else None)
        return {"items": items, "next_cursor": next_cursor}

    @r.get(
        "/groups/{jid}",
        response_model=GroupBody,
        summary="A group: name, topic, participants",
        responses=error_responses(401, 422, 502, 503, 504),
    )
    async def info(host: HostDep, _key: KeyDep, client: ClientDep, jid: GroupJid) -> dict[str, Any]:
        return group_body(await on_whatsapp(host, client, settings, lambda: client.group_info(jid)))

    @r.post(
        "/groups/{jid}/participants",
        response_model=list[ParticipantBody],
        summary="Add, remove, promote or demote participants",
        responses=SEND_ANSWERS,
    )
    async def participants(
        host: HostDep,
        _key: SendLimited,
        client: ClientDep,
        jid: GroupJid,
        body: ParticipantsRequest,
    ) -> list[dict[str, Any]]:
        changed = await on_whatsapp(
            host,
            client,
            settings,
            lambda: client.update_participants(jid, body.participants, body.action),
        )
        return [_participant(p) for p in changed]

    return r


def group_body(info: Any) -> dict[str, Any]:
    """A neonize ``GroupInfo`` as :class:`GroupBody`."""
    return {
        "jid": jid_to_str(info.JID),
        "name": info.GroupName.Name,
        "topic": info.GroupTopic.Topic,
        "owner": jid_to_str(info.OwnerJID),
        "created": int(info.GroupCreated),
        "participants": [_participant(p) for p in info.Participants],
    }


def _participant(p: Any) -> dict[str, Any]:
    return {
        "jid": jid_to_str(p.JID),
        "admin": bool(p.IsAdmin),
        "super_admin": bool(p.IsSuperAdmin),
        "error": int(p.Error),
    }
