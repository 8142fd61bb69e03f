"""The host's lifetime is one AsyncExitStack: components close in the reverse of the order they
were opened in, and a start that fails part-way closes what it had opened (a real Redis, the
simulated transport, real spools)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from test_host_api import make_settings

from waclient.client import Client, ClientState
from waclient.host.runtime import Host
from waclient.host.state_events import StateEvents
from waclient.memory import MemoryGuard
from waclient.recorders import Recorder
from waclient.scheduler import Scheduler
from waclient.spool import Spool
from waclient.webhooks import WebhookDispatcher

Log = list[tuple[str, str]]
UNTIL_THE_OUTBOUND_SPOOL = [
    "redis-host",
    "redis-webhooks",  # the webhooks open before the recorders: they close after their flush
    "webhooks",
    "stream-events",
    "stream-receipts",
    "spool-in",
    "recorder-in",
    "spool-out",
]
"""What the host opens first, in order."""


def _watch(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, log: Log, label: str) -> None:
    """Record ``(label, method)`` (with the recorder's direction) whenever ``cls.method`` runs."""
    original: Callable[..., Any] = getattr(cls, method)

    def name(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        path = getattr(self, "path", None) or next(iter(args), None)
        if isinstance(path, Path):  # a spool, named by its file
            return path.stem
        if isinstance(self, Redis):  # named by its client name: waclient-host-..., -webhooks-...
            pool = kwargs.get("connection_pool") or getattr(self, "connection_pool", None)
            client_name = kwargs.get("client_name") or (
                pool.connection_kwargs.get("client_name") if pool is not None else None
            )
            return f"{label}-{str(client_name).split('-')[1]}" if client_name else label
        if isinstance(self, StateEvents):  # named by its stream: stream-events, stream-receipts
            return f"{label}-{self.stream.rsplit(':', 1)[1]}"
        direction = getattr(self, "direction", None)
        return f"{label}-{direction}" if direction else label

    if asyncio.iscoroutinefunction(original):

        async def wrapped_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            log.append((name(self, args, kwargs), method))
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapped_async)
    else:

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            log.append((name(self, args, kwargs), method))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapped)


@pytest.fixture
def lifecycle(monkeypatch: pytest.MonkeyPatch) -> Log:
    log: Log = []
    for cls, label, opening, closing in (
        (Client, "client", "start", "close"),
        (Recorder, "recorder", "start", "close"),
        (Scheduler, "scheduler", "start", "close"),
        (MemoryGuard, "guard", "start", "close"),
        (Spool, "spool", "__init__", "close"),
        (Redis, "redis", "__init__", "aclose"),
        (WebhookDispatcher, "webhooks", "start", "close"),
        (StateEvents, "stream", "start", "close"),
    ):
        _watch(monkeypatch, cls, opening, log, label)
        _watch(monkeypatch, cls, closing, log, label)
    return log


def _order(log: Log, methods: set[str]) -> list[str]:
    """The components in the order their first ``methods`` call happened."""
    seen: list[str] = []
    for name, method in log:
        if method in methods and name not in seen:
            seen.append(name)
    return seen


async def test_close_order_is_the_reverse_of_start_order(
    tmp_path: Path, redis_url: str, lifecycle: Log
) -> None:
    host = Host(make_settings(tmp_path, redis_url))
    async with host:
        opened = _order(lifecycle, {"start", "__init__"})
        assert host.client is not None and host.client.state is not ClientState.STOPPED
        lifecycle.clear()
    closed = _order(lifecycle, {"close", "aclose"})
    assert opened == [
        *UNTIL_THE_OUTBOUND_SPOOL,
        "recorder-out",
        "client",
        "scheduler",
        "guard",
    ]
    assert closed == opened[::-1]
    assert host.client.state is ClientState.STOPPED
    assert host.inbound is not None and host.inbound.spool is not None
    assert host.inbound.spool.closed and host.outbound is not None
    assert host.outbound.spool is not None and host.outbound.spool.closed
    await host.close()  # idempotent


async def test_a_failed_start_closes_what_it_opened(
    tmp_path: Path, redis_url: str, lifecycle: Log
) -> None:
    (tmp_path / "spool-out.sqlite").mkdir()  # the outbound spool cannot open
    host = Host(make_settings(tmp_path, redis_url))
    with pytest.raises(Exception):  # noqa: B017 - sqlite's own error, whatever its class
        await host.start()
    opened = _order(lifecycle, {"start", "__init__"})
    assert opened == UNTIL_THE_OUTBOUND_SPOOL
    closes = [n for n, m in lifecycle if m in {"close", "aclose"}]
    assert closes == [
        "recorder-in",
        "spool-in",
        "stream-receipts",
        "stream-events",
        "webhooks",
        "redis-webhooks",
        "redis-host",
    ]
    assert host.inbound is not None and host.inbound.spool is not None
    assert host.inbound.spool.closed
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert not [t for t in others if t.get_name().startswith("waclient")]
    await host.close()  # nothing left to close
    assert closes == [n for n, m in lifecycle if m in {"close", "aclose"}]


async def test_start_twice_is_refused(tmp_path: Path) -> None:
    host = Host(make_settings(tmp_path, None))
    async with host:
        with pytest.raises(RuntimeError, match="already started"):
            await host.start()
