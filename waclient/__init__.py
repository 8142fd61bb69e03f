"""waclient: a WhatsApp client on neonize whose handlers, buffers and reconnects stay bounded.

Importing the package imports nothing else: each name below is imported from its module on
first use (PEP 562), so ``import waclient.heap`` (the soak harness's heap reader) costs a
process nothing, while ``from waclient import Client`` loads the WhatsApp stack as before. The
modules that import neonize (``waclient.events``, ``messages``, ``whatsapp``, ``transports``)
first run :func:`waclient._neonize.install` (its protobufs without its Go core).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        NeonizeTransport,
        Pairing,
        PayloadTooLarge,
        SentMessage,
        SimulatedTransport,
        Simulating,
        Transport,
        TransportError,
    )

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

_HOME = {
    **dict.fromkeys(
        ("Backoff", "Client", "ClientState", "NotConnectedError", "StateChange"), "waclient.client"
    ),
    **dict.fromkeys(
        ("HandlerRegistry", "ListenerLimitError", "Scope", "ScopeClosedError", "Subscription"),
        "waclient.handlers",
    ),
    "WaclientError": "waclient.errors",
}
"""Where each exported name lives; the rest of ``__all__`` is in ``waclient.transports`` (whose
``NeonizeTransport`` and ``SimulatedTransport`` load neonize's Go core, so are themselves
imported on first use: the isolated parent never needs them)."""


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "waclient.transports")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
