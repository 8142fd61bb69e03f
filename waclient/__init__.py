"""waclient: a WhatsApp client on neonize whose handlers, buffers and reconnects stay bounded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import waclient._neonize  # noqa: F401  (first: neonize's protobufs without its Go core)
from waclient.client import Backoff, Client, ClientState, NotConnectedError, StateChange
from waclient.errors import WaclientError
from waclient.handlers import (
    HandlerRegistry,
    ListenerLimitError,
    Scope,
    ScopeClosedError,
    Subscription,
)
from waclient.transports import (
    CallError,
    IsolatedTransport,
    Pairing,
    PayloadTooLarge,
    SentMessage,
    Simulating,
    Transport,
    TransportError,
)

if TYPE_CHECKING:
    from waclient.transports import NeonizeTransport, SimulatedTransport

__all__ = [
    "Backoff",
    "CallError",
    "Client",
    "ClientState",
    "HandlerRegistry",
    "IsolatedTransport",
    "ListenerLimitError",
    "NeonizeTransport",
    "NotConnectedError",
    "Pairing",
    "PayloadTooLarge",
    "Scope",
    "ScopeClosedError",
    "SentMessage",
    "SimulatedTransport",
    "Simulating",
    "StateChange",
    "Subscription",
    "Transport",
    "TransportError",
    "WaclientError",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: they load neonize's Go core, which the isolated parent never needs.
    if name in ("NeonizeTransport", "SimulatedTransport"):
        from waclient import transports

        return getattr(transports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
