"""The real neonize client through real connect failures (a loopback SOCKS5 server that refuses)."""

from __future__ import annotations

import asyncio
import random
import threading

from harness.faults import Socks5Refuser
from waclient import Backoff, Client, ClientState, NeonizeTransport, StateChange
from waclient.events import SUPPORTED_EVENTS, event_code


async def _threads_settle(baseline: set[int], attempts: int = 100) -> set[int]:
    extra: set[int] = set()
    for _ in range(attempts):
        extra = {t.ident for t in threading.enumerate() if t.ident is not None} - baseline
        if not extra:
            break
        await asyncio.sleep(0.05)
    return extra


async def test_supervisor_retries_real_failures_with_backoff_then_fails(
    socks5_refuser: Socks5Refuser, tmp_path: object
) -> None:
    baseline = {t.ident for t in threading.enumerate() if t.ident is not None}
    backoff = Backoff(initial=0.01, maximum=0.04, factor=2, jitter=0.5)
    transport = NeonizeTransport(
        f"{tmp_path}/session.db", name="refused", proxy=socks5_refuser.address
    )
    changes: list[StateChange] = []
    async with Client(transport, backoff=backoff, max_failures=5, rng=random.Random(1)) as client:
        client.on(StateChange, changes.append)
        assert await client.wait_for(ClientState.FAILED, timeout=60) is ClientState.FAILED
        assert "failed to dial" in (client.last_error or "")
        assert client.attempts == 5 and client.failures == 5
    assert socks5_refuser.attempts >= 5
    assert socks5_refuser.last_target is not None
    assert socks5_refuser.last_target[0] == "web.whatsapp.com"

    delays = [c.delay for c in changes if c.new is ClientState.BACKOFF]
    assert len(delays) == 4
    for failures, delay in enumerate(delays, start=1):
        assert delay is not None
        ceiling = backoff.ceiling(failures)
        assert ceiling * (1 - backoff.jitter) <= delay <= ceiling
    assert [c.new for c in changes][-1] is ClientState.FAILED
    assert not await _threads_settle(baseline), "a thread outlived the failed client"


def test_bridge_installs_one_handler_per_supported_event(tmp_path: object) -> None:
    transport = NeonizeTransport(f"{tmp_path}/session.db", name="bridge")
    installed = transport._session.client.event.list_func
    assert set(installed) == {event_code(t) for t in SUPPORTED_EVENTS}
    assert len({id(fn) for fn in installed.values()}) == 1  # ONE bridge, not a weak method
    assert all(callable(fn) for fn in installed.values())
