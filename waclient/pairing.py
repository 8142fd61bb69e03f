"""Linking a new bot to a WhatsApp account: each QR code the Go side offers arrives as a
``QREv`` event (``client.on(QREv, ...)``, and ``transport.latest_qr``), whatever the transport;
:func:`print_qr` draws one in a terminal.

    from waclient.events import QREv
    from waclient.pairing import print_qr

    client.on(QREv, print_qr)          # scan it with WhatsApp > Linked devices > Link a device

Or link by phone number: ``await client.pair_phone("+1 555 000 0001")`` returns the code to
type on the phone (WhatsApp > Linked devices > Link with phone number instead).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from waclient.events import QREv

__all__ = ["print_qr", "qr_code", "qr_event"]


def print_qr(event: Any, *, file: TextIO | None = None) -> None:
    """Draw the QR code of a ``QREv`` event (or a QR string) in the terminal, in text."""
    import segno  # a dependency of neonize's

    code = event if isinstance(event, str) else qr_code(event)
    if code is None:
        raise TypeError(f"print_qr wants a QREv event or a QR string, not {event!r}")
    segno.make(code, error="l").terminal(out=file or sys.stdout, compact=True)


def qr_code(event: Any) -> str | None:
    """The QR string of a ``QREv`` event (its latest code), or None for any other event."""
    if isinstance(event, QREv) and event.Codes:
        return str(event.Codes[-1])
    return None


def qr_event(code: str) -> Any:
    """The ``QREv`` event that carries ``code``, as the transports deliver it."""
    return QREv(Codes=[code])
