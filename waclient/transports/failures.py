"""What a failed call raises, the same in process and through the worker.

neonize raises one class per failing operation (``neonize.exc.SendMessageError``, ...). A
failed call raises a :class:`~waclient.transports.base.TransportError` that is *also* that
neonize class, so either ``except TransportError`` or ``except SendMessageError`` catches it,
whichever transport ran the call: in process the class comes from the exception, through the
worker by its name (:func:`call_failed` rebuilds it on the parent's side). When WhatsApp's
server refused (``server returned error N``) the error is a :class:`ServerError` with its
``code``; 463 is :class:`ReachoutTimelockedError`.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from waclient.transports.base import TransportError

__all__ = ["ReachoutTimelockedError", "ServerError", "call_failed"]


class ServerError(TransportError):
    """WhatsApp's server refused the request; ``code`` is its error number."""


class ReachoutTimelockedError(ServerError):
    """Error 463: WhatsApp has time-locked this account from starting chats ("reach-out")."""


def call_failed(method: str, error_type: str | None, detail: str) -> TransportError:
    """The error of ``method`` failing with ``detail``, raised on the Go side as an exception
    of class ``error_type`` (a name; neonize's own classes are kept)."""
    code = _server_code(detail)
    base: type[TransportError] = TransportError
    if code == REACHOUT_TIMELOCKED:
        base = ReachoutTimelockedError
    elif code is not None:
        base = ServerError
    cls = _combined(base, error_type) if error_type else base
    message = (
        f"{method} failed: {error_type}: {detail}" if error_type else f"{method} failed: {detail}"
    )
    if code == REACHOUT_TIMELOCKED:
        message += f" ({REACHOUT_EXPLAINED})"
    error = cls(message)
    error.method = method
    error.error_type = error_type
    error.detail = detail
    error.code = code
    return error


REACHOUT_TIMELOCKED = 463
REACHOUT_EXPLAINED = (
    "WhatsApp error 463, the reach-out time-lock: this account may not start new chats for "
    "now; messages to people who wrote to it recently still go through, and the lock lifts "
    "with time"
)


# -- helpers ---------------------------------------------------------------------------------------

_SERVER_CODE = re.compile(r"server returned error (\d{3})")


def _server_code(detail: str) -> int | None:
    found = _SERVER_CODE.search(detail)
    return int(found.group(1)) if found else None


def _combined(base: type[TransportError], error_type: str) -> type[TransportError]:
    """``base`` and neonize's class named ``error_type`` in one class (``base`` alone when
    neonize has no such class); one class per pair, so ``type(a) is type(b)`` holds."""
    neonize_class = _neonize_error(error_type)
    if neonize_class is None:
        return base
    key = (base, neonize_class)
    found = _COMBINED.get(key)
    if found is None:
        namespace: dict[str, Any] = {"__module__": __name__, "__qualname__": error_type}
        found = _COMBINED[key] = type(error_type, (base, neonize_class), namespace)
    return found


_COMBINED: dict[tuple[type[TransportError], type[Exception]], type[TransportError]] = {}
"""Bounded: three bases times neonize's error classes."""


def _neonize_error(name: str) -> type[Exception] | None:
    exc = importlib.import_module("neonize.exc")  # plain Python classes: no Go core
    found = getattr(exc, name, None)
    if isinstance(found, type) and issubclass(found, exc.NeonizeError):
        return found
    return None
