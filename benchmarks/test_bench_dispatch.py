"""One Message event through the full path against neonize's own single-handler execute.

Both go through neonize's ``Event.execute`` with the same serialized protobuf in a ctypes
buffer: the baseline calls neonize's one registered handler; the full path goes through
waclient's bridge and the HandlerRegistry to one handler.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import pytest
from conftest import record_median, report_ratio

from waclient import HandlerRegistry
from waclient.events import MessageEv, event_code
from waclient.transports.session import install_bridge
from waclient.transports.simulated import message_event

CODE = event_code(MessageEv)
report_ratio("full path / neonize execute (Message, 1 handler)", "waclient", "neonize", 1.5)


def _event_call(setup: Callable[[Any], None]) -> Callable[[], None]:
    from neonize.client import NewClient

    client = NewClient("bench.db", uuid="bench")
    setup(client)
    data = message_event(text="benchmark").SerializePartialToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    address, size, execute = ctypes.addressof(buffer), len(data), client.event.execute

    def call() -> None:
        execute(b"bench", address, size, CODE)

    call.keep = (client, buffer)  # type: ignore[attr-defined]
    return call


def _neonize_only(client: Any) -> None:
    def handler(_client: object, message: object) -> None:
        pass

    client.event(MessageEv)(handler)


def _waclient_path(client: Any) -> None:
    registry = HandlerRegistry()
    registry.scope().on(MessageEv, lambda ev: None)
    install_bridge(client, registry.dispatch)


@pytest.mark.parametrize(
    ("name", "setup"), [("neonize", _neonize_only), ("waclient", _waclient_path)]
)
def test_message_event_dispatch(benchmark: Any, name: str, setup: Callable[[Any], None]) -> None:
    call = _event_call(setup)
    benchmark.pedantic(lambda: [call() for _ in range(1000)], rounds=200, warmup_rounds=5)
    record_median(name, benchmark.stats.stats.median)
