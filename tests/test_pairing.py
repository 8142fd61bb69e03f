"""Pairing a new bot: every QR code the Go side offers is a ``QREv`` event on the client (and
``transport.latest_qr``) through every transport; print_qr draws it; a pair code by phone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from waclient.events import MessageEv, QREv
from waclient.pairing import print_qr, qr_code, qr_event
from waclient.transports.simulated import message_event

CODES = ["2@first,abc,def,ghi", "2@second,abc,def,ghi"]


async def test_each_qr_code_reaches_the_handlers_and_the_latest_is_kept(
    simulated_client: Any,
) -> None:
    c, transport = simulated_client
    seen: list[str | None] = []
    c.on(QREv, lambda ev: seen.append(qr_code(ev)))
    assert transport.latest_qr is None
    for code in CODES:
        await transport.emit(qr_event(code))
    await c.idle()
    assert seen == CODES
    assert transport.latest_qr == CODES[-1]


async def test_a_pair_code_by_phone_number(simulated_client: Any) -> None:
    c, _transport = simulated_client
    code = await c.pair_phone("+1 555 000 0001")
    assert code and isinstance(code, str)


def test_print_qr_draws_the_code_as_text() -> None:
    out = io.StringIO()
    print_qr(qr_event(CODES[0]), file=out)
    drawing = out.getvalue().splitlines()
    assert len(drawing) > 10 and len({len(line) for line in drawing}) == 1  # a square of text
    same = io.StringIO()
    print_qr(CODES[0], file=same)
    assert same.getvalue() == out.getvalue()
    with pytest.raises(TypeError, match="QREv event or a QR string"):
        print_qr(message_event(text="not a qr"))


def test_qr_code_is_none_for_other_events() -> None:
    assert qr_code(message_event(text="x")) is None and qr_code(QREv()) is None
    assert isinstance(message_event(text="x"), MessageEv)


def test_neonizes_own_qr_callback_becomes_a_qr_event_decoded_and_raw(tmp_path: Path) -> None:
    """The real neonize client: its QR callback (what ``connect()`` calls for each code)."""
    from waclient.events import event_code, event_type
    from waclient.transports.inprocess import NeonizeTransport
    from waclient.transports.session import NeonizeSession

    transport = NeonizeTransport(tmp_path / "in.db")
    neonize_client = transport._session.client
    neonize_client.event._qr(neonize_client, CODES[0].encode())
    assert transport.latest_qr == CODES[0]

    raw: list[tuple[int, bytes]] = []
    worker_side = NeonizeSession(
        str(tmp_path / "w.db"), name="w", proxy=None, deliver_raw=lambda c, b: raw.append((c, b))
    )
    worker_side.client.event._qr(worker_side.client, CODES[1].encode())
    [(code, data)] = raw
    assert code == event_code(QREv) and qr_code(event_type(code).FromString(data)) == CODES[1]
