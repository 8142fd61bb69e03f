"""What every transport is: the base protocol, the optional capabilities, and their errors.

A transport runs one *session* per :meth:`Transport.run` call: the Go client connects, events
flow to the ``sink`` the caller gave, and ``run`` returns when the Go side stops (or raises
:class:`TransportError` when it could not start). Only :class:`~waclient.client.Client`'s
supervisor calls ``run``; it never has two sessions at once. Everything WhatsApp does in a
running session is one request: :meth:`Transport.call` with the name of a public neonize
``NewClient`` method and its arguments (see :mod:`waclient.transports.calls`).

Optional capabilities are protocols of their own, checked with ``isinstance``: pairing
(:class:`Pairing`) and scripted events (:class:`Simulating`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from waclient.errors import WaclientError
from waclient.events import Event

__all__ = [
    "CallError",
    "EventSink",
    "Pairing",
    "PayloadTooLarge",
    "SentMessage",
    "SessionStore",
    "Simulating",
    "Transport",
    "TransportError",
]

EventSink = Callable[[Event], None]
"""Receives each decoded event. Called on the Go side's thread (never the loop's). It returns at
once unless the client's memory inbox and its disk budget are both full; then it waits."""


class TransportError(WaclientError, RuntimeError):
    """A session could not start or a request failed; the message says why.

    A failed call (:func:`waclient.transports.failures.call_failed`) also says which, and is
    an instance of neonize's own error class for it when there is one."""

    method: str | None = None
    """The call that failed; None when the session failed."""
    error_type: str | None = None
    """The name of the exception's class on the Go side (``SendMessageError``, ...)."""
    detail: str = ""
    """What the Go side said."""
    code: int | None = None
    """WhatsApp's error number, when its server refused (``server returned error 463``)."""


class PayloadTooLarge(TransportError):
    """A request or reply is larger than the transport's frame limit; nothing was sent."""


class CallError(WaclientError, TypeError):
    """A call that cannot be made: an unknown or private method, or an argument that cannot
    cross to the Go side. Raised before anything is sent; the message names the method."""


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Dispatched to handlers after every send: what the server said about a message we sent."""

    id: str
    chat: str
    text: str
    timestamp: int
    kind: str = "text"
    """``text``, ``image``, ``video``, ``audio``, ``document``, ``sticker``, ``reaction``, ..."""
    method: str = "send_message"
    """The neonize method that sent it."""


@runtime_checkable
class Transport(Protocol):
    """A place where WhatsApp sessions run. One session at a time."""

    async def run(self, sink: EventSink) -> None:
        """Run one session: connect, deliver events to ``sink``, return when it ends.

        Raises :class:`TransportError` when the session could not be started.
        """
        ...

    async def stop(self) -> None:
        """End the running session, if any, and wait until ``run`` has returned."""
        ...

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a public neonize ``NewClient`` method in the running session.

        Raises :class:`CallError` (before sending) for a name or argument that cannot be
        called, :class:`TransportError` when no session runs or the Go side failed.
        """
        ...

    async def close(self) -> None:
        """Release everything the transport holds. It is not used afterwards."""
        ...


@runtime_checkable
class SessionStore(Protocol):
    """A transport whose session lives in a database file: the client keeps its inbox's
    on-disk overflow next to it (``<database>.overflow/``)."""

    @property
    def database(self) -> str:
        """The session database's path."""
        ...


@runtime_checkable
class Pairing(Protocol):
    """A transport that can link a WhatsApp account: by QR code or by phone number."""

    @property
    def latest_qr(self) -> str | None:
        """The QR payload the Go side offered last, if any."""
        ...

    async def pair_phone(self, phone: str) -> str:
        """A pairing code to link this session by phone number (the session must be running)."""
        ...


@runtime_checkable
class Simulating(Protocol):
    """A transport whose Go side is a script: tests, soaks and local try-outs emit events."""

    async def emit(self, *events: Event) -> None:
        """Deliver events in the live session, as the Go side would."""
        ...

    async def disconnect(self) -> None:
        """Disconnected, then the session ends."""
        ...

    async def fail(
        self, method: str, error: str = "simulated failure", *, error_type: str | None = None
    ) -> None:
        """Every call of ``method`` fails with ``error`` (raised as neonize's ``error_type``
        when given) until :meth:`heal`."""
        ...

    async def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (or every method)."""
        ...
