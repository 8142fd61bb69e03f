"""waclient: a WhatsApp client on neonize whose handlers, buffers and reconnects stay bounded."""

from waclient.client import Backoff, Client, ClientState, NotConnectedError, StateChange
from waclient.handlers import (
    HandlerRegistry,
    ListenerLimitError,
    Scope,
    ScopeClosedError,
    Subscription,
)
from waclient.transport import NeonizeTransport, SentMessage, Transport, TransportError

__all__ = [
    "Backoff",
    "Client",
    "ClientState",
    "HandlerRegistry",
    "ListenerLimitError",
    "NeonizeTransport",
    "NotConnectedError",
    "Scope",
    "ScopeClosedError",
    "SentMessage",
    "StateChange",
    "Subscription",
    "Transport",
    "TransportError",
]
