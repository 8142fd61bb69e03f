"""Small helpers over neonize's message protobufs: JIDs from strings, and what a message is.

Nothing here loads neonize's Go core: only its protobuf types.
"""

from __future__ import annotations

import waclient._neonize  # noqa: F401  (first: neonize's protobufs without its Go core)

# isort: split

from typing import Any

from neonize.proto import Neonize_pb2 as pb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

__all__ = [
    "Chat",
    "jid_to_str",
    "message_kind",
    "message_ref",
    "message_text",
    "to_jid",
    "unwrap",
]

Chat = Any
"""A chat or user: a phone number (``"+1 555 000 0001"``), ``"user@server"``, or a JID proto."""

_KINDS = (
    ("conversation", "text"),
    ("extendedTextMessage", "text"),
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
    ("reactionMessage", "reaction"),
    ("protocolMessage", "protocol"),
    ("contactMessage", "contact"),
    ("locationMessage", "location"),
    ("pollCreationMessage", "poll"),
)


def to_jid(chat: Chat) -> Any:
    """A neonize ``JID`` for a phone number, ``user@server`` or a JID (returned as it is)."""
    if not isinstance(chat, str):
        if getattr(chat, "DESCRIPTOR", None) is not pb.JID.DESCRIPTOR:
            raise TypeError(f"a chat is a phone number, 'user@server' or a JID, not {chat!r}")
        return chat
    user, at, server = chat.strip().partition("@")
    if not at:
        user, server = "".join(c for c in user if c.isdigit()), "s.whatsapp.net"
    if not user and not server:
        raise ValueError(f"{chat!r} is not a phone number or JID")
    return pb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def message_ref(
    chat: Chat,
    message_id: str,
    *,
    sender: Chat | None = None,
    from_me: bool = False,
    text: str = "",
) -> Any:
    """A ``Message`` event that names a message known only by its chat and id (a record, a
    webhook): enough to reply to, react to, mark read or revoke it."""
    chat_jid = to_jid(chat)
    source = pb.MessageSource(
        Chat=chat_jid,
        Sender=to_jid(sender) if sender is not None else chat_jid,
        IsFromMe=from_me,
        IsGroup=chat_jid.Server == "g.us",
    )
    info = pb.MessageInfo(MessageSource=source, ID=message_id)
    return pb.Message(Info=info, Message=e2e.Message(conversation=text))


def jid_to_str(jid: Any) -> str:
    """``user@server`` for a neonize JID proto (``server`` alone when there is no user)."""
    user, server = str(jid.User), str(jid.Server)
    if user and server:
        return f"{user}@{server}"
    return user or server


def message_kind(message: Any) -> str:
    """``text``, ``image``, ``video``, ``audio``, ``document``, ``sticker``, ``reaction``,
    ``edit``, ``revoke``, ... for a ``waE2E.Message`` (``other`` for the rest). Wrappers
    (ephemeral, view-once, document with caption, sent from another device) are looked
    through: a view-once image is an ``image``."""
    message = unwrap(message)
    for field, kind in _KINDS:
        if field == "conversation":
            if message.conversation:
                return kind
        elif message.HasField(field):
            if field == "protocolMessage":
                return _PROTOCOL_KINDS.get(message.protocolMessage.type, kind)
            return kind
    return "other"


def message_text(message: Any) -> str:
    """The text a person reads: the body of a text, the caption of media, a reaction's emoji,
    an edit's new text; through the same wrappers as :func:`message_kind`."""
    message = unwrap(message)
    if message.conversation:
        return str(message.conversation)
    if message.HasField("extendedTextMessage"):
        return str(message.extendedTextMessage.text)
    for field in ("imageMessage", "videoMessage", "documentMessage"):
        if message.HasField(field):
            return str(getattr(message, field).caption)
    if message.HasField("reactionMessage"):
        return str(message.reactionMessage.text)
    if message.HasField("protocolMessage") and message.protocolMessage.HasField("editedMessage"):
        return message_text(message.protocolMessage.editedMessage)
    return ""


def unwrap(message: Any) -> Any:
    """The message inside its wrappers: ephemeral, view-once (all three), document with
    caption, edited (the protocol message that carries the edit), sent from another device."""
    for _ in range(_MAX_WRAPPERS):
        for field in _WRAPPERS:
            if message.HasField(field):
                message = getattr(message, field).message
                break
        else:
            return message
    return message


_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "editedMessage",
    "deviceSentMessage",
)
"""Fields of ``waE2E.Message`` that hold another message in their ``message`` field."""
_MAX_WRAPPERS = 8
"""Wrappers nest (an ephemeral view-once image); a message is never this deep."""
_PROTOCOL_KINDS = {
    e2e.ProtocolMessage.MESSAGE_EDIT: "edit",
    e2e.ProtocolMessage.REVOKE: "revoke",
}
