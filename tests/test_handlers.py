"""The Scopes CONTRACT: registration lives in a scope and ends with it."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref

import pytest

from waclient import HandlerRegistry, ListenerLimitError, ScopeClosedError
from waclient.events import ConnectedEv, DisconnectedEv, MessageEv


def test_leaving_a_scope_removes_its_handlers() -> None:
    reg = HandlerRegistry()
    seen: list[str] = []
    with reg.scope() as scope:
        sub = scope.on(MessageEv, lambda ev: seen.append("a"))
        assert reg.count() == 1 and reg.count(MessageEv) == 1 and reg.count(ConnectedEv) == 0
        assert reg.dispatch(MessageEv()) == 1
    assert reg.count() == 0
    assert not sub.active
    assert reg.dispatch(MessageEv()) == 0
    assert seen == ["a"]


def test_remove_is_idempotent_and_keeps_others() -> None:
    reg = HandlerRegistry()
    scope = reg.scope()
    first = scope.on(MessageEv, lambda ev: None)
    scope.on(MessageEv, lambda ev: None)
    first.remove()
    first.remove()
    assert reg.count(MessageEv) == 1 and scope.count() == 1
    scope.close()
    scope.close()
    assert reg.count() == 0


def test_dispatch_order_is_registration_order_across_scopes() -> None:
    reg = HandlerRegistry()
    order: list[int] = []
    outer = reg.scope()
    inner = outer.scope()
    outer.on(MessageEv, lambda ev: order.append(1))
    inner.on(MessageEv, lambda ev: order.append(2))
    outer.on(MessageEv, lambda ev: order.append(3))
    reg.dispatch(MessageEv())
    assert order == [1, 2, 3]


def test_closing_a_parent_closes_its_children() -> None:
    reg = HandlerRegistry()
    parent = reg.scope("parent")
    child = parent.scope("child")
    grandchild = child.scope()
    for s in (parent, child, grandchild):
        s.on(ConnectedEv, lambda ev: None)
    assert parent.count() == 3 and child.count() == 2 and grandchild.count() == 1
    parent.close()
    assert child.closed and grandchild.closed and reg.count() == 0
    with pytest.raises(ScopeClosedError):
        child.on(MessageEv, lambda ev: None)
    with pytest.raises(ScopeClosedError):
        parent.scope()


def test_closing_a_child_leaves_the_parent() -> None:
    reg = HandlerRegistry()
    parent = reg.scope()
    parent.on(MessageEv, lambda ev: None)
    with parent.scope() as child:
        child.on(MessageEv, lambda ev: None)
        assert parent.count() == 2
    assert parent.count() == 1 and reg.count() == 1


def test_a_scope_is_used_once() -> None:
    reg = HandlerRegistry()
    scope = reg.scope()
    with scope:
        pass
    with pytest.raises(RuntimeError, match="used once"), scope:
        pass
    entered = reg.scope()
    with entered, pytest.raises(RuntimeError, match="used once"), entered:
        pass


async def test_async_with_scope() -> None:
    reg = HandlerRegistry()
    async with reg.scope() as scope:
        scope.on(MessageEv, lambda ev: None)
        assert reg.count() == 1
    assert reg.count() == 0


def test_a_raising_handler_is_counted_and_dispatch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = HandlerRegistry()
    seen: list[str] = []

    def boom(ev: object) -> None:
        raise ValueError("boom")

    with reg.scope() as scope:
        scope.on(MessageEv, boom)
        scope.on(MessageEv, lambda ev: seen.append("after"))
        with caplog.at_level(logging.ERROR):
            assert reg.dispatch(MessageEv()) == 2
    assert seen == ["after"]
    assert reg.handler_errors == 1
    assert "boom" in caplog.text


async def test_async_handlers_are_awaited_in_order_by_dispatch_async() -> None:
    reg = HandlerRegistry()
    order: list[str] = []

    async def slow(ev: object) -> None:
        await asyncio.sleep(0.01)
        order.append("slow")

    async def failing(ev: object) -> None:
        raise RuntimeError("async boom")

    with reg.scope() as scope:
        scope.on(MessageEv, slow)
        scope.on(MessageEv, failing)
        scope.on(MessageEv, lambda ev: order.append("sync"))
        await reg.dispatch_async(MessageEv())
    assert order == ["slow", "sync"]
    assert reg.handler_errors == 1


async def test_sync_dispatch_runs_async_handlers_as_tracked_tasks() -> None:
    reg = HandlerRegistry()
    done = asyncio.Event()

    async def handler(ev: object) -> None:
        done.set()

    async def failing(ev: object) -> None:
        raise RuntimeError("in task")

    with reg.scope() as scope:
        scope.on(MessageEv, handler)
        scope.on(MessageEv, failing)
        reg.dispatch(MessageEv())
        assert reg.pending_tasks == 2
        await asyncio.wait_for(done.wait(), 5)
        while reg.pending_tasks:  # noqa: ASYNC110 - the registry offers no event for this
            await asyncio.sleep(0)
    assert reg.handler_errors == 1


def test_async_handler_without_a_loop_is_an_error_not_a_leak() -> None:
    reg = HandlerRegistry()

    async def handler(ev: object) -> None:
        raise AssertionError("never runs")

    with reg.scope() as scope:
        scope.on(MessageEv, handler)
        reg.dispatch(MessageEv())
    assert reg.handler_errors == 1 and reg.pending_tasks == 0


def test_max_listener_sentinel_warns_once_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    reg = HandlerRegistry(max_listeners=3)
    scope = reg.scope()
    scope.on(ConnectedEv, lambda ev: None)
    with caplog.at_level(logging.WARNING):
        for _ in range(6):
            scope.on(MessageEv, lambda ev: None)
    warnings = [r for r in caplog.records if "pass the limit" in r.getMessage()]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "4 handlers for Message" in message and "Connected=1" in message
    assert reg.count(MessageEv) == 6


def test_max_listener_sentinel_rearms_after_the_count_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = HandlerRegistry(max_listeners=1)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with reg.scope() as scope:
                scope.on(MessageEv, lambda ev: None)
                scope.on(MessageEv, lambda ev: None)
    assert sum("pass the limit" in r.getMessage() for r in caplog.records) == 2


def test_strict_mode_refuses_past_the_limit() -> None:
    reg = HandlerRegistry(max_listeners=2, strict=True)
    scope = reg.scope()
    scope.on(DisconnectedEv, lambda ev: None)
    scope.on(DisconnectedEv, lambda ev: None)
    with pytest.raises(ListenerLimitError, match="Disconnected=3"):
        scope.on(DisconnectedEv, lambda ev: None)
    assert reg.count(DisconnectedEv) == 2


def test_no_reference_to_a_handler_or_scope_survives_its_scope() -> None:
    reg = HandlerRegistry()

    class Handler:
        def __call__(self, ev: object) -> None:
            pass

    handler = Handler()
    handler_ref = weakref.ref(handler)
    scope = reg.scope()
    scope_ref = weakref.ref(scope)
    child = scope.scope()
    child_ref = weakref.ref(child)
    sub = child.on(MessageEv, handler)
    del handler, child
    scope.close()
    del scope
    gc.collect()
    assert handler_ref() is None and scope_ref() is None and child_ref() is None
    assert sub.handler is None and not sub.active  # the user's Subscription holds nothing


def test_non_callable_handler_is_rejected() -> None:
    reg = HandlerRegistry()
    with pytest.raises(TypeError, match="callable"):
        reg.scope().on(MessageEv, "not a function")  # type: ignore[arg-type]


def test_dispatch_from_other_threads_while_scopes_churn() -> None:
    reg = HandlerRegistry(max_listeners=None)
    keeper = reg.scope()
    calls = [0]
    keeper.on(MessageEv, lambda ev: calls.__setitem__(0, calls[0] + 1))
    stop = threading.Event()
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            while not stop.is_set():
                reg.dispatch(MessageEv())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2000):
        with reg.scope() as scope:
            scope.on(MessageEv, lambda ev: None)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and reg.count() == 1 and calls[0] > 0 and reg.handler_errors == 0
