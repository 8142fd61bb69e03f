"""One way for every route to ask WhatsApp something: the same errors, timeouts and metrics.

``await on_whatsapp(host, client, settings, action, send=True)`` runs ``action`` (a call on the
client) under the send timeout and turns what can go wrong into the host's answers:

=================================  ====  =====================
the client raised                  HTTP  error code
=================================  ====  =====================
memory past the soft limit (send)  503   memory_shedding
NotConnectedError                  503   not_connected
the connection dropped meanwhile   503   not_connected
PayloadTooLarge                    413   payload_too_large
CallError, ValueError              422   validation_error
TransportError                     502   send_failed / whatsapp_failed
the timeout                        504   send_timeout / whatsapp_timeout
=================================  ====  =====================
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from waclient.client import Client, NotConnectedError
from waclient.transports import CallError, PayloadTooLarge, TransportError

from .config import Settings
from .errors import ApiError
from .runtime import Host

__all__ = ["on_whatsapp"]

T = TypeVar("T")


async def on_whatsapp(
    host: Host,
    client: Client,
    settings: Settings,
    action: Callable[[], Awaitable[T]],
    *,
    send: bool = False,
) -> T:
    """``action()``'s result, or the :class:`ApiError` that says why there is none."""
    what = "send" if send else "request"
    if send and host.guard.shedding:
        host.metrics.sends.labels("shed").inc()
        raise ApiError(
            503,
            "memory is past the soft limit: new sends are refused until it is back under",
            code="memory_shedding",
            headers={"Retry-After": "30"},
        )
    try:
        async with asyncio.timeout(settings.send_timeout):
            result = await action()
    except NotConnectedError as exc:
        raise _not_connected(
            host, send, f"WhatsApp is not connected ({client.state.value})"
        ) from exc
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc), code="payload_too_large") from exc
    except (CallError, ValueError) as exc:
        raise ApiError(422, str(exc), code="validation_error") from exc
    except TransportError as exc:
        if not client.connected:  # the connection dropped under the request
            raise _not_connected(host, send, f"WhatsApp disconnected ({exc})") from exc
        _count(host, send, "failed")
        raise ApiError(502, f"the {what} failed: {exc}", code=f"{_kind(send)}_failed") from exc
    except TimeoutError as exc:
        _count(host, send, "failed")
        raise ApiError(
            504,
            f"the {what} took longer than {settings.send_timeout:g} s",
            code=f"{_kind(send)}_timeout",
        ) from exc
    _count(host, send, "sent")
    return result


def _not_connected(host: Host, send: bool, why: str) -> ApiError:
    _count(host, send, "not_connected")
    return ApiError(503, f"{why}; retry later", code="not_connected", headers={"Retry-After": "5"})


def _kind(send: bool) -> str:
    return "send" if send else "whatsapp"


def _count(host: Host, send: bool, outcome: str) -> None:
    if send:
        host.metrics.sends.labels(outcome).inc()
