"""``Lifetime``: the one lifetime of every long-lived component.

Every component that runs in the background (the client, the transports, the recorders, state
events, the scheduler, the memory guard, the webhook dispatcher, the healing supervisor, the
host) has the same three states, as httpx's clients do::

    unopened --start()--> open --close()--> closed

- ``start()`` (or ``async with``) opens it once. Starting an open component, or one that was
  closed, raises :class:`LifetimeError` with a message that says which and what to do
  (a closed component is never reopened: make a new one). A component whose ``start()`` was
  always idempotent sets :attr:`Lifetime.idempotent_start`: starting it while open does
  nothing (starting it once closed still raises).
- ``close()`` is idempotent and safe from anywhere: two tasks closing at once both wait for the
  same teardown; a ``close()`` that is cancelled (``asyncio.wait_for(c.close(), 0.01)``) still
  finishes the teardown before the cancellation goes on, so nothing the component started is
  left alive; a ``close()`` called from one of the component's own tasks (a handler the
  client's pump is running, say) starts the teardown and returns at once, because the
  teardown waits for that task to end. :meth:`wait_closed` waits for the teardown from
  anywhere else. Closing a component that was never started runs its ``_close()`` too (what
  its ``__init__`` acquired is released) and leaves it closed.
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
from typing import Any, ClassVar, Self, TypeVar

from waclient.errors import WaclientError

__all__ = ["Lifetime", "LifetimeError", "LifetimeState", "finish_regardless"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LifetimeError(WaclientError, RuntimeError):
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
    the component's tasks still run (so it can ask them to finish their work, and they may
    still :meth:`spawn` what that takes); then every task still running is cancelled and
    awaited. ``_close()`` also runs when a component that was never started is closed, so it
    releases what ``__init__`` acquired (an owned file, an HTTP client): it must not assume
    that ``_open()`` ran, or ran to its end.
    """

    lifetime_state: LifetimeState = LifetimeState.UNOPENED
    task_errors: int = 0
    """Tasks of this component that ended with an exception (each logged)."""
    idempotent_start: ClassVar[bool] = False
    """True: :meth:`start` on an open component returns at once instead of raising (for the
    components whose ``start()`` always was idempotent: a recorder's ``record()`` starts it).
    Starting a closed one raises all the same."""

    # The machinery, made by ``_lt_init()`` on first use.
    _lt_tasks: set[asyncio.Task[Any]]
    _lt_closed: asyncio.Event
    _lt_drained: asyncio.Event
    _lt_cancelling: bool
    _lt_teardown: asyncio.Task[None] | None
    _lt_keeper: asyncio.Task[None] | None
    _lt_group: asyncio.TaskGroup | None

    # -- public API ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the component (once)."""
        state = self.lifetime_state
        if state is LifetimeState.OPEN:
            if self.idempotent_start:
                return
            raise LifetimeError(f"{self._lifetime_name()} is already started")
        if state is not LifetimeState.UNOPENED:
            raise LifetimeError(
                f"{self._lifetime_name()} is closed and cannot be reopened: create a new one"
            )
        self.lifetime_state = LifetimeState.OPEN
        self._lt_init()
        try:
            ready: asyncio.Future[asyncio.TaskGroup] = asyncio.get_running_loop().create_future()
            self._lt_keeper = asyncio.create_task(
                self._keep(ready), name=f"{self._lifetime_name()}-lifetime"
            )
            self._lt_group = await ready
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the component: idempotent, concurrent, cancel-safe (see the module docs)."""
        if self.lifetime_state is LifetimeState.CLOSED:
            return
        self._lt_init()
        teardown = self._lt_teardown
        if teardown is None:
            self.lifetime_state = LifetimeState.CLOSING
            self._lt_closed.set()
            teardown = self._lt_teardown = asyncio.get_running_loop().create_task(
                self._teardown(), name=f"{self._lifetime_name()}-close"
            )
        current = asyncio.current_task()
        if current is teardown:
            return  # ``_close()`` closing its own component: the teardown is under way
        if current in self._lt_tasks:
            # The teardown waits for this very task: it cannot wait for the teardown. Its
            # error, if any, is logged rather than lost.
            teardown.add_done_callback(self._lt_report)
            return
        await finish_regardless(teardown)

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
        """Run ``coro`` as a task of this component: cancelled and awaited by its close.

        Allowed while the component is open and while ``_close()`` runs (its tasks may need
        helpers to finish their work); refused (:class:`LifetimeError`) before, and once the
        teardown cancels what is left. A task whose coroutine raises is logged, counted in
        :attr:`task_errors` and ends *cancelled*: wait for a spawned task with
        ``asyncio.wait`` or ``asyncio.gather(..., return_exceptions=True)``, or have the
        coroutine return its errors, when its outcome matters."""
        group: asyncio.TaskGroup | None = getattr(self, "_lt_group", None)
        state = self.lifetime_state
        allowed = state is LifetimeState.OPEN or (
            state is LifetimeState.CLOSING and not self._lt_cancelling
        )
        if group is None or not allowed:
            coro.close()
            raise LifetimeError(f"{self._lifetime_name()} is not open")
        task = group.create_task(self._guarded(coro), name=name)
        self._lt_tasks.add(task)
        task.add_done_callback(self._lt_tasks.discard)
        return task

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds unless the component closes first: True if the whole delay
        passed, False (at once) when it is closing."""
        self._lt_init()
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

    def _lt_init(self) -> None:
        """The lifetime's machinery, made on first use (subclasses do not call an
        ``__init__`` of this class)."""
        if getattr(self, "_lt_closed", None) is not None:
            return
        self._lt_tasks = set()
        self._lt_closed = asyncio.Event()
        self._lt_drained = asyncio.Event()
        self._lt_cancelling = False
        self._lt_teardown = None
        self._lt_keeper = None
        self._lt_group = None

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
            self._lt_cancelling = True
            while pending := list(self._lt_tasks):
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            self._lt_drained.set()
            if self._lt_keeper is not None:
                await asyncio.gather(self._lt_keeper, return_exceptions=True)
            self.lifetime_state = LifetimeState.CLOSED

    def _lt_report(self, teardown: asyncio.Task[None]) -> None:
        if not teardown.cancelled() and (exc := teardown.exception()) is not None:
            log.error("%s: closing failed", self._lifetime_name(), exc_info=exc)

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
