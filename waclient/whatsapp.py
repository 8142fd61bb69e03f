"""The typed WhatsApp surface of :class:`~waclient.client.Client`.

Each method is a call by name (:meth:`Client.call`) to a public neonize ``NewClient`` method,
so it works the same through every transport: in process, through the isolated worker, and
against the simulated Go side. Every send returns a :class:`~waclient.transports.SentMessage`
and dispatches it to handlers (the outbound recorder records media, replies and reactions too).

Messages to answer (``reply``, ``react``, ``edit``, ``revoke``, ``mark_read``, ``download``)
are a received ``MessageEv`` or a :class:`SentMessage` of ours.
"""

from __future__ import annotations

import waclient._neonize  # noqa: F401  (first: neonize's protobufs without its Go core)

# isort: split

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neonize.proto import Neonize_pb2 as pb
from neonize.proto.waCommon import WACommon_pb2 as common
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from waclient.messages import Chat, jid_to_str, to_jid
from waclient.transports.base import PayloadTooLarge, SentMessage
from waclient.transports.calls import NeonizeEnum

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ChatPresence", "Media", "MessageRef", "ParticipantAction", "WhatsApp"]

Media = str | os.PathLike[str] | bytes
"""A file path, or the bytes themselves."""
MessageRef = Any
"""A received ``MessageEv``, or a :class:`SentMessage` of ours."""
ChatPresence = Literal["typing", "paused", "recording"]
ParticipantAction = Literal["add", "remove", "promote", "demote"]

_CHAT_PRESENCE = {
    "typing": ("CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_MEDIA_TEXT"),
    "paused": ("CHAT_PRESENCE_PAUSED", "CHAT_PRESENCE_MEDIA_TEXT"),
    "recording": ("CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_MEDIA_AUDIO"),
}
_PARTICIPANT_ACTIONS = {"add": "ADD", "remove": "REMOVE", "promote": "PROMOTE", "demote": "DEMOTE"}


