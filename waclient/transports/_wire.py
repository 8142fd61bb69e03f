"""The wire between :class:`~waclient.transports.IsolatedTransport` and its worker process:
frame kinds, the worker's spec, and the limits both sides apply."""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any, Literal

WorkerKind = Literal["neonize", "simulated"]

EVENT_FRAME = 0x45  # b"E": kind byte, event code (u16), protobuf bytes
CONTROL_FRAME = 0x43  # b"C": a pickled control message
CODE = struct.Struct("<H")
FRAME_OVERHEAD = 4096
"""Room for the framing of a request or reply around its payload."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    kind: WorkerKind
    database: str
    name: str
    proxy: str | None
    max_frame: int
    max_in_flight: int


def control_frame(*message: Any) -> bytes:
    return bytes((CONTROL_FRAME,)) + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
