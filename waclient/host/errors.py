"""Errors: one JSON body shape for every error, and never a traceback to the client."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import ErrorBody

__all__ = [
    "ApiError",
    "CatchAll",
    "allow_map",
    "error_json",
    "error_responses",
    "install_handlers",
    "send_error",
]

log = logging.getLogger("waclient.host")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
}

_DESCRIPTIONS = {
    400: "The body could not be read (e.g. not UTF-8).",
    401: "The X-API-Key header is missing or wrong.",
    404: "Not found.",
    409: "Conflict: the session already holds the most scheduled messages allowed, or the "
    "transport cannot make pair codes.",
    413: "The request body is larger than WACLIENT_MAX_BODY_BYTES.",
    422: "Invalid input; `message` says which field and why.",
    429: "Too many requests for this API key; wait for Retry-After seconds.",
    502: "WhatsApp refused or failed the request.",
    503: "Unavailable now: WhatsApp not connected, memory soft limit (shedding), or Redis "
    "down / not configured; `error` says which. Retry later.",
}


class ApiError(Exception):
    """Raised by routes: answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})


def error_json(code: str, message: str) -> bytes:
    """The error body, encoded."""
    return json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``{"error": code, "message": message}`` straight from ASGI middleware, outside
    FastAPI's handlers."""
    data = error_json(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with :class:`ErrorBody`."""
    return {
        s: {"model": ErrorBody, "description": _DESCRIPTIONS.get(s, _CODES.get(s, "Error"))}
        for s in statuses
    }


def _json(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=dict(headers or {})
    )


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc.status, ErrorBody(error=exc.code, message=exc.message), exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(status, "error")
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed(request)
    return _json(status, ErrorBody(error=_CODES.get(status, "error"), message=message), headers)


def allow_map(routes: Iterable[Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path regex, methods) of routes, for :func:`_allowed`."""
    out = []
    for route in routes:
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods:
            out.append((regex, frozenset(methods)))
    return out


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names one route's)."""
    methods: set[str] = set()
    path = request.scope.get("path", "")
    for regex, route_methods in getattr(request.app.state, "allow_map", ()):
        if regex.match(path):
            methods |= route_methods
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        details.append(
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": msg,
                "type": str(err.get("type", "")),
            }
        )
    message = "; ".join(f"{_field(d['loc'])}: {d['msg']}" for d in details) or "invalid request"
    return _json(422, ErrorBody(error="validation_error", message=message, details=details))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class CatchAll:
    """ASGI middleware: an exception that escapes a route becomes a JSON 500 with an error id;
    the traceback goes to the log under that id, never to the client."""

    def __init__(self, app: ASGIApp, on_error: Any = None) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_id = uuid.uuid4().hex[:16]
            log.exception(
                "error %s: %s %s failed", error_id, scope.get("method"), scope.get("path")
            )
            if self.on_error is not None:
                self.on_error()
            if started:
                return  # too late for a response: the connection is closed by the server
            response = _json(
                500,
                ErrorBody(
                    error="internal_error",
                    message=f"internal error; quote error id {error_id} to find it in the log",
                    error_id=error_id,
                ),
            )
            await response(scope, receive, send)