class WhatsApp:
    """The typed methods. :class:`~waclient.client.Client` provides :meth:`call`."""

    max_media_bytes: int
    """Media larger than this is refused before it is read or sent."""

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    # -- sending ------------------------------------------------------------------------------

    async def send_text(self, chat: Chat, text: str) -> SentMessage:
        """Send a text message."""
        result: SentMessage = await self.call("send_message", to_jid(chat), text)
        return result

    async def send_image(
        self,
        chat: Chat,
        file: Media,
        *,
        caption: str | None = None,
        quoted: MessageRef | None = None,
        view_once: bool = False,
    ) -> SentMessage:
        """Send an image from a path or bytes."""
        return await self._send_media(
            "send_image", chat, file, caption, quoted=_quoted(quoted), viewonce=view_once
        )

    async def send_video(
        self,
        chat: Chat,
        file: Media,
        *,
        caption: str | None = None,
        quoted: MessageRef | None = None,
        view_once: bool = False,
        gif: bool = False,
    ) -> SentMessage:
        """Send a video from a path or bytes (``gif=True``: played as a GIF)."""
        return await self._send_media(
            "send_video",
            chat,
            file,
            caption,
            quoted=_quoted(quoted),
            viewonce=view_once,
            gifplayback=gif,
        )

    async def send_audio(
        self, chat: Chat, file: Media, *, voice_note: bool = False, quoted: MessageRef | None = None
    ) -> SentMessage:
        """Send audio from a path or bytes (``voice_note=True``: a push-to-talk note)."""
        return await self._send_media(
            "send_audio", chat, file, ptt=voice_note, quoted=_quoted(quoted)
        )

    async def send_document(
        self,
        chat: Chat,
        file: Media,
        *,
        filename: str | None = None,
        caption: str | None = None,
        mimetype: str | None = None,
        quoted: MessageRef | None = None,
    ) -> SentMessage:
        """Send a document from a path or bytes."""
        if filename is None and not isinstance(file, bytes):
            filename = Path(file).name
        return await self._send_media(
            "send_document",
            chat,
            file,
            caption,
            filename=filename,
            mimetype=mimetype,
            quoted=_quoted(quoted),
        )

    async def send_sticker(
        self, chat: Chat, file: Media, *, quoted: MessageRef | None = None
    ) -> SentMessage:
        """Send a sticker (WebP, or an image neonize converts) from a path or bytes."""
        return await self._send_media("send_sticker", chat, file, quoted=_quoted(quoted))

    async def reply(self, message: MessageRef, text: str) -> SentMessage:
        """Reply to ``message`` in its chat, quoting it."""
        result: SentMessage = await self.call("reply_message", text, _quoted(message))
        return result

    async def react(self, message: MessageRef, emoji: str) -> SentMessage:
        """React to ``message`` with ``emoji``; an empty string removes the reaction."""
        chat, sender, message_id, from_me = _key(message)
        reaction = e2e.Message(
            reactionMessage=e2e.ReactionMessage(
                key=common.MessageKey(
                    remoteJID=jid_to_str(chat),
                    fromMe=from_me,
                    ID=message_id,
                    participant="" if from_me else jid_to_str(sender),
                ),
                text=emoji,
                senderTimestampMS=int(time.time() * 1000),
            )
        )
        result: SentMessage = await self.call("send_message", chat, reaction)
        return result

    async def edit(self, message: SentMessage, text: str) -> SentMessage:
        """Change the text of a message we sent."""
        chat, _, message_id, _ = _key(message)
        new = e2e.Message(conversation=text)
        result: SentMessage = await self.call("edit_message", chat, message_id, new)
        return result

    async def revoke(self, message: MessageRef) -> SentMessage:
        """Delete ``message`` for everyone (ours, or anyone's in a group we administer)."""
        chat, sender, message_id, _ = _key(message)
        result: SentMessage = await self.call("revoke_message", chat, sender, message_id)
        return result

    async def mark_read(self, message: MessageRef) -> None:
        """Send a read receipt (blue ticks) for a received message."""
        chat, sender, message_id, _ = _key(message)
        await self.call(
            "mark_read",
            message_id,
            chat=chat,
            sender=sender,
            receipt=NeonizeEnum("ReceiptType", "READ"),
        )

    async def send_chat_presence(self, chat: Chat, state: ChatPresence) -> None:
        """Show ``typing``, ``recording`` (a voice note) or ``paused`` in a chat."""
        if state not in _CHAT_PRESENCE:
            raise ValueError(f"chat presence is one of {sorted(_CHAT_PRESENCE)}, not {state!r}")
        presence, media = _CHAT_PRESENCE[state]
        await self.call(
            "send_chat_presence",
            to_jid(chat),
            NeonizeEnum("ChatPresence", presence),
            NeonizeEnum("ChatPresenceMedia", media),
        )

    async def send_presence(self, available: bool = True) -> None:
        """Show this account as online (available) or offline."""
        member = "AVAILABLE" if available else "UNAVAILABLE"
        await self.call("send_presence", NeonizeEnum("Presence", member))

    async def download(
        self, message: MessageRef, path: str | os.PathLike[str] | None = None
    ) -> Any:
        """The media of ``message``: its bytes, or with ``path`` written there (returns the
        path). Media larger than ``max_media_bytes`` must go to a path."""
        body = getattr(message, "Message", message)
        size = _media_size(body)
        if path is None:
            if size > self.max_media_bytes:
                raise PayloadTooLarge(
                    f"download_any: the media ({size / 2**20:.1f} MiB) is larger than "
                    f"max_media_bytes ({self.max_media_bytes / 2**20:.1f} MiB); pass a path"
                )
            data: bytes = await self.call("download_any", body)
            return data
        target = Path(path)
        await self.call("download_any", body, str(target))
        return target

    # -- contacts -----------------------------------------------------------------------------

    async def is_on_whatsapp(self, *phones: str) -> list[Any]:
        """``IsOnWhatsAppResponse`` per phone number: ``IsIn``, the ``JID`` to write to."""
        return list(await self.call("is_on_whatsapp", *phones))

    async def user_info(self, *users: Chat) -> list[Any]:
        """``GetUserInfoSingleReturnFunction`` per user: status, picture id, devices."""
        return list(await self.call("get_user_info", *(to_jid(u) for u in users)))

    async def profile_picture(self, chat: Chat) -> Any:
        """``ProfilePictureInfo`` of a user or group (its URL)."""
        return await self.call("get_profile_picture", to_jid(chat))

    async def me(self) -> Any:
        """This account's ``Device``: its JID and push name."""
        return await self.call("get_me")

    # -- groups -------------------------------------------------------------------------------

    async def create_group(self, name: str, participants: Sequence[Chat] = ()) -> Any:
        """Create a group; its ``GroupInfo``."""
        return await self.call("create_group", name, [to_jid(p) for p in participants])

    async def group_info(self, group: Chat) -> Any:
        """A group's ``GroupInfo``: name, topic, participants."""
        return await self.call("get_group_info", to_jid(group))

    async def joined_groups(self) -> list[Any]:
        """``GroupInfo`` of every group this account is in."""
        return list(await self.call("get_joined_groups"))

    async def update_participants(
        self, group: Chat, participants: Sequence[Chat], action: ParticipantAction
    ) -> list[Any]:
        """Add, remove, promote or demote participants; ``GroupParticipant`` per person."""
        if action not in _PARTICIPANT_ACTIONS:
            raise ValueError(f"action is one of {sorted(_PARTICIPANT_ACTIONS)}, not {action!r}")
        change = NeonizeEnum("ParticipantChange", _PARTICIPANT_ACTIONS[action])
        people = [to_jid(p) for p in participants]
        return list(await self.call("update_group_participants", to_jid(group), people, change))

    async def leave_group(self, group: Chat) -> None:
        await self.call("leave_group", to_jid(group))

    async def group_invite_link(self, group: Chat, *, reset: bool = False) -> str:
        """The group's invite link (``reset=True``: revoke the old one first)."""
        return str(await self.call("get_group_invite_link", to_jid(group), reset))

    async def set_group_name(self, group: Chat, name: str) -> None:
        await self.call("set_group_name", to_jid(group), name)

    async def set_group_topic(self, group: Chat, topic: str) -> None:
        await self.call("set_group_topic", to_jid(group), "", "", topic)

    # -- the account --------------------------------------------------------------------------

    async def pair_phone(self, phone: str) -> str:
        """The code that links this session to ``phone``'s account without a QR code: type it
        on the phone (WhatsApp > Linked devices > Link with phone number instead). The session
        must be running and not yet paired; QR codes arrive as ``QREv`` events
        (:mod:`waclient.pairing`)."""
        return str(await self.call("PairPhone", to_jid(phone).User, True))

    async def logout(self) -> None:
        """Unlink this device from the account; the session must be paired again."""
        await self.call("logout")

    # -- helpers ------------------------------------------------------------------------------

    async def _send_media(
        self, method: str, chat: Chat, file: Media, *args: Any, **kwargs: Any
    ) -> SentMessage:
        result: SentMessage = await self.call(
            method, to_jid(chat), self._media_argument(method, file), *args, **kwargs
        )
        return result

    def _media_argument(self, method: str, file: Media) -> str | bytes:
        """Bytes as they are, a path as an absolute path string; sizes checked first."""
        if isinstance(file, bytes):
            size = len(file)
            value: str | bytes = file
        else:
            path = Path(file).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"{method}: no file at {path}")
            size, value = path.stat().st_size, str(path)
        if size > self.max_media_bytes:
            raise PayloadTooLarge(
                f"{method}: the media ({size / 2**20:.1f} MiB) is larger than max_media_bytes "
                f"({self.max_media_bytes / 2**20:.1f} MiB); nothing was sent"
            )
        return value


