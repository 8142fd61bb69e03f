"""One base for the library's errors, and a failed call raising neonize's own class for it, the
same in process and through the worker; WhatsApp's 463 a class of its own that says what it
means."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
from neonize.exc import NeonizeError, SendMessageError

import waclient
from waclient import TransportError, WaclientError
from waclient.transports.failures import ReachoutTimelockedError, ServerError, call_failed

CHAT = "15550000001@s.whatsapp.net"
PACKAGE = Path(waclient.__file__).parent


def test_every_error_class_of_the_library_is_a_waclient_error() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module_name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module_name = module_name.removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                cls = getattr(importlib.import_module(module_name), node.name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    outside = [c.__qualname__ for c in found if not issubclass(c, WaclientError)]
    assert outside in ([], ["ApiError"]), outside  # ApiError: an HTTP answer, not raised to users
    assert len(found) >= 24


async def fail(transport: Any, method: str, error: str, error_type: str | None) -> None:
    await transport.fail(method, error, error_type=error_type)  # both transports script alike


async def test_a_failed_send_is_neonizes_class_and_a_transport_error(simulated_client: Any) -> None:
    c, transport = simulated_client
    await fail(transport, "send_message", "no session with that device", "SendMessageError")
    with pytest.raises(SendMessageError) as caught:
        await c.send_text(CHAT, "hi")
    error = caught.value
    assert isinstance(error, TransportError) and isinstance(error, NeonizeError)
    assert isinstance(error, WaclientError) and not isinstance(error, ServerError)
    assert (error.method, error.error_type) == ("send_message", "SendMessageError")
    assert error.code is None
    assert str(error) == "send_message failed: SendMessageError: no session with that device"


async def test_463_is_the_reachout_timelock_and_says_so(simulated_client: Any) -> None:
    c, transport = simulated_client
    await fail(transport, "send_message", "server returned error 463", "SendMessageError")
    with pytest.raises(ReachoutTimelockedError) as caught:
        await c.send_text(CHAT, "hi")
    error = caught.value
    assert isinstance(error, SendMessageError) and isinstance(error, ServerError)
    assert error.code == 463 and "reach-out time-lock" in str(error)


async def test_other_server_errors_carry_their_code(simulated_client: Any) -> None:
    c, transport = simulated_client
    await fail(transport, "send_message", "server returned error 479", None)
    with pytest.raises(ServerError) as caught:
        await c.send_text(CHAT, "hi")
    assert caught.value.code == 479 and not isinstance(caught.value, ReachoutTimelockedError)


def test_the_same_failure_is_the_same_class_and_an_unknown_name_a_plain_transport_error() -> None:
    a = call_failed("send_message", "SendMessageError", "x")
    b = call_failed("send_message", "SendMessageError", "y")
    assert type(a) is type(b) and type(a).__name__ == "SendMessageError"
    plain = call_failed("send_message", "ValueError", "bad")
    assert type(plain) is TransportError and str(plain) == "send_message failed: ValueError: bad"
