"""API keys never travel in URLs: a request with one in its query string is refused, and the
key is taken out of the request before anything (the access log included) can write it down.

URLs end up in access logs, proxies' logs, browser histories and ``Referer`` headers; the host
reads its key from the ``X-API-Key`` header only.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import send_error

__all__ = ["KEY_PARAMETERS", "RefuseKeyInQuery", "has_key_in_query"]

KEY_PARAMETERS = frozenset({"api_key", "apikey", "x_api_key", "key"})
"""Query parameter names (lower case, ``-`` read as ``_``) refused as a key."""


class RefuseKeyInQuery:
    """ASGI middleware, outermost: a key parameter in the query string is answered 400
    ``key_in_query``, and its value is replaced by ``REDACTED`` in the request's scope, which is
    the dict uvicorn's access log reads the URL from."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if not query:
            await self.app(scope, receive, send)
            return
        pairs = _pairs(query)
        if not any(_is_key(name) for name, _ in pairs):
            await self.app(scope, receive, send)
            return
        redacted = [(n, "REDACTED" if _is_key(n) else v) for n, v in pairs]
        scope["query_string"] = urlencode(redacted).encode("latin-1")
        await send_error(
            send,
            400,
            "key_in_query",
            "send the API key in the X-API-Key header, never in the URL (URLs are logged); "
            "this key is now in your client's history: rotate it",
        )


def has_key_in_query(query: bytes) -> bool:
    """Whether a query string carries a key parameter (refused by :class:`RefuseKeyInQuery`)."""
    return bool(query) and any(_is_key(name) for name, _ in _pairs(query))


def _pairs(query: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query.decode("latin-1"), keep_blank_values=True)


def _is_key(name: str) -> bool:
    return name.strip().lower().replace("-", "_") in KEY_PARAMETERS
