"""Transports: where a WhatsApp session runs.

- :class:`IsolatedTransport`: neonize in a worker process that is recycled on a memory budget.
  The leak-proof choice for a service that runs for days.
- :class:`NeonizeTransport`: neonize in this process. Fine for short-lived tools and bots on a
  stable network: every failed connect keeps native memory that only ending the process frees.
- :class:`SimulatedTransport`: a scripted Go side, for tests and local try-outs.

All three speak the :class:`Transport` protocol; pairing (:class:`Pairing`) and scripted events
(:class:`Simulating`) are optional capabilities.
"""

from __future__ import annotations

import waclient._neonize  # noqa: F401  (first: neonize's protobufs without its Go core)

# isort: split

from typing import TYPE_CHECKING, Any

from waclient.transports.base import (
    CallError,
    EventSink,
    Pairing,
    PayloadTooLarge,
    SentMessage,
    Simulating,
    Transport,
    TransportError,
)
from waclient.transports.calls import NeonizeEnum
from waclient.transports.isolated import IsolatedTransport, WorkerStats

if TYPE_CHECKING:
    from waclient.transports.inprocess import NeonizeTransport
    from waclient.transports.simulated import SimulatedTransport

__all__ = [
    "CallError",
    "EventSink",
    "IsolatedTransport",
    "NeonizeEnum",
    "NeonizeTransport",
    "Pairing",
    "PayloadTooLarge",
    "SentMessage",
    "SimulatedTransport",
    "Simulating",
    "Transport",
    "TransportError",
    "WorkerStats",
]


def __getattr__(name: str) -> Any:
    # These two load neonize's Go core when first used, so they are imported on demand: a
    # process that only runs the isolated transport's parent never needs them.
    if name == "NeonizeTransport":
        from waclient.transports.inprocess import NeonizeTransport

        return NeonizeTransport
    if name == "SimulatedTransport":
        from waclient.transports.simulated import SimulatedTransport

        return SimulatedTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
