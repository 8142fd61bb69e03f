"""``create_app(settings)``: the FastAPI host. Its lifespan opens the client (and its
transport), Redis, the recorders, the scheduler and the memory guard, and closes them."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from waclient.transports import Transport

from .config import Settings, load_settings
from .deps import require_key
from .errors import CatchAll, allow_map, install_handlers
from .limits import BodyLimit
from .metrics import MetricsMiddleware
from .query_keys import RefuseKeyInQuery
from .routes import contacts, dashboard, groups, health, messages, scheduled, session, webhooks
from .runtime import Host

__all__ = ["create_app"]

log = logging.getLogger("waclient.host")

DESCRIPTION = """\
A small HTTP host for one WhatsApp session (waclient on neonize).

Send the API key (`WACLIENT_API_KEY`) in the `X-API-Key` header to every endpoint except
`/health` and `/health/ready` (and `/metrics` when `WACLIENT_METRICS_PUBLIC=true`), and never
in the URL (a key in the query string is refused with 400).
Errors have the body `{"error": code, "message": text}`; a 500 carries an `error_id` to find the
logged traceback.
"""


def create_app(
    settings: Settings | None = None,
    *,
    transport: Transport | None = None,
    request_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The host's app. ``settings`` default to the environment (:func:`load_settings`).

    ``transport`` replaces the one ``WACLIENT_TRANSPORT`` names (tests, embedding);
    ``request_shutdown`` is called when memory passes the hard limit (``python -m
    waclient.host`` makes uvicorn exit; then the process exits with status 3).
    """
    settings = settings or load_settings()
    host = Host(settings, transport=transport, request_shutdown=request_shutdown)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with host:
            log.info("host ready on port %d", settings.port)
            yield
        log.info("host closed")

    app = FastAPI(
        title="waclient host",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
    )
    app.state.host = host
    app.state.settings = settings
    install_handlers(app)
    routers = [
        health.router(settings),
        messages.router(settings),
        scheduled.router(settings),
        session.router(settings),
        contacts.router(settings),
        groups.router(settings),
        webhooks.router(settings),
    ]
    if settings.transport == "simulated":
        routers.append(webhooks.debug_router(settings))
    if settings.dashboard:
        routers.append(dashboard.router(settings))
    for r in routers:
        app.include_router(r)
    routes = [route for r in routers for route in r.routes]
    app.state.allow_map = allow_map(routes)
    host.door.open(open_paths([*app.routes, *routes]))  # app.routes: /openapi.json, /docs
    # Added last = outermost: metrics see every answer, 413 included; CatchAll turns an
    # escaped exception into a JSON 500 inside them.
    app.add_middleware(CatchAll, on_error=host.metrics.errors.inc)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        on_refused=host.metrics.bodies_refused.inc,
        route_limits={"/messages/media": (settings.max_media_bytes, messages.MEDIA_AT_ONCE)},
    )
    app.add_middleware(MetricsMiddleware, metrics=host.metrics)
    app.add_middleware(RefuseKeyInQuery)  # outermost: the key is gone before anything logs
    return app


def open_paths(routes: Iterable[BaseRoute]) -> list[re.Pattern[str]]:
    """The path patterns of the routes served without a key: every route but the API routes
    that depend on :func:`.deps.require_key` (the door refuses a keyless request to any
    other path, unknown ones included)."""
    return [
        route.path_regex
        for route in routes
        if isinstance(route, Route | APIRoute) and not _needs_key(route)
    ]


def _needs_key(route: BaseRoute) -> bool:
    if not isinstance(route, APIRoute):
        return False
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is require_key:
            return True
        pending.extend(dependant.dependencies)
    return False


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("waclient")
    except PackageNotFoundError:  # pragma: no cover
        return "0"
