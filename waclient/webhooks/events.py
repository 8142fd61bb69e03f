"""What a webhook carries: event types, the JSON body, and the Redis streams events come from.

A body is the Standard Webhooks payload shape::

    {"type": "message.received", "timestamp": "2026-11-28T19:30:00Z", "data": {...}}

Events come from Redis streams written by the host: the inbound and outbound message streams of
the recorders, the state-event stream and the receipt stream (:func:`state_fields` makes their
entries). A :class:`Source` names a stream and turns one of its entries into an :class:`Event`.
Receipts have a stream of their own: there are several per message sent (delivered, read, once
per group member), and a burst of them must not trim or push out the rarer state events.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from waclient.errors import WaclientError
from waclient.messages import jid_to_str
from waclient.recorders import MessageRecord, RecorderOutage

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventFilterError",
    "Source",
    "default_sources",
    "event_from_outage",
    "event_from_receipt",
    "matches",
    "parse_event_filter",
    "state_fields",
]

MESSAGE_TYPES = ("message.received", "message.sent", "message.receipt")
STATE_TYPES = (
    "session.connected",
    "session.disconnected",
    "session.failed",
    "session.restarted",
    "session.logged_out",
    "session.terminal",
    "session.paired",
    "memory.soft_limit",
    "memory.hard_limit",
    "recorder.outage_began",
    "recorder.outage_ended",
)
EVENT_TYPES = frozenset(MESSAGE_TYPES + STATE_TYPES)
"""Every event type a webhook can receive."""

_MS_THRESHOLD = 10**11
"""A message timestamp above this is in milliseconds (10**11 s is the year 5138)."""
_FILTER_ITEM = re.compile(r"[a-z_]+\.(\*|[a-z_]+)")


class EventFilterError(WaclientError, ValueError):
    """An event filter names a type that does not exist."""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    timestamp: float
    data: Mapping[str, Any]

    def body(self) -> bytes:
        """The JSON body of a delivery (the same bytes on every retry)."""
        when = datetime.fromtimestamp(self.timestamp, UTC).isoformat().replace("+00:00", "Z")
        payload = {"type": self.type, "timestamp": when, "data": dict(self.data)}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Source:
    """A stream the dispatcher reads, and how one of its entries becomes an event."""

    name: str
    """Short and unique among the sources; part of every ``webhook-id`` from this stream."""
    stream: str
    decode: Callable[[Mapping[bytes, bytes]], Event]


def parse_event_filter(items: Iterable[str]) -> tuple[str, ...]:
    """Validated event filter: exact types or ``category.*``; empty means every type."""
    out: list[str] = []
    categories = {t.split(".", 1)[0] for t in EVENT_TYPES}
    for item in items:
        if not _FILTER_ITEM.fullmatch(item):
            raise EventFilterError(f"{item!r} is not an event type (e.g. message.received)")
        category, name = item.split(".", 1)
        known = category in categories if name == "*" else item in EVENT_TYPES
        if not known:
            raise EventFilterError(
                f"unknown event type {item!r}; known: {', '.join(sorted(EVENT_TYPES))} "
                "(or category.*)"
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def matches(event_type: str, event_filter: Sequence[str]) -> bool:
    """Whether an endpoint with ``event_filter`` (empty: everything) wants ``event_type``."""
    if not event_filter:
        return True
    category = event_type.split(".", 1)[0]
    return event_type in event_filter or f"{category}.*" in event_filter


def state_fields(
    event_type: str, data: Mapping[str, Any], when: float | None = None
) -> dict[str, str]:
    """The fields of a state-event stream entry (what :func:`decode_state` reads back)."""
    return {
        "type": event_type,
        "ts": repr(time.time() if when is None else when),
        "data": json.dumps(dict(data), ensure_ascii=False, separators=(",", ":")),
    }


def event_from_outage(outage: RecorderOutage) -> Event:
    """``recorder.outage_began`` or ``recorder.outage_ended`` for a recorder's notice, at the
    time it began or ended."""
    if outage.ended is None:
        return Event("recorder.outage_began", outage.began, outage.to_dict())
    return Event("recorder.outage_ended", outage.ended, outage.to_dict())


def event_from_receipt(receipt: Any) -> Event:
    """``message.receipt`` for a neonize ``Receipt`` event (:class:`waclient.events.ReceiptEv`),
    at the receipt's time. ``type`` is the receipt type in lower case: ``delivered``, ``read``,
    ``played``, ``read_self``, ``sender``, ``retry``..."""
    source = receipt.MessageSource
    kinds = receipt.DESCRIPTOR.fields_by_name["Type"].enum_type.values_by_number
    kind = kinds.get(receipt.Type)
    data = {
        "chat": jid_to_str(source.Chat),
        "sender": jid_to_str(source.Sender),
        "from_me": bool(source.IsFromMe),
        "message_ids": [str(i) for i in receipt.MessageIDs],
        "type": kind.name.lower() if kind is not None else str(receipt.Type),
        "timestamp": int(receipt.Timestamp),
    }
    return Event("message.receipt", _seconds(int(receipt.Timestamp)), data)


def decode_state(fields: Mapping[bytes, bytes]) -> Event:
    data = json.loads(fields[b"data"])
    return Event(fields[b"type"].decode(), float(fields[b"ts"]), data)


def decode_message(fields: Mapping[bytes, bytes]) -> Event:
    rec = MessageRecord.from_fields(fields)
    kind = "message.received" if rec.direction == "in" else "message.sent"
    data = {
        "id": rec.id,
        "chat": rec.chat,
        "sender": rec.sender,
        "text": rec.text,
        "timestamp": rec.timestamp,
    }
    return Event(kind, _seconds(rec.timestamp), data)


def default_sources(key_prefix: str) -> list[Source]:
    """The host's streams: inbound and outbound messages, state events and receipts."""
    return [
        Source("in", f"{key_prefix}:messages:in", decode_message),
        Source("out", f"{key_prefix}:messages:out", decode_message),
        Source("ev", f"{key_prefix}:events", decode_state),
        Source("rc", f"{key_prefix}:receipts", decode_state),
    ]


def _seconds(timestamp: int) -> float:
    """A WhatsApp timestamp (seconds, or milliseconds) in seconds."""
    return timestamp / 1000 if timestamp > _MS_THRESHOLD else float(timestamp)
