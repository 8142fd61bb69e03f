"""``Lifetime``: the one lifetime of every long-lived component.

Every component that runs in the background (the client, the transports, the recorders, state
events, the scheduler, the memory guard, the webhook dispatcher, the healing supervisor, the
host) has the same three states, as httpx's clients do::

    unopened --start()--> open --close()--> closed

- ``start()`` (or ``async with``) opens it once. Starting an open component, or one that was
  closed, raises :class:`LifetimeError` with a message that says which and what to do
  (a closed component is never reopened: make a new one).
- ``close()`` is idempotent and safe from anywhere: two tasks closing at once both wait for the
  same teardown; a ``close()`` that is cancelled (``asyncio.wait_for(c.close(), 0.01)``) still
  finishes the teardown before the cancellation goes on, so nothing the component started is
  left alive; a ``close()`` called from one of the component's own tasks (a handler the
  client's pump is running, say) starts the teardown and returns at once, because the
  teardown waits for that task to end. :meth:`wait_closed` waits for the teardown from
  anywhere else.
- Every task the component starts is :meth:`spawn`-ed into one :class:`asyncio.TaskGroup`,
  kept by a task of the lifetime's own; the teardown first runs the component's ``_close()``
  (stop taking work, flush), then cancels what is still running and waits for it. One failing
  task does not stop the others: a component's task that raises is logged and counted
  (:attr:`Lifetime.task_errors`).
- :meth:`sleep` is the one "sleep unless closed": it returns ``False`` at once when the
  component closes.
- A component garbage-collected while open emits a :class:`ResourceWarning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import warnings
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

__all__ = ["Lifetime", "LifetimeError", "LifetimeState", "finish_regardless"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LifetimeError(RuntimeError):
    """A component was started twice, or started after it was closed."""


class LifetimeState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Lifetime:
    """Base of every long-lived component; subclasses implement ``_open()`` and ``_close()``.

    ``_open()`` runs inside :meth:`start` (spawn the component's tasks there); if it raises,
    the teardown runs and the error propagates. ``_close()`` runs first in the teardown, while
    the component's tasks still run (so it can ask them to finish their work); then every task
    still running is cancelled and awaited.
    """

    lifetime_state: LifetimeState = LifetimeState.UNOPENED
    task_errors: int = 0
    """Tasks of this component that ended with an exception (each logged)."""

    # -- public API ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the component (once)."""
        state = self.lifetime_state
        if state is LifetimeState.OPEN:
            raise LifetimeError(f"{self._lifetime_name()} is already started")
        if state is not LifetimeState.UNOPENED:
            raise LifetimeError(
                f"{self._lifetime_name()} is closed and cannot be reopened: create a new one"
            )
        self.lifetime_state = LifetimeState.OPEN
        self._lt_tasks: set[asyncio.Task[Any]] = set()
        self._lt_closed = asyncio.Event()
        self._lt_drained = asyncio.Event()
        self._lt_teardown: asyncio.Task[None] | None = None
        ready: asyncio.Future[asyncio.TaskGroup] = asyncio.get_running_loop().create_future()
        self._lt_keeper = asyncio.create_task(
            self._keep(ready), name=f"{self._lifetime_name()}-lifetime"
        )
        self._lt_group = await ready
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the component: idempotent, concurrent, cancel-safe (see the module docs)."""
        state = self.lifetime_state
        if state is LifetimeState.UNOPENED:
            self.lifetime_state = LifetimeState.CLOSED
            return
        if self._lt_teardown is None:
            self.lifetime_state = LifetimeState.CLOSING
            self._lt_closed.set()
            self._lt_teardown = asyncio.get_running_loop().create_task(
                self._teardown(), name=f"{self._lifetime_name()}-close"
            )
        if asyncio.current_task() in self._lt_tasks:
            return  # the teardown waits for this very task: it cannot wait for the teardown
        await finish_regardless(self._lt_teardown)

    async def wait_closed(self) -> None:
        """Wait until a close that has begun has finished (returns at once if unopened)."""
        teardown = getattr(self, "_lt_teardown", None)
        if teardown is not None:
            await finish_regardless(teardown)

    @property
    def is_open(self) -> bool:
        """Started and not closing."""
        return self.lifetime_state is LifetimeState.OPEN

    @property
    def closing(self) -> bool:
        """``close()`` has begun (or finished)."""
        return self.lifetime_state in (LifetimeState.CLOSING, LifetimeState.CLOSED)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this component: cancelled and awaited by its close."""
        if self.lifetime_state is not LifetimeState.OPEN and not self._in_teardown():
            coro.close()
            raise LifetimeError(f"{self._lifetime_name()} is not open")
        task = self._lt_group.create_task(self._guarded(coro), name=name)
        self._lt_tasks.add(task)
        task.add_done_callback(self._lt_tasks.discard)
        return task

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds unless the component closes first: True if the whole delay
        passed, False (at once) when it is closing."""
        closed = self._lt_closed
        if closed.is_set():
            return False
        if delay <= 0:
            await asyncio.sleep(0)
            return not closed.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await closed.wait()
        return not closed.is_set()

    def tasks(self) -> int:
        """Tasks of this component still running (for ``statistics()`` and tests)."""
        return len(getattr(self, "_lt_tasks", ()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if self.lifetime_state is LifetimeState.OPEN:
            warnings.warn(
                f"{self._lifetime_name()} was never closed: use `async with` or await close()",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )

    # -- for subclasses ------------------------------------------------------------------------

    async def _open(self) -> None:
        """Start the component's work (spawn its tasks)."""

    async def _close(self) -> None:
        """Ask the component's work to end; its tasks are cancelled after this returns."""

    def _lifetime_name(self) -> str:
        return type(self).__name__

    # -- helpers -------------------------------------------------------------------------------

    async def _keep(self, ready: asyncio.Future[asyncio.TaskGroup]) -> None:
        """The lifetime's own task: holds the task group open until the teardown ends it."""
        async with asyncio.TaskGroup() as group:
            ready.set_result(group)
            await self._lt_closed.wait()
            await self._lt_drained.wait()

    async def _teardown(self) -> None:
        try:
            await self._close()
        finally:
            current = asyncio.current_task()
            while pending := [t for t in self._lt_tasks if t is not current]:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            self._lt_drained.set()
            await asyncio.gather(self._lt_keeper, return_exceptions=True)
            self.lifetime_state = LifetimeState.CLOSED

    def _in_teardown(self) -> bool:
        teardown = getattr(self, "_lt_teardown", None)
        return teardown is not None and asyncio.current_task() is teardown

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        """A task that raises is logged and counted; it does not stop its siblings."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.task_errors += 1
            log.exception("%s: a task failed", self._lifetime_name())
            raise asyncio.CancelledError from None


async def finish_regardless(task: asyncio.Future[T]) -> T:
    """Await ``task``; if the caller is cancelled meanwhile, keep waiting for the task to finish,
    then let the cancellation through. For teardowns that must complete whatever happens."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
