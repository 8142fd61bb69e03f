"""Calls by name: which neonize ``NewClient`` methods a transport may call, and how their
arguments and results cross to the Go side.

Every transport, in process or through the worker, validates a call the same way before it
sends anything: the name must be a public ``NewClient`` method that is not a lifecycle method
(the client's supervisor is the only driver of connect/stop), and every argument must be one
of the kinds that cross a process boundary:

- ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``datetime.timedelta``;
- a protobuf message of neonize's types (it crosses as its full type name and its serialized
  bytes and is decoded with neonize's own types on the other side);
- a neonize enum member (``neonize.utils.enum``), or a :class:`NeonizeEnum` naming one, for
  code that does not import neonize;
- lists and tuples of those.

:func:`encode` turns a call into a tree of plain values (the wire form); :func:`decode` turns it
back. Results travel the same way.
"""

from __future__ import annotations

import datetime
import enum
import functools
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message as ProtoMessage

from waclient.transports.base import CallError

__all__ = [
    "LIFECYCLE_METHODS",
    "PUBLIC_METHODS",
    "CallError",
    "NeonizeEnum",
    "check_method",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
    "payload_size",
]

PUBLIC_METHODS: Final[frozenset[str]] = frozenset(
    {
        "PairPhone",
        "build_album_content",
        "build_audio_message",
        "build_document_message",
        "build_image_message",
        "build_poll_vote",
        "build_poll_vote_creation",
        "build_reaction",
        "build_reply_message",
        "build_revoke",
        "build_sticker_message",
        "build_stickerpack_message",
        "build_video_message",
        "connect",
        "connect_with_proxy",
        "create_group",
        "create_newsletter",
        "decrypt_poll_vote",
        "disconnect",
        "download_any",
        "download_media_with_path",
        "edit_message",
        "follow_newsletter",
        "generate_message_id",
        "get_blocklist",
        "get_contact_qr_link",
        "get_group_info",
        "get_group_info_from_invite",
        "get_group_info_from_link",
        "get_group_invite_link",
        "get_group_request_participants",
        "get_joined_groups",
        "get_lid_from_pn",
        "get_linked_group_participants",
        "get_me",
        "get_message_for_retry",
        "get_newsletter_info",
        "get_newsletter_info_with_invite",
        "get_newsletter_message_update",
        "get_newsletter_messages",
        "get_pn_from_lid",
        "get_privacy_settings",
        "get_profile_picture",
        "get_status_privacy",
        "get_sub_groups",
        "get_subscribed_newletters",
        "get_user_devices",
        "get_user_info",
        "is_on_whatsapp",
        "join_group_with_invite",
        "join_group_with_link",
        "leave_group",
        "link_group",
        "logout",
        "mark_read",
        "newsletter_mark_viewed",
        "newsletter_send_reaction",
        "newsletter_subscribe_live_updates",
        "newsletter_toggle_mute",
        "pin_message",
        "reject_call",
        "reply_message",
        "resolve_business_message_link",
        "resolve_contact_qr_link",
        "revoke_message",
        "send_album",
        "send_app_state",
        "send_audio",
        "send_chat_presence",
        "send_contact",
        "send_document",
        "send_fb_message",
        "send_image",
        "send_interactive_message",
        "send_message",
        "send_presence",
        "send_sticker",
        "send_stickerpack",
        "send_video",
        "set_default_disappearing_timer",
        "set_disappearing_timer",
        "set_force_activate_delivery_receipts",
        "set_group_announce",
        "set_group_locked",
        "set_group_name",
        "set_group_photo",
        "set_group_topic",
        "set_passive",
        "set_privacy_setting",
        "set_profile_name",
        "set_profile_photo",
        "set_proxy_address",
        "set_status_message",
        "stop",
        "subscribe_presence",
        "unfollow_newsletter",
        "unlink_group",
        "update_blocklist",
        "update_group_participants",
        "upload",
        "upload_newsletter",
    }
)
"""Every public method of neonize 0.5.2's ``NewClient`` (a test checks this against neonize)."""

LIFECYCLE_METHODS: Final[frozenset[str]] = frozenset(
    {"connect", "connect_with_proxy", "disconnect", "stop", "set_proxy_address"}
)
"""Methods that drive the session: only the client's supervisor (and the transport's own
``proxy`` setting) may, so :func:`check_method` refuses them with a pointer to the right API."""

