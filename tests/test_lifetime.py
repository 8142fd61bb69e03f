"""waclient.lifetime: the one lifetime of every long-lived component; first the base on a
component of its own, then the same promises from each component built on it (a real
redis-server where one is needed)."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from test_host_api import make_settings
from waiting import eventually

from waclient.client import Backoff, Client
from waclient.host.healing import ClientSupervisor
from waclient.host.runtime import Host
from waclient.host.state_events import StateEvents
from waclient.lifetime import Lifetime, LifetimeError, LifetimeState
from waclient.memory import MemoryGuard, MemoryLimits
from waclient.recorders import InboundRecorder
from waclient.redis import open_redis
from waclient.scheduler import Scheduler
from waclient.transports.simulated import SimulatedTransport
from waclient.webhooks import Endpoint, WebhookDispatcher, default_sources, generate_secret

REOPEN = "is closed and cannot be reopened: create a new one"


class Component(Lifetime):
    """A component of the test's own: ``_close()`` waits for ``release`` (set by default)."""

    def __init__(self, *, hold_close: bool = False) -> None:
        self.release = asyncio.Event()
        if not hold_close:
            self.release.set()
        self.opens = 0
        self.closes = 0
        self.close_finished = False

    async def _open(self) -> None:
        self.opens += 1

    async def _close(self) -> None:
        self.closes += 1
        await self.release.wait()
        self.close_finished = True


# -- the base --------------------------------------------------------------------------------


async def test_start_once_and_reopen_is_refused() -> None:
    c = Component()
    assert c.lifetime_state is LifetimeState.UNOPENED and not c.is_open and not c.closing
    await c.start()
    assert c.is_open and c.opens == 1
    with pytest.raises(LifetimeError, match="Component is already started"):
        await c.start()
    await c.close()
    assert c.lifetime_state is LifetimeState.CLOSED and c.closing
    with pytest.raises(LifetimeError, match=f"Component {REOPEN}"):
        await c.start()
    with pytest.raises(LifetimeError, match=REOPEN):
        async with c:
            pass
    assert c.opens == 1


async def test_closing_an_unopened_component_releases_it_and_refuses_a_start() -> None:
    c = Component()
    await c.close()
    assert c.lifetime_state is LifetimeState.CLOSED and c.closes == 1 and c.opens == 0
    with pytest.raises(LifetimeError, match=REOPEN):
        await c.start()


async def test_close_is_idempotent() -> None:
    c = Component()
    async with c:
        pass
    await c.close()
    await c.close()
    assert c.closes == 1 and c.lifetime_state is LifetimeState.CLOSED


async def test_two_concurrent_closes_share_one_teardown() -> None:
    c = Component(hold_close=True)
    await c.start()
    first = asyncio.create_task(c.close())
    second = asyncio.create_task(c.close())
    await eventually(lambda: c.closes == 1, "the teardown began")
    assert c.lifetime_state is LifetimeState.CLOSING
    assert not first.done() and not second.done()  # both wait for the held teardown
    c.release.set()
    await asyncio.gather(first, second)
    assert c.closes == 1 and c.close_finished and c.lifetime_state is LifetimeState.CLOSED


