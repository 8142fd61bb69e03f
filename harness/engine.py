"""Run a soak in this process: setup, warm-up, measured cycles, tracked cycles, the verdict.

The phases, on one cycle loop (:meth:`_Run._cycles`) whatever the cycle is, sync or async:

1. **warm-up** (untracked, not analysed): caches, imports and first-time paths settle;
2. **measured** (untracked): every channel sampled; the verdict on memory is decided on these
   samples only, so no tracker's own memory is in it. While a channel is still settling
   (growth that decelerates) the run goes on, doubling the measured cycles up to
   ``max_cycles``; still settling then is the answer "undecided";
3. **tracked**: ``tracked_cycles`` more under memray, for the leak sites: what those cycles
   allocated and left live. Sampled for the plot, not analysed.

The steps are one generator (:meth:`_Run.steps`) that yields the awaitables an async cycle
returns: :func:`soak` drives it without a loop (or on a new one when anything is async),
:func:`soak_async` on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec

from harness.analysis import Verdict, decide, gc_type_counts, leak_sites_from_capture
from harness.config import Config, Settings, configure
from harness.errors import (
    CycleError,
    CycleTimeout,
    ScenarioError,
    SoakError,
    SoakTimeout,
    UsageError,
    innermost,
)
from harness.model import (
    Cycle,
    Progress,
    Scenario,
    Workload,
    as_scenario,
    is_async_callable,
    open_async,
    open_sync,
)
from harness.probes import (
    ListenerSource,
    Probe,
    Sampler,
    apply_thresholds,
    default_probes,
    freeze,
    unfreeze,
)
from harness.threads import Frames, stacks_now, thread_starts

__all__ = ["soak", "soak_async"]

Steps = Generator[Awaitable[Any], None, None]
P = ParamSpec("P")
HARD_STOP_GRACE = 5.0
"""Seconds an async run (or cycle) gets to cancel itself cleanly at its deadline before SIGALRM."""


# -- the public API --------------------------------------------------------------------------------


def soak(
    cycle: Cycle | Scenario | Callable[[], Any],
    cycles: int | None = None,
    warmup: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    probes: Sequence[Probe] | Mapping[str, Callable[[], float]] | None = None,
    registry: ListenerSource | Sequence[ListenerSource] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    memray: bool | None = None,
    timeout: float | None = None,
    progress: bool | Progress = False,
    *,
    name: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> Verdict:
    """Run ``cycle`` (or a scenario) ``cycles`` times and say whether memory stays bounded.

    ``cycles`` counts the warm-up (default: 10 %, 10 to 1,000; untracked, not analysed) and
    the measured cycles (untracked, sampled, decided on); then ``tracked_cycles`` more run
    under memray for the leak sites (``memray=False`` skips them). Other ``options`` are the
    fields of :class:`harness.config.Settings` (``max_cycles``, ``confidence``,
    ``native_traces``, ``expect_leak``, ``baseline``...); ``settings`` is a layer below the
    call's own arguments. Raises :class:`CycleError` when a cycle raises,
    :class:`SoakTimeout` past ``timeout`` seconds, :class:`CycleTimeout` (a SoakTimeout) when
    one cycle runs past ``cycle_timeout`` seconds (a stall), :class:`ScenarioError` when a
    scenario's setup fails, :class:`UsageError` on bad arguments. Async cycles and scenarios
    run on one new event loop; inside a running loop use :func:`soak_async`.
    """
    sc = as_scenario(cycle, name)
    needs_loop = sc.is_async or is_async_callable(cycle)
    if needs_loop and _running_loop():
        raise UsageError("soak() called inside a running event loop: use `await soak_async(...)`")
    run = _prepare(sc, locals(), options, settings)
    # A hung sync cycle can only be interrupted by a signal; async runs get a clean
    # cancellation at the deadline first, and the signal only if the loop itself is stuck.
    if needs_loop:
        run.grace = HARD_STOP_GRACE
    with run.guarded(), _alarm(run):
        if sc.is_async:
            asyncio.run(_run_async_scenario(sc, run))
        else:
            _run_sync_scenario(sc, run)
    return run.verdict()


def _async_twin(
    sync: Callable[P, Verdict],
) -> Callable[[Callable[..., Awaitable[Verdict]]], Callable[P, Awaitable[Verdict]]]:
    """Give an async function the signature of ``sync`` (one parameter list, two drivers)."""

    def wrap(fn: Callable[..., Awaitable[Verdict]]) -> Callable[P, Awaitable[Verdict]]:
        fn.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
        return fn

    return wrap


@_async_twin(soak)
async def soak_async(*args: Any, **kwargs: Any) -> Verdict:
    """:func:`soak` on the running event loop (for async tests and applications)."""
    bound = inspect.signature(soak).bind(*args, **kwargs)
    bound.apply_defaults()
    call = dict(bound.arguments)
    sc = as_scenario(call["cycle"], call["name"])
    run = _prepare(sc, call, call.pop("options"), call["settings"])
    with run.guarded():
        await _run_async_scenario(sc, run)
    return run.verdict()


_CALL_SETTINGS = ("cycles", "warmup", "thresholds", "report_dir", "memray", "timeout")


def _prepare(
    sc: Scenario, call: dict[str, Any], options: dict[str, Any], settings: Settings | None
) -> _Run:
    """The run of ``sc``: its settings merged (scenario < ``settings`` < the call)."""
    layer = Settings.of(**{k: call[k] for k in _CALL_SETTINGS}, **options)
    cfg = configure(sc.name, sc.settings, settings or Settings(), layer)
    return _Run(cfg, _probe_list(call["probes"]), _registries(call["registry"]),
                _progress(call["progress"], sc.name))  # fmt: skip


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _probe_list(probes: Sequence[Probe] | Mapping[str, Callable[[], float]] | None) -> list[Probe]:
    if probes is None:
        return []
    if isinstance(probes, Mapping):
        return [Probe(name, fn) for name, fn in probes.items()]
    out = list(probes)
    for p in out:
        if not isinstance(p, Probe):
            raise UsageError(
                f"probes must be Probe objects or a mapping name -> callable, not {p!r}"
            )
    return out


def _registries(registry: ListenerSource | Sequence[ListenerSource] | None) -> list[Any]:
    if registry is None:
        return []
    if isinstance(registry, (list, tuple)):
        return list(registry)
    return [registry]


def _progress(progress: bool | Progress | None, name: str) -> Progress | None:
    if progress is True:
        from harness.report import ProgressBar

        return ProgressBar(name)
    if progress is False or progress is None:
        return None
    return progress


# -- drivers: the same steps, with and without an event loop ---------------------------------------


def _drive_sync(steps: Steps) -> None:
    """Run the steps of a sync cycle: an awaitable from it is a usage error."""
    for awaitable in steps:
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning
        steps.throw(
            UsageError(
                "a cycle returned an awaitable but is not an async function; declare it `async def`"
            )
        )


async def _drive_async(steps: Steps) -> None:
    """Run the steps on the running loop, awaiting what the cycle returns."""
    try:
        awaitable = next(steps)
        while True:
            try:
                await awaitable
            except BaseException as exc:  # into the loop, which names the cycle
                awaitable = steps.throw(exc)
            else:
                awaitable = next(steps)
    except StopIteration:
        return


def _run_sync_scenario(sc: Scenario, run: _Run) -> None:
    run.report("setup")
    try:
        opened = open_sync(sc)
        workload = opened.__enter__()
    except SoakError:
        raise
    except Exception as exc:
        raise ScenarioError(f"setup of {sc.name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        if is_async_callable(workload.cycle):
            run.grace = HARD_STOP_GRACE  # the loop's own timeouts cancel the cycle cleanly first
            asyncio.run(run.timed(_drive_async(run.steps(workload))))
        else:
            _drive_sync(run.steps(workload))
    except BaseException:
        run.abort()
        opened.__exit__(*sys.exc_info())
        raise
    run.report("teardown")
    try:
        opened.__exit__(None, None, None)
    except Exception as exc:
        run.notes.append(f"teardown raised {type(exc).__name__}: {exc}")


async def _run_async_scenario(sc: Scenario, run: _Run) -> None:
    run.report("setup")
    try:
        async with run.deadline_scope():
            try:
                opened = open_async(sc)
                workload = await opened.__aenter__()
            except (SoakError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise ScenarioError(
                    f"setup of {sc.name} failed: {type(exc).__name__}: {exc}"
                ) from exc
            try:
                await _drive_async(run.steps(workload))
            except BaseException as exc:
                run.abort()
                with contextlib.suppress(Exception):
                    await _tear_down_after(opened, exc)
                raise
    except TimeoutError:
        if run.cfg.timeout is None:
            raise
        raise run.timeout_error() from None
    run.report("teardown")
    try:
        await opened.__aexit__(None, None, None)
    except Exception as exc:
        run.notes.append(f"teardown raised {type(exc).__name__}: {exc}")


async def _tear_down_after(opened: Any, exc: BaseException) -> None:
    """The scenario's teardown after its cycles failed. After a stall, within the cycle's
    deadline again: what held the cycle may hold the teardown too, and the soak must end."""
    if not isinstance(exc, CycleTimeout):
        await opened.__aexit__(type(exc), exc, exc.__traceback__)
        return
    deadline = asyncio.timeout(exc.timeout)
    try:
        async with deadline:
            await opened.__aexit__(type(exc), exc, exc.__traceback__)
    except TimeoutError:
        if not deadline.expired():
            raise
        exc.args = (f"{exc}; its teardown did not finish within {exc.timeout:g} s either",)


# -- one run ---------------------------------------------------------------------------------------


class _Run:
    """One soak: its phases as one generator of steps, and the verdict."""

    def __init__(
        self,
        cfg: Config,
        probes: list[Probe],
        registries: list[ListenerSource],
        progress: Progress | None,
    ) -> None:
        self.cfg = cfg
        self.baseline = Verdict.load_baseline(cfg.baseline) if cfg.baseline else None
        self.extra_probes = probes
        self.registries = registries
        self.progress = progress
        self.sampler: Sampler | None = None
        self.failed_at: int | None = None
        self.started = time.perf_counter()
        self.deadline = self.started + cfg.timeout if cfg.timeout else math.inf
        self.seconds = {"warm-up": 0.0, "measured": 0.0, "tracked": 0.0}
        self.every = 1
        self.awaits: bool | None = None
        """Whether cycles return awaitables: known after the first cycle."""
        self.done = 0
        """Cycles decided on: the warm-up and the measured cycles run so far."""
        self.warm_series: dict[str, tuple[Any, Any]] = {}
        self.series: dict[str, tuple[Any, Any]] = {}
        self.decision: Verdict | None = None
        self.gc_start: dict[str, int] = {}
        self.gc_end: dict[str, int] = {}
        self.capture: Path | None = None
        self.tracked = 0
        self.notes: list[str] = []
        self.workload_notes: list[str] = []
        self.alarm_armed = False
        """SIGALRM is ours (:func:`_alarm`): deadlines are armed on it."""
        self.grace = 0.0
        """Seconds past a deadline before SIGALRM: async cycles are cancelled cleanly first."""
        self.watching = -1
        """The cycle running under a cycle deadline (-1: none)."""
        self.watch_started = 0.0
        self._tracker: Any = None
        self._starts: contextlib.AbstractContextManager[dict[str, Frames]] | None = None
        self.thread_starts: dict[str, Frames] = {}
        self._tmp: str | None = None
        self._tick_t = 0.0
        self._tick_i = 0
        self._at = 0
        """The cycle an async run is at: set when a run of cycles starts and when one fails."""
        self._phase = "setup"

    # -- the steps ------------------------------------------------------------------------------

    def steps(self, workload: Workload) -> Steps:
        """Warm-up, measured (extended while settling), tracked; yields what cycles await."""
        cfg, cycle = self.cfg, workload.cycle
        self.begin(workload)
        yield from self._cycles(cycle, 0, cfg.warmup, "warm-up")
        self.between()
        target = cfg.cycles
        while True:
            yield from self._cycles(cycle, self.done, target, "measured")
            self.done = target
            self.gc_end = gc_type_counts()  # before the analysis makes objects of its own
            target = self.extension()
            if target <= self.done:
                break
        if cfg.tracked_cycles and self.start_tracker():
            stop = self.done + cfg.tracked_cycles
            yield from self._cycles(cycle, self.done, stop, "tracked")
            self.tracked = cfg.tracked_cycles
        self.end()

    def _cycles(self, cycle: Cycle, start: int, stop: int, phase: str) -> Steps:
        """THE cycle loop: run cycles ``start..stop``, sample, tick; awaitables are yielded.

        The inner loop runs the ``every`` cycles between two samples and nothing else: the
        sample, the progress tick and the deadline come between those runs. The first cycle
        of the soak tells whether cycles return awaitables; a cycle that returns none runs in
        a loop that does not look at what it returns, and the cycles of an async one run in
        one coroutine per run (:meth:`_await_cycles`), each awaited as a bare loop awaits it.
        """
        sampler = self.sampler
        assert sampler is not None
        sample, every, isawaitable = sampler.sample, self.every, inspect.isawaitable
        watched = self.cfg.cycle_timeout is not None
        self._phase = phase
        if phase == "measured" and start == self.cfg.warmup:
            sample(start)
        tick_at, i = start, start
        t0 = time.perf_counter()
        try:
            for run_start in range(start, stop, every):
                run_stop = min(run_start + every, stop)
                i = run_start
                if self.awaits is None:
                    if watched:
                        self.watch(i)
                    r = cycle(i)
                    self.awaits = r is not None and isawaitable(r)
                    if self.awaits:
                        self._at = i
                        yield self._within_deadline(r, i) if watched else r
                    if watched:
                        self.unwatch()
                    i += 1
                if self.awaits:
                    if i < run_stop:
                        self._at = i
                        awaits = self._await_watched if watched else self._await_cycles
                        yield awaits(cycle, i, run_stop)
                    i = self._at = run_stop - 1
                elif watched:
                    watch = self.watch
                    for i in range(i, run_stop):  # noqa: B020 - i is the failing cycle's index
                        watch(i)
                        cycle(i)
                    self.unwatch()
                else:
                    for i in range(i, run_stop):  # noqa: B020 - i is the failing cycle's index
                        cycle(i)
                sample(run_stop)
                if i >= tick_at:
                    tick_at = self._tick(phase, i, start, stop)
        except BaseException as exc:
            if watched:
                self.unwatch()
            if self.awaits:
                i = self._at
            self.failed_at = i
            if isinstance(exc, CycleTimeout):
                raise
            if isinstance(exc, SoakTimeout):
                raise SoakTimeout(self.cfg.timeout or 0.0, i, self.cfg.cycles) from None
            if isinstance(exc, Exception) and not isinstance(exc, SoakError):
                raise CycleError(i, phase, exc) from exc
            raise
        self.seconds[phase] += time.perf_counter() - t0
        self.report(phase, stop - start, stop - start)

    async def _await_cycles(self, cycle: Cycle, start: int, stop: int) -> None:
        """Cycles ``start..stop`` of an async cycle in a row; ``_at`` is the failing one's index."""
        i = start
        try:
            for i in range(start, stop):
                r = cycle(i)
                if r is not None:
                    await r
        except BaseException:
            self._at = i
            raise

    async def _await_watched(self, cycle: Cycle, start: int, stop: int) -> None:
        """:meth:`_await_cycles` with each cycle under its deadline (``cycle_timeout``)."""
        i = start
        try:
            for i in range(start, stop):
                self.watch(i)
                r = cycle(i)
                if r is not None:
                    await self._within_deadline(r, i)
        except BaseException:
            self._at = i
            raise
        finally:
            self.unwatch()

    async def _within_deadline(self, r: Awaitable[Any], i: int) -> None:
        """Await cycle ``i``, cancelled at its deadline (-> CycleTimeout)."""
        deadline = asyncio.timeout(self.cfg.cycle_timeout)
        try:
            async with deadline:
                await r
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the cycle's own TimeoutError: the cycle raised
            cancelled = exc.__cause__  # its traceback holds the frames the cycle waited in
            frames = traceback.extract_tb(cancelled.__traceback__ if cancelled else None)
            raise self.cycle_timeout_error(i, frames) from None

    # -- progress and deadline ------------------------------------------------------------------

    def report(self, phase: str, done: int = 0, total: int = 0) -> None:
        self._phase = phase
        if self.progress is not None:
            self.progress(phase, done, total)

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Around the run: stop memray and thaw on any failure; close the progress bar."""
        try:
            yield
        except BaseException:
            self.abort()
            raise
        finally:
            close = getattr(self.progress, "close", None)
            if callable(close):
                close()

    def _tick(self, phase: str, i: int, start: int, stop: int) -> int:
        """After cycle ``i``: report progress, check the deadline; return the next tick's index.

        Ticks come about five times a second, whatever a cycle costs.
        """
        now = time.perf_counter()
        if now > self.deadline:
            raise SoakTimeout(self.cfg.timeout or 0.0, i, self.cfg.cycles)
        if self.progress is not None:
            self.progress(phase, i + 1 - start, stop - start)
        rate = (i + 1 - self._tick_i) / max(now - self._tick_t, 1e-6)
        self._tick_t, self._tick_i = now, i + 1
        return i + max(1, min(int(rate * 0.2), 10_000))

    def current(self) -> int | None:
        """About which cycle is running (the last progress tick), None outside the cycles."""
        return self._tick_i if self._phase in ("warm-up", "measured", "tracked") else None

    def timeout_error(self) -> SoakTimeout:
        return SoakTimeout(self.cfg.timeout or 0.0, self.failed_at, self.cfg.cycles)

    def cycle_timeout_error(
        self,
        i: int,
        frames: traceback.StackSummary | None = None,
        interrupted: FrameType | None = None,
    ) -> CycleTimeout:
        """Cycle ``i`` ran past its deadline; ``frames``: where it waited (an async cycle's,
        cancelled), ``interrupted``: the frame SIGALRM interrupted (a sync cycle's)."""
        stacks = stacks_now(interrupted)
        if frames is None and interrupted is not None:
            frames = traceback.extract_stack(interrupted)
        if frames is not None:
            stacks["cycle"] = [f"{f.filename}:{f.lineno} in {f.name}" for f in frames]
        return CycleTimeout(
            i, self._phase, self.cfg.cycle_timeout or 0.0, self.cfg.name,
            where=innermost(frames) if frames is not None else "", stacks=stacks,
        )  # fmt: skip

    def watch(self, i: int) -> None:
        """Cycle ``i`` starts under its deadline: SIGALRM at it (or at the run's, if nearer)."""
        self.watching, self.watch_started = i, time.perf_counter()
        if self.alarm_armed:
            self.arm()

    def unwatch(self) -> None:
        """No cycle runs under a deadline now: SIGALRM at the run's deadline only."""
        self.watching = -1
        if self.alarm_armed:
            self.arm()

    def arm(self) -> None:
        """Arm SIGALRM for the nearer deadline, the run's or the watched cycle's (none: off)."""
        at = self.deadline + self.grace
        if self.watching >= 0 and self.cfg.cycle_timeout is not None:
            at = min(at, self.watch_started + self.cfg.cycle_timeout + self.grace)
        left = at - time.perf_counter() if at < math.inf else 0.0
        signal.setitimer(signal.ITIMER_REAL, max(0.001, left) if at < math.inf else 0.0)

    def on_alarm(self, frame: FrameType | None) -> None:
        """SIGALRM in ``frame``: raise for the deadline that passed (SoakTimeout, CycleTimeout),
        else re-arm."""
        now = time.perf_counter()
        if now >= self.deadline + self.grace:
            raise SoakTimeout(self.cfg.timeout or 0.0, self.current(), self.cfg.cycles)
        limit = self.cfg.cycle_timeout
        due = math.inf if limit is None else self.watch_started + limit + self.grace
        if self.watching >= 0 and now >= due:
            raise self.cycle_timeout_error(self.watching, interrupted=frame)
        self.arm()  # a signal for a cycle that has just finished

    def deadline_scope(self) -> Any:
        """``asyncio.timeout`` at the run's deadline (none without a timeout)."""
        if self.cfg.timeout is None:
            return asyncio.timeout(None)
        return asyncio.timeout(max(0.001, self.deadline - time.perf_counter()))

    async def timed(self, work: Awaitable[None]) -> None:
        """Await ``work``, cancelled at the run's deadline (-> SoakTimeout)."""
        try:
            async with self.deadline_scope():
                await work
        except TimeoutError:
            if self.cfg.timeout is None:
                raise
            raise self.timeout_error() from None

    # -- between the phases ---------------------------------------------------------------------

    def begin(self, workload: Workload) -> None:
        """After setup: import what comes later, build the channels, freeze what exists.

        The analysis's scipy (tens of MiB) and memray are imported before the warm-up, whose
        cycles absorb what importing them leaves settling (freed pages, arenas) before
        anything is measured.
        """
        cfg = self.cfg
        import scipy.stats  # noqa: F401

        if cfg.memray:
            with contextlib.suppress(ImportError):
                import memray  # noqa: F401
        self.workload_notes = workload.notes
        base = default_probes([*self.registries, *workload.registries])
        try:
            probes = apply_thresholds([*base, *self.extra_probes, *workload.probes], cfg.thresholds)
            self.sampler = Sampler(probes, collect=cfg.collect)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if cfg.collect:
            freeze(clear_type_cache=True)
        # The warm-up is not analysed: a few dozen samples, for the plot, are enough.
        self.every = max(1, math.ceil(cfg.warmup / 50))
        self.sampler.prepare(cfg.warmup // self.every + 2)
        self._tick_t, self._tick_i = time.perf_counter(), 0
        self.report("warm-up", 0, cfg.warmup)

    def between(self) -> None:
        """After warm-up: plan sampling, import what the analysis needs, freeze, count types."""
        cfg, sampler = self.cfg, self.sampler
        assert sampler is not None
        self.warm_series = sampler.series()
        cycling = self.seconds["warm-up"] - sampler.seconds
        per_cycle = max(0.0, cycling) / cfg.warmup if cfg.warmup else 0.0
        plan = sampler.plan(cfg.measured, per_cycle, cfg.sample_every, sampler.mean_seconds())
        # Room for every sample up to max_cycles, allocated now: arrays allocated later
        # would be a step in the heap. At most 4 x MAX_SAMPLES of them.
        extended = cfg.max_cycles - cfg.warmup + cfg.tracked_cycles
        self.every = max(plan.every, math.ceil(extended / (4 * Sampler.MAX_SAMPLES)))
        if cfg.collect:
            freeze(clear_type_cache=False)  # the warm-up's survivors join the frozen generation
        room = extended // self.every + 16
        sampler.prepare(room, plan.multiples)
        self.gc_start = gc_type_counts()
        self.done = cfg.warmup
        self._tick_t, self._tick_i = time.perf_counter(), cfg.warmup

    def extension(self) -> int:
        """Decide on what is measured; the next target while a channel settles, else ``done``."""
        cfg = self.cfg
        self.report("analysis")
        self.decision = self._decide()
        if not self.decision.undecided:
            return self.done
        return next((t for t in cfg.decision_points() if t > self.done), self.done)

    def _decide(self) -> Verdict:
        assert self.sampler is not None
        return decide(self.sampler.probes, self.sampler.series(), self.cfg, self.done)

    def start_tracker(self) -> bool:
        """Start memray (True), or note why it could not (False)."""
        try:
            import memray
        except ImportError:
            self.notes.append(
                "memray is not installed: no leak sites (pip install waclient[harness])"
            )
            return False
        cfg = self.cfg
        if cfg.report_dir is not None:
            cfg.report_dir.mkdir(parents=True, exist_ok=True)
            path = cfg.report_dir / "memray-leaks.bin"
        else:
            self._tmp = tempfile.mkdtemp(prefix="soak-memray-")
            path = Path(self._tmp) / "memray-leaks.bin"
        try:
            tracker = memray.Tracker(
                destination=memray.FileDestination(path, overwrite=True),
                file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS,
                native_traces=cfg.native_traces,
                trace_python_allocators=cfg.trace_python_allocators,
            )
            tracker.__enter__()
        except (RuntimeError, OSError) as exc:  # another Tracker is active, say
            self.notes.append(f"memray could not track this run: {exc}")
            return False
        self._tracker = tracker
        self._starts = thread_starts()
        self.thread_starts = self._starts.__enter__()
        self.capture = path
        return True

    def end(self) -> None:
        """After the tracked cycles: stop memray, keep the samples, thaw the collector."""
        self._stop_tracker()
        assert self.sampler is not None
        self.series = self.sampler.series()
        unfreeze()

    def _stop_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.__exit__(None, None, None)
        starts, self._starts = self._starts, None
        if starts is not None:
            starts.__exit__(None, None, None)

    def abort(self) -> None:
        self._stop_tracker()
        unfreeze()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- the verdict ----------------------------------------------------------------------------

    def verdict(self) -> Verdict:
        """The decision, with the leak sites, the timeline and the run's figures."""
        cfg, decision = self.cfg, self.decision
        assert decision is not None
        self.report("analysis")
        v = decision
        if self.capture is not None:
            try:
                v.leak_sites, v.leaked_bytes, v.leaked_allocations = leak_sites_from_capture(
                    self.capture, cfg.top_sites, self.thread_starts
                )
            except Exception as exc:  # a truncated capture: keep the verdict
                self.notes.append(f"could not read memray's capture: {exc}")
        v.tracked = self.capture is not None
        v.tracked_cycles = self.tracked if v.tracked else 0
        v.attach_timeline(self.warm_series, self.series)
        v.seconds = time.perf_counter() - self.started
        v.set_rates(self.seconds)
        v.sample_every = self.every
        v.note_type_growth(self.gc_start, self.gc_end)
        v.notes = [*self.workload_notes, *self.notes, *v.notes]
        if self.baseline is not None:
            v.compare_with(self.baseline, str(cfg.baseline))
        if cfg.report_dir is not None:
            v.report_dir = str(cfg.report_dir)
            self.report("report")
            from harness.report import write_report

            write_report(v, cfg.report_dir)
        if self._tmp is None and self.capture is not None:
            v.capture = str(self.capture)
        self._cleanup()
        return v


# -- timeouts --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _alarm(run: _Run) -> Iterator[None]:
    """SIGALRM, the one timer of a run's deadlines: it raises, in the main thread, SoakTimeout
    past the run's ``timeout`` and CycleTimeout past a cycle's ``cycle_timeout``.

    It is armed for the nearer of the two (:meth:`_Run.arm`, again as each cycle under a
    deadline starts), so a hung sync cycle is interrupted where it hangs; async cycles are
    cancelled by their loop at the deadline, and the signal comes ``run.grace`` seconds later,
    for a loop that is itself stuck. Restores the previous handler and timer afterwards
    (pytest-timeout uses SIGALRM too). Off the main thread, or without deadlines, nothing is
    armed.
    """
    cfg = run.cfg
    if (
        (cfg.timeout is None and cfg.cycle_timeout is None)
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        run.on_alarm(frame)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    run.alarm_armed = True
    run.arm()
    try:
        yield
    finally:
        run.alarm_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(0.001, old_delay - (time.monotonic() - started))
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)