_LIFECYCLE_HINT: Final = (
    "the session is driven by Client (start/close) and the transport's proxy setting"
)


@dataclass(frozen=True, slots=True)
class NeonizeEnum:
    """A member of an enum of ``neonize.utils.enum`` by name, e.g.
    ``NeonizeEnum("ChatPresence", "CHAT_PRESENCE_COMPOSING")``: lets code that must not load
    neonize's Go core (the isolated parent) pass one."""

    type: str
    member: str


def check_method(method: str) -> None:
    """Raise :class:`CallError` unless ``method`` may be called through a transport."""
    if not isinstance(method, str) or method not in PUBLIC_METHODS:
        raise CallError(f"{method!r} is not a public method of neonize's NewClient")
    if method in LIFECYCLE_METHODS:
        raise CallError(f"{method}: not callable through a transport; {_LIFECYCLE_HINT}")


def encode(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The wire form of a call; :class:`CallError` names the method and the bad argument."""
    check_method(method)
    try:
        wire_args = [encode_value(a) for a in args]
        wire_kwargs = {_keyword(k): encode_value(v) for k, v in kwargs.items()}
    except CallError as exc:
        raise CallError(f"{method}: {exc}") from None
    return (method, wire_args, wire_kwargs)


def decode(wire: tuple[Any, ...]) -> tuple[str, list[Any], dict[str, Any]]:
    """A call back from its wire form, with neonize's own protobuf and enum types."""
    method, wire_args, wire_kwargs = wire
    check_method(method)
    return (
        method,
        [decode_value(a) for a in wire_args],
        {k: decode_value(v) for k, v in wire_kwargs.items()},
    )


def encode_value(value: Any) -> Any:
    """One value in wire form: plain values as they are, tagged tuples for the rest."""
    if value is None or isinstance(value, bool | int | float | str | bytes | datetime.timedelta):
        return value
    if isinstance(value, ProtoMessage):
        return ("pb", value.DESCRIPTOR.full_name, value.SerializePartialToString())
    if isinstance(value, NeonizeEnum):
        return ("enum", value.type, value.member)
    if isinstance(value, enum.Enum) and type(value).__module__ == "neonize.utils.enum":
        return ("enum", type(value).__name__, value.name)
    if isinstance(value, list | tuple) or _is_repeated(value):
        return ("list", [encode_value(v) for v in value])
    raise CallError(f"an argument of type {type(value).__name__} cannot cross to the Go side")


def decode_value(wire: Any) -> Any:
    """The value of a wire form, with neonize's own protobuf and enum types."""
    if not isinstance(wire, tuple):
        return wire
    tag = wire[0]
    if tag == "pb":
        return _proto_class(wire[1]).FromString(wire[2])
    if tag == "list":
        return [decode_value(v) for v in wire[1]]
    if tag == "enum":
        from neonize.utils import enum as neonize_enum

        try:
            return getattr(neonize_enum, wire[1])[wire[2]]
        except (AttributeError, KeyError):
            raise CallError(f"{wire[1]}.{wire[2]} is not a neonize enum member") from None
    raise CallError(f"unknown wire tag {tag!r}")


def payload_size(wire: Any) -> int:
    """The bytes of payload (``bytes`` and serialized messages) in a wire form."""
    if isinstance(wire, bytes | str):
        return len(wire)
    if isinstance(wire, tuple | list):
        return sum(payload_size(v) for v in wire)
    if isinstance(wire, dict):
        return sum(payload_size(v) for v in wire.values())
    return 0


# -- helpers --------------------------------------------------------------------------------


def _keyword(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise CallError(f"{name!r} is not a keyword argument name")
    return name


def _is_repeated(value: Any) -> bool:
    """A protobuf repeated field container (what neonize returns for lists)."""
    return type(value).__name__ in ("RepeatedCompositeContainer", "RepeatedScalarContainer")


@functools.lru_cache(maxsize=512)
def _proto_class(full_name: str) -> type[ProtoMessage]:
    _load_neonize_protos()
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        raise CallError(f"{full_name} is not a known protobuf message type") from None
    cls: type[ProtoMessage] = message_factory.GetMessageClass(descriptor)
    return cls


def _load_neonize_protos() -> None:
    """Registers every neonize message type with the default symbol database."""
    from waclient import events  # noqa: F401  (imports neonize's Neonize_pb2 and its deps)
