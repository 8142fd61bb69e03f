"""Scoped handler registration: every handler lives in a scope and dies with it.

neonize keeps one handler per event type and has no way to remove one, so applications grow
their own registries and re-add listeners on every reconnect. Here a handler can only be added
through a :class:`Scope`; when the scope ends (a ``with`` block, one connection, the client's
life) every handler it holds is removed and no reference to it is kept. Counts are visible
per event type and per scope, and a max-listener sentinel names the type that grows.

Dispatch is safe to call from any thread: the per-type handler lists are immutable tuples
replaced on registration and removal, so a dispatch in flight sees a consistent snapshot.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from waclient.errors import WaclientError

__all__ = [
    "Handler",
    "HandlerRegistry",
    "ListenerLimitError",
    "Scope",
    "ScopeClosedError",
    "Subscription",
]

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[E], "Awaitable[object] | object"]
"""A handler takes the event; it may be a plain function or a coroutine function.

Events are keyed by their exact class: the neonize protobuf types of :mod:`waclient.events`,
and the library's own (``SentMessage`` after a send) or an application's.
"""


class ListenerLimitError(WaclientError, RuntimeError):
    """Raised in strict mode when a registration would pass the registry's max-listener limit."""


class ScopeClosedError(WaclientError, RuntimeError):
    """Raised when a handler is added to, or a child opened in, a scope that has ended."""


class Subscription(Generic[E]):
    """One registered handler. ``remove()`` is idempotent and drops the handler."""

    __slots__ = ("__weakref__", "_handler", "_registry", "_scope", "event_type", "seq")

    def __init__(
        self,
        registry: HandlerRegistry,
        scope: Scope,
        event_type: type[E],
        handler: Handler[E],
        seq: int,
    ) -> None:
        self._registry: HandlerRegistry | None = registry
        self._scope: Scope | None = scope
        self._handler: Handler[E] | None = handler
        self.event_type = event_type
        self.seq = seq

    @property
    def active(self) -> bool:
        """True until the subscription is removed or its scope ends."""
        return self._handler is not None

    @property
    def handler(self) -> Handler[E] | None:
        """The handler while active, else None."""
        return self._handler

    def remove(self) -> None:
        """Unregister the handler and drop every reference this subscription holds."""
        registry, scope = self._registry, self._scope
        if registry is None or scope is None:
            return
        registry._unregister(self)
        scope._forget(self)
        self._handler = None
        self._registry = None
        self._scope = None

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<Subscription {self.event_type.__name__} #{self.seq} {state}>"


class Scope:
    """A lifetime for handlers. Leaving it (``with``/``async with``/``close()``) removes them all.

    A scope is open from creation and is used once: entering it twice, or entering a closed
    scope, raises. Children opened with :meth:`scope` close when their parent closes.
    """

    def __init__(self, registry: HandlerRegistry, name: str, parent: Scope | None = None) -> None:
        self.name = name
        self._registry: HandlerRegistry | None = registry
        self._parent = parent
        self._subs: dict[int, Subscription[Any]] = {}
        self._children: dict[int, Scope] = {}
        self._entered = False
        self._closed = False
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------------

    def on(self, event_type: type[E], handler: Handler[E]) -> Subscription[E]:
        """Register ``handler`` for ``event_type`` for as long as this scope lives."""
        with self._lock:
            registry = self._live_registry()
            sub = registry._register(self, event_type, handler)
            self._subs[sub.seq] = sub
            return sub

    def scope(self, name: str | None = None) -> Scope:
        """Open a child scope; it ends no later than this one."""
        with self._lock:
            registry = self._live_registry()
            child = Scope(registry, name or f"{self.name}/{registry._next_scope_id()}", self)
            self._children[id(child)] = child
            return child

    def count(self, event_type: type[Any] | None = None) -> int:
        """Live handlers held by this scope and its children, of one type or of all types."""
        with self._lock:
            own = sum(
                1 for s in self._subs.values() if event_type is None or s.event_type is event_type
            )
            return own + sum(c.count(event_type) for c in list(self._children.values()))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Remove every handler of this scope and its children. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children, self._children = list(self._children.values()), {}
            subs, self._subs = list(self._subs.values()), {}
        for child in children:
            child.close()
        for sub in subs:
            sub.remove()
        parent, self._parent, self._registry = self._parent, None, None
        if parent is not None:
            parent._forget_child(self)

    def __enter__(self) -> Self:
        with self._lock:
            if self._entered or self._closed:
                raise RuntimeError(f"scope {self.name!r} is used once; it cannot be entered again")
            self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.count()} handlers"
        return f"<Scope {self.name!r} {state}>"

    # -- helpers ----------------------------------------------------------------------------

    def _live_registry(self) -> HandlerRegistry:
        if self._closed or self._registry is None:
            raise ScopeClosedError(f"scope {self.name!r} has ended")
        return self._registry

    def _forget(self, sub: Subscription[Any]) -> None:
        with self._lock:
            self._subs.pop(sub.seq, None)

    def _forget_child(self, child: Scope) -> None:
        with self._lock:
            self._children.pop(id(child), None)


