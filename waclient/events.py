"""The neonize event types this library speaks, with their wire codes.

Every event is a real ``neonize.proto.Neonize_pb2`` message; its code is the integer the Go core
uses for it (``neonize.events.EVENT_TO_INT``). ``SUPPORTED_EVENTS`` is every one of them: the
transports bridge all into a :class:`~waclient.handlers.HandlerRegistry`, one bridge handler per
type.
"""

from __future__ import annotations

import waclient._neonize  # noqa: F401  (first: neonize's protobufs without its Go core)

# isort: split

from typing import Final, TypeAlias

from google.protobuf.message import Message as ProtoMessage
from neonize.events import (
    EVENT_TO_INT,
    INT_TO_EVENT,
    BlocklistChangeEv,
    BlocklistEv,
    CallAcceptEv,
    CallOfferEv,
    CallOfferNoticeEv,
    CallPreAcceptEv,
    CallRelayLatencyEV,
    CallTerminateEv,
    CallTransportEv,
    ChatPresenceEv,
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    Device,
    DisconnectedEv,
    GroupInfoEv,
    HistorySyncEv,
    IdentityChangeEv,
    JoinedGroupEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    NewsletterJoinEv,
    NewsletterLeaveEv,
    NewsletterLiveUpdateEV,
    NewsLetterMessageMetaEv,
    NewsletterMuteChangeEv,
    OfflineSyncCompletedEv,
    OfflineSyncPreviewEv,
    PairStatusEv,
    PictureEv,
    PresenceEv,
    PrivacySettingsEv,
    QREv,
    ReceiptEv,
    RotateADVSecretEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
    UndecryptableMessageEv,
    UnknownCallEventEV,
)

__all__ = [
    "SUPPORTED_EVENTS",
    "TERMINAL_EVENTS",
    "BlocklistChangeEv",
    "BlocklistEv",
    "CallAcceptEv",
    "CallOfferEv",
    "CallOfferNoticeEv",
    "CallPreAcceptEv",
    "CallRelayLatencyEV",
    "CallTerminateEv",
    "CallTransportEv",
    "ChatPresenceEv",
    "ClientOutdatedEv",
    "ConnectFailureEv",
    "ConnectedEv",
    "DeviceEv",
    "DisconnectedEv",
    "Event",
    "GroupInfoEv",
    "HistorySyncEv",
    "IdentityChangeEv",
    "JoinedGroupEv",
    "KeepAliveRestoredEv",
    "KeepAliveTimeoutEv",
    "LoggedOutEv",
    "MessageEv",
    "NewsLetterMessageMetaEv",
    "NewsletterJoinEv",
    "NewsletterLeaveEv",
    "NewsletterLiveUpdateEV",
    "NewsletterMuteChangeEv",
    "OfflineSyncCompletedEv",
    "OfflineSyncPreviewEv",
    "PairStatusEv",
    "PictureEv",
    "PresenceEv",
    "PrivacySettingsEv",
    "QREv",
    "ReceiptEv",
    "RotateADVSecretEv",
    "StreamErrorEv",
    "StreamReplacedEv",
    "TemporaryBanEv",
    "UndecryptableMessageEv",
    "UnknownCallEventEV",
    "event_code",
    "event_type",
    "is_event_type",
]

Event: TypeAlias = ProtoMessage
"""Every event is a protobuf message; handlers receive the decoded message."""

DeviceEv = Device
"""Code 0: the Go side's own device (our JID, once logged in)."""

SUPPORTED_EVENTS: Final[tuple[type[Event], ...]] = tuple(
    sorted(EVENT_TO_INT, key=lambda kind: int(EVENT_TO_INT[kind]))
)
"""Every event type of the Go core (42 in neonize 0.5.2), in wire-code order: the transports
bridge all of them into the registry."""

TERMINAL_EVENTS: Final[tuple[type[Event], ...]] = (
    LoggedOutEv,
    StreamReplacedEv,
    TemporaryBanEv,
    ClientOutdatedEv,
)
"""Events after which reconnecting is wrong: the supervisor stops for good."""


def is_event_type(kind: object) -> bool:
    """Whether ``kind`` is one of the Go core's event types."""
    return kind in EVENT_TO_INT


def event_code(event_type: type[Event]) -> int:
    """The Go core's integer code for ``event_type``; ``KeyError`` names an unknown type."""
    try:
        return int(EVENT_TO_INT[event_type])
    except KeyError:
        raise KeyError(f"{event_type.__name__} is not a neonize event type") from None


def event_type(code: int) -> type[Event]:
    """The event type for a Go core code; ``KeyError`` for an unknown code."""
    try:
        found: type[Event] = INT_TO_EVENT[code]
        return found
    except KeyError:
        raise KeyError(f"no neonize event has code {code}") from None
