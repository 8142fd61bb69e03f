"""``/dashboard``: one small page (HTML, CSS and JavaScript shipped as package data) to pair
the session and watch the host. The page needs no key; every data call it makes sends the key
the user typed (kept in the tab's session storage) as ``X-API-Key``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Response

from ..config import Settings

__all__ = ["SECURITY_HEADERS", "router"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}


def router(settings: Settings) -> APIRouter:
    r = APIRouter(tags=["dashboard"])
    for path, (name, media_type) in ASSETS.items():
        page = path == "/dashboard"
        r.add_api_route(
            path,
            _serve(name, media_type),
            methods=["GET"],
            include_in_schema=page,
            summary="The dashboard: pair the session and watch the host" if page else None,
            response_class=Response,
        )
    return r


def _serve(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def asset() -> Response:
        return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)

    asset.__name__ = f"dashboard_{name.replace('.', '_')}"
    return asset


@cache
def _read(name: str) -> bytes:
    return files("waclient.host").joinpath("dashboard", name).read_bytes()