async def test_a_cancelled_close_still_finishes_the_teardown() -> None:
    class Slow(Component):
        async def _close(self) -> None:
            self.closes += 1
            await asyncio.sleep(0.2)  # past the caller's 0.01 s: its timeout fires first
            self.close_finished = True

    c = Slow()
    await c.start()
    held = c.spawn(asyncio.Event().wait(), name="held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(c.close(), 0.01)
    assert c.close_finished and c.lifetime_state is LifetimeState.CLOSED
    assert held.cancelled() and c.tasks() == 0


async def test_close_from_its_own_task_returns_and_the_teardown_completes() -> None:
    c = Component()
    await c.start()
    returned = asyncio.Event()

    async def closes_its_component() -> None:
        await c.close()  # the teardown waits for this task: close() must not wait for it
        returned.set()
        await asyncio.Event().wait()  # cancelled by the teardown

    task = c.spawn(closes_its_component(), name="closer")
    await eventually(lambda: c.closing, "the task's close began")
    await c.wait_closed()
    assert returned.is_set() and task.cancelled()
    assert c.close_finished and c.lifetime_state is LifetimeState.CLOSED and c.tasks() == 0


# The coroutines of an abandoned component are reclaimed too, and asyncio reports them (the
# keeper's TaskGroup sees GeneratorExit): what this test checks is the component's own warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_garbage_collected_while_open_warns() -> None:
    c = Component()
    await c.start()
    ref = weakref.ref(c)
    del c
    with pytest.warns(ResourceWarning, match="Component was never closed"):
        await eventually(lambda: gc.collect() >= 0 and ref() is None, "the component collected")


async def test_garbage_collected_after_close_does_not_warn() -> None:
    c = Component()
    async with c:
        pass
    ref = weakref.ref(c)
    del c
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert ref() is None
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


async def test_a_failing_task_is_logged_and_counted_and_its_siblings_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while await c.sleep(0.001):
            ticks += 1

    async def failing() -> None:
        raise ValueError("boom")

    c = Component()
    async with c:
        sibling = c.spawn(ticking(), name="ticking")
        with caplog.at_level(logging.ERROR, logger="waclient.lifetime"):
            c.spawn(failing(), name="failing")
            await eventually(lambda: c.task_errors == 1, "the failure counted")
        assert "Component: a task failed" in caplog.text and "boom" in caplog.text
        seen = ticks
        await eventually(lambda: ticks > seen, "the sibling still ticking")
        assert c.is_open and not sibling.done() and c.tasks() == 1
    assert sibling.done() and c.tasks() == 0


async def test_sleep_returns_false_at_once_when_closing() -> None:
    c = Component()
    await c.start()
    outcome: list[bool] = []

    async def sleeper() -> None:
        outcome.append(await c.sleep(3600))

    c.spawn(sleeper(), name="sleeper")
    await eventually(lambda: c.tasks() == 1, "the sleeper running")
    await c.close()
    assert outcome == [False]  # it returned, it was not cancelled
    assert not await c.sleep(3600)


async def test_spawn_only_while_open() -> None:
    c = Component()

    async def work() -> None:
        pass

    with pytest.raises(LifetimeError, match="Component is not open"):
        c.spawn(work())
    async with c:
        await c.spawn(work(), name="work")
    with pytest.raises(LifetimeError, match="Component is not open"):
        c.spawn(work())


# -- every component on it -------------------------------------------------------------------


@dataclass
class Place:
    tmp: Path
    redis_url: str
    redis: Redis


async def _no_send(chat: str, text: str) -> object:
    return None


def _recorder(p: Place) -> Lifetime:
    return InboundRecorder(p.redis, spool=p.tmp / "spool-in.sqlite", key_prefix="t")


def _state_events(p: Place) -> Lifetime:
    return StateEvents(p.redis, "t:events")


def _scheduler(p: Place) -> Lifetime:
    return Scheduler(p.redis, _no_send, namespace="t:scheduler", poll_interval=0.01)


def _memory_guard(p: Place) -> Lifetime:
    limits = MemoryLimits(soft=100, hard=200, machine=250, source="test")
    return MemoryGuard(limits, measure=lambda: 10, check_interval=0.01, log_interval=0)


def _webhook_dispatcher(p: Place) -> Lifetime:
    endpoint = Endpoint("ep", "http://127.0.0.1:9/hook", (generate_secret(),))
    return WebhookDispatcher(
        p.redis, sources=default_sources("t"), static=[endpoint], key_prefix="t", poll_interval=0.05
    )


def _supervisor(p: Place) -> Lifetime:
    transport = SimulatedTransport()
    return ClientSupervisor(lambda: Client(transport, backoff=Backoff(0, 0, jitter=0)))


def _client(p: Place) -> Lifetime:
    return Client(SimulatedTransport(), backoff=Backoff(0, 0, jitter=0))


def _host(p: Place) -> Lifetime:
    return Host(make_settings(p.tmp, p.redis_url))


COMPONENTS: dict[str, tuple[Callable[[Place], Lifetime], int]] = {
    "recorder": (_recorder, 2),  # the writer and the spiller
    "state-events": (_state_events, 1),
    "scheduler": (_scheduler, 1),
    "memory-guard": (_memory_guard, 1),
    "webhook-dispatcher": (_webhook_dispatcher, 4),  # manager, notifier, a worker's two
    "healing-supervisor": (_supervisor, 1),
    "client": (_client, 2),  # the pump and the supervisor
    "host": (_host, 0),  # its components own the tasks
}
"""Each component, and the tasks it runs once open (at least)."""


@pytest.fixture
async def place(tmp_path: Path, redis_url: str) -> AsyncIterator[Place]:
    redis = open_redis(redis_url)
    yield Place(tmp_path, redis_url, redis)
    await redis.aclose()


@pytest.mark.parametrize("kind", COMPONENTS)
async def test_every_component_closes_once_and_is_never_reopened(place: Place, kind: str) -> None:
    make, running = COMPONENTS[kind]
    component = make(place)
    await component.start()
    await eventually(lambda: component.tasks() >= running, f"the {kind}'s tasks running")
    assert component.is_open
    await component.close()
    assert component.lifetime_state is LifetimeState.CLOSED and component.tasks() == 0
    await component.close()  # idempotent
    assert component.lifetime_state is LifetimeState.CLOSED and component.tasks() == 0
    with pytest.raises(LifetimeError, match=REOPEN):
        await component.start()
    assert component.tasks() == 0


@pytest.mark.parametrize("kind", COMPONENTS)
async def test_every_component_closed_unopened_refuses_a_start(place: Place, kind: str) -> None:
    component = COMPONENTS[kind][0](place)
    await component.close()
    assert component.lifetime_state is LifetimeState.CLOSED and component.tasks() == 0
    with pytest.raises(LifetimeError, match=REOPEN):
        await component.start()


async def test_the_host_closes_every_component_it_opened(place: Place) -> None:
    host = _host(place)
    assert isinstance(host, Host)
    async with host:
        parts: list[Lifetime | None] = [
            host.guard,
            host.scheduler,
            host.healing,
            host.client,
            host.webhooks,
            host.inbound,
            host.outbound,
            host.state_events,
            host.receipt_events,
        ]
        opened = [p for p in parts if p is not None]
        assert len(opened) == len(parts) and all(p.is_open for p in opened)
    assert all(p.lifetime_state is LifetimeState.CLOSED and p.tasks() == 0 for p in opened)
