"""Cursor pagination for every list the host serves: a page size with a maximum, and pages
bounded in bytes.

A list route takes :data:`PageDep` (the ``limit`` and ``cursor`` query parameters), asks its
store for at most ``limit`` rows after the cursor's position, each as ``(position, item)``
plus the position to continue from, and answers :func:`bounded_page`'s items and
``next_cursor``. A cursor is opaque to clients: the position's strings as URL-safe base64 of a
JSON array; a cursor that does not decode is 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query

from .errors import ApiError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_BYTES",
    "MAX_PAGE_SIZE",
    "PageDep",
    "PageRequest",
    "bounded_page",
    "decode_cursor",
    "encode_cursor",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE_BYTES = 256 * 1024
"""A page stops before the item that would take its JSON past this (it holds one at least)."""
MAX_CURSOR_LENGTH = 512

Position = Sequence[str]


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[str, ...] | None
    """The decoded cursor: where the previous page ended; None for the first page."""


async def page_request(
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Items per page, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="`next_cursor` of the previous page; absent for the first.",
        ),
    ] = None,
) -> PageRequest:
    return PageRequest(limit, decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageRequest, Depends(page_request)]


def encode_cursor(position: Position) -> str:
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, ...]:
    """The position in ``cursor``; 422 when it is not a cursor this host made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(422, "cursor: not a cursor from this API (use next_cursor as given)")
    return tuple(value)


def bounded_page(
    rows: Sequence[tuple[Position, dict[str, Any]]],
    next_position: Position | None,
    *,
    max_bytes: int = MAX_PAGE_BYTES,
) -> tuple[list[dict[str, Any]], str | None]:
    """The items of ``rows`` that fit in ``max_bytes`` of JSON (one at least), and the cursor
    of the next page: after the last item kept, or ``next_position``, or None at the end."""
    items: list[dict[str, Any]] = []
    size = 0
    for i, (_, item) in enumerate(rows):
        item_size = len(json.dumps(item, ensure_ascii=False).encode()) + 1
        if items and size + item_size > max_bytes:
            return items, encode_cursor(rows[i - 1][0])
        items.append(item)
        size += item_size
    return items, encode_cursor(next_position) if next_position is not None else None
