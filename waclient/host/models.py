"""Request and response bodies, and the validation of chats and phone numbers."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    create_model,
)

__all__ = [
    "CHAT_PATTERN",
    "PHONE_PATTERN",
    "ErrorBody",
    "normalize_chat",
    "normalize_phone",
]

PHONE_PATTERN = r"^\+?[0-9]{6,15}$"
"""A phone number: country code and number, digits only, an optional leading ``+``."""
_JID_PATTERN = (
    r"[0-9]{5,20}@s\.whatsapp\.net|[0-9]{5,20}@lid|[0-9]{5,20}(-[0-9]{5,20})?@g\.us"
    r"|[0-9]{5,25}@newsletter"
)
CHAT_PATTERN = rf"^(\+?[0-9]{{6,15}}|{_JID_PATTERN})$"
"""A phone number or a JID (user, lid, group or newsletter)."""
TEXT_PATTERN = r"\S"
"""At least one character that is not white space."""

_PHONE = re.compile(PHONE_PATTERN)
_CHAT = re.compile(CHAT_PATTERN)


def normalize_phone(value: str) -> str:
    """Digits of a phone number (country code first); ``ValueError`` with a message if not one."""
    if not isinstance(value, str) or not _PHONE.fullmatch(value):
        raise ValueError(
            "not a phone number: give the country code and number as digits, optionally with a "
            "leading +, 6 to 15 digits (e.g. +15551234567)"
        )
    return value.removeprefix("+")


def normalize_chat(value: str) -> str:
    """A JID for a phone number or a JID; ``ValueError`` with a message for anything else.

    A phone number becomes ``<digits>@s.whatsapp.net``, so records of sent and received
    messages name a chat the same way.
    """
    if not isinstance(value, str) or not _CHAT.fullmatch(value):
        raise ValueError(
            "not a phone number or a WhatsApp JID: use digits with the country code (+15551234567)"
            " or a JID such as 15551234567@s.whatsapp.net or 1203630xxxxx@g.us"
        )
    if "@" in value:
        return value
    return f"{value.removeprefix('+')}@s.whatsapp.net"


def _check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be empty or only white space")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from None
    return value


Chat = Annotated[
    str,
    AfterValidator(normalize_chat),
    Field(
        description="A phone number with its country code (digits, optional +) or a JID.",
        examples=["+15551234567", "15551234567@s.whatsapp.net"],
        json_schema_extra={"pattern": CHAT_PATTERN},
    ),
]
Phone = Annotated[
    str,
    AfterValidator(normalize_phone),
    Field(
        description="The phone number of the account to pair, with its country code.",
        examples=["+15551234567"],
        json_schema_extra={"pattern": PHONE_PATTERN},
    ),
]


def text_type(max_length: int) -> Any:
    """The text field's type for a host whose limit is ``max_length`` characters."""
    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=max_length,
            description=f"The message text: 1 to {max_length} characters, not only white space.",
            json_schema_extra={"pattern": TEXT_PATTERN},
        ),
        AfterValidator(_check_text),
    ]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response has this body."""

    error: str = Field(description="A stable code, e.g. unauthorized, validation_error.")
    message: str = Field(description="What went wrong, for a human.")
    error_id: str | None = Field(
        default=None, description="For 500s: quote it to find the logged traceback."
    )
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For 422s: each invalid field (loc, msg, type)."
    )


class SentBody(BaseModel):
    id: str = Field(description="WhatsApp's message id.")
    chat: str
    text: str = Field(description="The text, or the caption of media, or a reaction's emoji.")
    timestamp: int = Field(description="Server timestamp, seconds since the epoch.")
    kind: str = Field(
        default="text", description="text, image, video, audio, document, sticker, reaction..."
    )


def sent_body(sent: Any) -> dict[str, Any]:
    """The answer to a send: a :class:`~waclient.transports.SentMessage` as :class:`SentBody`."""
    return {
        "id": sent.id,
        "chat": sent.chat,
        "text": sent.text,
        "timestamp": sent.timestamp,
        "kind": sent.kind,
    }


MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class MessageKey(_Strict):
    """A message by its chat and id (as in a recorded message or a webhook)."""

    chat: Chat
    id: str = Field(
        description="The message id.",
        examples=["3EB0C431C26A1916A3F5"],
        json_schema_extra={"pattern": MESSAGE_ID_PATTERN},
        min_length=1,
        max_length=128,
        pattern=MESSAGE_ID_PATTERN,
    )
    sender: Chat | None = Field(
        default=None, description="Who wrote it, in a group; the chat itself by default."
    )
    from_me: StrictBool = Field(default=False, description="Whether this account wrote it.")

    def ref(self) -> Any:
        """The message as the client's methods take it."""
        from waclient.messages import message_ref

        return message_ref(self.chat, self.id, sender=self.sender, from_me=self.from_me)


def send_request_model(max_length: int) -> type[BaseModel]:
    """The body of ``POST /messages/text``."""
    model: type[BaseModel] = create_model(
        "SendText",
        __base__=_Strict,
        to=(Chat, Field(...)),
        text=(text_type(max_length), Field(...)),
        quoted=(
            MessageKey | None,
            Field(default=None, description="Reply to this message, quoting it."),
        ),
    )
    return model


class ReactionRequest(_Strict):
    message: MessageKey
    emoji: str = Field(
        max_length=16, description="One emoji; an empty string removes our reaction."
    )


class ReadRequest(_Strict):
    message: MessageKey


PresenceState = Literal["typing", "paused", "recording", "available", "unavailable"]