def _key(message: MessageRef) -> tuple[Any, Any, str, bool]:
    """(chat JID, sender JID, message id, sent by us) of a received or sent message."""
    if isinstance(message, SentMessage):
        chat = to_jid(message.chat)
        return chat, pb.JID(IsEmpty=True), message.id, True
    info = message.Info
    source = info.MessageSource
    return source.Chat, source.Sender, str(info.ID), bool(source.IsFromMe)


def _quoted(message: MessageRef | None) -> Any:
    """The ``Message`` event neonize quotes: a received one as it is; one of ours rebuilt."""
    if message is None or not isinstance(message, SentMessage):
        return message
    chat = to_jid(message.chat)
    source = pb.MessageSource(Chat=chat, Sender=chat, IsFromMe=True, IsGroup=False)
    info = pb.MessageInfo(MessageSource=source, ID=message.id, Timestamp=message.timestamp)
    return pb.Message(Info=info, Message=e2e.Message(conversation=message.text))


def _media_size(body: Any) -> int:
    for field in ("imageMessage", "videoMessage", "audioMessage", "documentMessage"):
        if body.HasField(field):
            return int(getattr(body, field).fileLength)
    if body.HasField("stickerMessage"):
        return int(body.stickerMessage.fileLength)
    raise ValueError("the message has no media to download")
