"""The neonize event types this library speaks, with their wire codes.

Every event is a real ``neonize.proto.Neonize_pb2`` message; its code is the integer the Go core
uses for it (``neonize.events.EVENT_TO_INT``). ``SUPPORTED_EVENTS`` is the set the transports
bridge into a :class:`~waclient.handlers.HandlerRegistry`: one bridge handler per type.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from google.protobuf.message import Message as ProtoMessage
from neonize.events import (
    EVENT_TO_INT,
    INT_TO_EVENT,
    CallOfferEv,
    ChatPresenceEv,
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    HistorySyncEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    OfflineSyncCompletedEv,
    PairStatusEv,
    PresenceEv,
    QREv,
    ReceiptEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
    UndecryptableMessageEv,
)

__all__ = [
    "SUPPORTED_EVENTS",
    "TERMINAL_EVENTS",
    "CallOfferEv",
    "ChatPresenceEv",
    "ClientOutdatedEv",
    "ConnectFailureEv",
    "ConnectedEv",
    "DisconnectedEv",
    "Event",
    "HistorySyncEv",
    "KeepAliveRestoredEv",
    "KeepAliveTimeoutEv",
    "LoggedOutEv",
    "MessageEv",
    "OfflineSyncCompletedEv",
    "PairStatusEv",
    "PresenceEv",
    "QREv",
    "ReceiptEv",
    "StreamErrorEv",
    "StreamReplacedEv",
    "TemporaryBanEv",
    "UndecryptableMessageEv",
    "event_code",
    "event_type",
]

Event: TypeAlias = ProtoMessage
"""Every event is a protobuf message; handlers receive the decoded message."""

SUPPORTED_EVENTS: Final[tuple[type[Event], ...]] = (
    QREv,
    PairStatusEv,
    ConnectedEv,
    KeepAliveTimeoutEv,
    KeepAliveRestoredEv,
    LoggedOutEv,
    StreamReplacedEv,
    TemporaryBanEv,
    ConnectFailureEv,
    ClientOutdatedEv,
    StreamErrorEv,
    DisconnectedEv,
    HistorySyncEv,
    MessageEv,
    ReceiptEv,
    ChatPresenceEv,
    PresenceEv,
    OfflineSyncCompletedEv,
    UndecryptableMessageEv,
    CallOfferEv,
)
"""The event types the transports bridge into the registry, in wire-code order."""

TERMINAL_EVENTS: Final[tuple[type[Event], ...]] = (
    LoggedOutEv,
    StreamReplacedEv,
    TemporaryBanEv,
    ClientOutdatedEv,
)
"""Events after which reconnecting is wrong: the supervisor stops for good."""


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