class HandlerRegistry:
    """Live handlers per event type, in registration order, added only through scopes.

    ``max_listeners`` is the limit per event type: passing it logs a warning naming the counts
    per type (once each time the limit is crossed), or raises :class:`ListenerLimitError` in
    ``strict`` mode (meant for tests). ``None`` switches the sentinel off. ``accepts`` limits
    the event types handlers may be registered for: any other raises ``TypeError`` at
    registration (a handler for a type nobody dispatches would never fire).
    """

    def __init__(
        self,
        max_listeners: int | None = 100,
        *,
        strict: bool = False,
        name: str = "registry",
        accepts: Callable[[type[Any]], bool] | None = None,
    ) -> None:
        self.max_listeners = max_listeners
        self.accepts = accepts
        self.strict = strict
        self.name = name
        self.handler_errors = 0
        """Handlers that raised (or whose coroutine raised) since the registry was made."""
        self._by_type: dict[type[Any], tuple[Subscription[Any], ...]] = {}
        self._warned: set[type[Any]] = set()
        self._seq = itertools.count(1)
        self._scope_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[object]] = set()

    # -- public API -------------------------------------------------------------------------

    def scope(self, name: str | None = None) -> Scope:
        """A new top-level scope."""
        return Scope(self, name or f"{self.name}/{self._next_scope_id()}")

    def count(self, event_type: type[Any] | None = None) -> int:
        """Live handlers of one type, or of all types."""
        if event_type is not None:
            return len(self._by_type.get(event_type, ()))
        return sum(len(subs) for subs in list(self._by_type.values()))

    def counts(self) -> dict[str, int]:
        """Live handlers per event type name (types with none are left out)."""
        return {t.__name__: len(s) for t, s in list(self._by_type.items()) if s}

    @property
    def pending_tasks(self) -> int:
        """Coroutines of async handlers scheduled by :meth:`dispatch` and not finished yet."""
        return len(self._tasks)

    def dispatch(self, event: object) -> int:
        """Call every live handler of ``type(event)`` in registration order; return how many.

        A handler that raises is logged and counted and does not stop the others. A coroutine
        returned by an async handler runs as a task on the running loop of this thread, kept
        referenced until it ends; use :meth:`dispatch_async` to await them in order instead.
        """
        subs = self._by_type.get(type(event), ())
        for sub in subs:  # the hot path: kept inline
            handler = sub._handler
            if handler is None:  # removed while this dispatch was in flight
                continue
            try:
                result = handler(event)
            except Exception:
                self._record_error(sub)
                continue
            if result is not None and inspect.isawaitable(result):
                self._schedule(sub, result)
        return len(subs)

    async def dispatch_async(self, event: object) -> int:
        """Like :meth:`dispatch`, but awaits each async handler before calling the next."""
        subs = self._by_type.get(type(event), ())
        for sub in subs:
            result = self._call(sub, event)
            if result is not None and inspect.isawaitable(result):
                try:
                    await result
                except Exception:
                    self._record_error(sub)
        return len(subs)

    # -- helpers ----------------------------------------------------------------------------

    def _next_scope_id(self) -> int:
        return next(self._scope_ids)

    def _register(self, scope: Scope, event_type: type[E], handler: Handler[E]) -> Subscription[E]:
        if not callable(handler):
            raise TypeError(f"handler for {event_type!r} must be callable, not {handler!r}")
        if self.accepts is not None and not (
            isinstance(event_type, type) and self.accepts(event_type)
        ):
            raise TypeError(f"{self.name} dispatches no events of type {event_type!r}")
        with self._lock:
            current = self._by_type.get(event_type, ())
            limit = self.max_listeners
            if limit is not None and len(current) >= limit:
                self._over_limit(event_type, len(current) + 1)
            sub: Subscription[E] = Subscription(self, scope, event_type, handler, next(self._seq))
            self._by_type[event_type] = (*current, sub)
            return sub

    def _unregister(self, sub: Subscription[Any]) -> None:
        with self._lock:
            current = self._by_type.get(sub.event_type, ())
            remaining = tuple(s for s in current if s is not sub)
            if remaining:
                self._by_type[sub.event_type] = remaining
            else:
                self._by_type.pop(sub.event_type, None)
            limit = self.max_listeners
            if limit is not None and len(remaining) < limit:
                self._warned.discard(sub.event_type)

    def _over_limit(self, event_type: type[Any], would_be: int) -> None:
        counts = {t.__name__: len(s) for t, s in self._by_type.items() if s}
        counts[event_type.__name__] = would_be
        detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        message = (
            f"{self.name}: {would_be} handlers for {event_type.__name__} pass the limit of "
            f"{self.max_listeners}; a scope is probably not being closed (counts: {detail})"
        )
        if self.strict:
            raise ListenerLimitError(message)
        if event_type not in self._warned:
            self._warned.add(event_type)
            log.warning(message)

    def _call(self, sub: Subscription[Any], event: object) -> object:
        handler = sub._handler
        if handler is None:  # removed while this dispatch was in flight
            return None
        try:
            return handler(event)
        except Exception:
            self._record_error(sub)
            return None

    def _schedule(self, sub: Subscription[Any], awaitable: Awaitable[object]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            log.error(
                "async handler for %s dispatched outside an event loop; use dispatch_async",
                sub.event_type.__name__,
            )
            self.handler_errors += 1
            return
        task: asyncio.Task[object] = loop.create_task(_as_coroutine(awaitable))
        self._tasks.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                self.handler_errors += 1
                log.error("async handler for %s raised", sub.event_type.__name__, exc_info=exc)

        task.add_done_callback(done)

    def _record_error(self, sub: Subscription[Any]) -> None:
        self.handler_errors += 1
        log.exception("handler for %s raised; dispatch goes on", sub.event_type.__name__)


async def _as_coroutine(awaitable: Awaitable[object]) -> object:
    return await awaitable