class PresenceRequest(_Strict):
    state: PresenceState = Field(
        description="typing, paused or recording in `chat`; available or unavailable for the "
        "account (no chat)."
    )
    chat: Chat | None = None


class ContactBody(BaseModel):
    phone: str
    on_whatsapp: bool
    jid: str | None = Field(description="The JID to write to; null when not on WhatsApp.")
    status: str | None = None
    picture_id: str | None = None


class ParticipantBody(BaseModel):
    jid: str
    admin: bool = False
    super_admin: bool = False
    error: int = Field(default=0, description="For changes: WhatsApp's error code, 0 is done.")


class GroupBody(BaseModel):
    jid: str
    name: str
    topic: str
    owner: str
    created: int = Field(description="Seconds since the epoch.")
    participants: list[ParticipantBody]


class GroupsPage(BaseModel):
    items: list[GroupBody]
    next_cursor: str | None


MAX_PARTICIPANTS = 256


class GroupCreateRequest(_Strict):
    name: Annotated[
        str,
        Field(min_length=1, max_length=100, json_schema_extra={"pattern": TEXT_PATTERN}),
        AfterValidator(_check_text),
    ]
    participants: list[Chat] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)


class ParticipantsRequest(_Strict):
    participants: list[Chat] = Field(min_length=1, max_length=MAX_PARTICIPANTS)
    action: Literal["add", "remove", "promote", "demote"]


def _schedule_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        has_cron, has_at = "cron" in value, "at" in value
        if has_cron != has_at:
            return "cron" if has_cron else "once"
        return None
    return getattr(value, "kind", None)


def schedule_request_model(max_length: int) -> Any:
    """The body of ``POST /scheduled``: a cron job or a one-shot job (exactly one of ``cron``
    and ``at``), as a tagged union so that the OpenAPI schema says so too (``oneOf``)."""
    text = text_type(max_length)
    cron_model: type[BaseModel] = create_model(
        "ScheduleCron",
        __base__=_Strict,
        __doc__="Send each time the cron expression fires.",
        to=(Chat, Field(...)),
        text=(text, Field(...)),
        cron=(
            str,
            Field(
                min_length=1,
                max_length=200,
                description="A 5-field cron expression (minute hour day month weekday) or an "
                "alias such as @hourly, read in tz.",
                examples=["0 9 * * 1-5"],
            ),
        ),
        tz=(
            str,
            Field(
                default="UTC",
                min_length=1,
                max_length=64,
                description="The IANA time zone the cron expression is read in.",
                examples=["Europe/Lisbon"],
            ),
        ),
    )
    once_model: type[BaseModel] = create_model(
        "ScheduleOnce",
        __base__=_Strict,
        __doc__="Send once, at a future date and time.",
        to=(Chat, Field(...)),
        text=(text, Field(...)),
        at=(
            datetime,
            Field(
                description="When: an ISO 8601 date-time with its offset, in the future.",
                examples=["2030-01-01T09:00:00+00:00"],
            ),
        ),
    )
    return Annotated[
        Annotated[cron_model, Tag("cron")] | Annotated[once_model, Tag("once")],
        Discriminator(
            _schedule_kind,
            custom_error_type="schedule_kind",
            custom_error_message="give exactly one of `cron` (repeating) and `at` (once)",
        ),
    ]


class PairCodeRequest(_Strict):
    phone: Phone


class PairCodeBody(BaseModel):
    code: str = Field(description="Type this code on the phone: Linked devices > Link with phone.")


class QrBody(BaseModel):
    qr: str = Field(description="The QR code's text; render it, or fetch /session/qr.png.")


class JobBody(BaseModel):
    id: str
    chat: str
    text: str
    kind: Literal["cron", "once"]
    cron: str | None
    tz: str
    next_run: datetime
    created_at: datetime
    runs: int
    last_run: datetime | None
    failures: int
    claimed: bool


class JobList(BaseModel):
    count: int = Field(description="Jobs on this page.")
    jobs: list[JobBody]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null when this is the last."
    )


class Liveness(BaseModel):
    status: Literal["ok", "failed"]
    reason: str | None = None
    """Why the host gave up (self-healing exhausted its restarts); only with "failed"."""


class Readiness(BaseModel):
    ready: bool
    whatsapp: dict[str, Any]
    redis: dict[str, Any]


class InboxBody(BaseModel):
    """The client's inbox: events waiting in memory and on disk, and its flow control."""

    events: int
    bytes: int
    disk_events: int
    disk_bytes: int
    overflowed: int
    """Events ever written to disk (a burst larger than the memory inbox)."""
    producers_waiting: int
    """Go threads waiting now for room (memory and the disk budget full)."""
    producer_waits: int
    dropped_at_close: int


class SessionBody(BaseModel):
    state: str
    connected: bool
    transport: str
    qr_available: bool
    pair_code_supported: bool
    generation: int
    attempts: int
    failures_in_a_row: int
    last_error: str | None
    worker: dict[str, Any] | None
    inbox: InboxBody | None = None
    healing: dict[str, Any] | None = None
    """Self-healing: restarts in the last hour, the next restart time, gave_up, advice."""


class MemoryBody(BaseModel):
    snapshot: dict[str, Any]
    guard: dict[str, Any]
    listeners: dict[str, int]
    worker: dict[str, Any] | None


class RedisBody(BaseModel):
    configured: bool
    up: bool | None
    probe: dict[str, Any] | None
    recorders: dict[str, dict[str, Any]]
    scheduler: dict[str, Any] | None
    events: dict[str, dict[str, Any]]
    """The event streams' writers ("state", "receipts"): published, dropped, backlog."""
