"""Memory you can see and a guard that acts on it: ``MemorySnapshot``, ``MemoryGuard``.

The incident's machine had no way to show its memory until it was killed. This module gives a
cheap snapshot of what grows when something leaks (RSS, live Python blocks, file descriptors,
threads, asyncio tasks, listeners per event type, the worker process), a periodic log line of
it, and a guard with two limits derived from the machine's memory:

- past the **soft** limit the guard *sheds*: ``guard.shedding`` is True and callers refuse new
  work (the host answers new sends with 503); it clears once usage is back under
  ``soft * (1 - hysteresis)``;
- past the **hard** limit it calls ``on_hard`` once, which should shut the process down
  gracefully so that the platform restarts it, before the kernel's OOM killer does it mid-write.

Before each check the guard hands the C heap's free pages back to the system
(:func:`release_free_memory`, glibc's ``malloc_trim``): glibc keeps memory freed in the middle
of its heaps resident, and a long-running process that allocates and frees all day (a web
server) touches ever more of those pages, so its RSS creeps while the memory it uses stays flat
(measured on the host: docs/host.md, "The host's RSS fill").

What is measured is the *proportional set size* (PSS) of this process plus its worker processes:
pages shared between them (the Go core's library, Python's own) count once, so the sum is what
the processes cost the machine together. Where PSS cannot be read it falls back to RSS, which
overcounts shared pages (safe side). No host dependency: only ``psutil`` and the standard
library.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil

from waclient.heap import c_heap_in_use, release_free_memory
from waclient.lifetime import Lifetime

__all__ = [
    "GuardLevel",
    "GuardStatus",
    "MachineMemory",
    "MemoryGuard",
    "MemoryGuardStats",
    "MemoryLimits",
    "MemorySnapshot",
    "ProcessMemory",
    "c_heap_in_use",
    "derive_limits",
    "machine_memory",
    "parse_size",
    "process_memory",
    "release_free_memory",
    "take_snapshot",
]

log = logging.getLogger(__name__)

GuardLevel = Literal["ok", "soft", "hard"]

_NO_LIMIT = 1 << 60
"""cgroup v1 reports "no limit" as a huge number (9223372036854771712); anything this big is."""


class _Counts(Protocol):
    def counts(self) -> dict[str, int]: ...


# -- sizes -------------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_size(value: str | int | float) -> int:
    """Bytes from ``"200MiB"``, ``"200M"`` (decimal), ``"1.5GiB"``, ``"4096"`` or a number.

    ``ValueError`` (with the accepted forms) for anything else, or a negative size.
    """
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '200MiB'")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        number_text, unit = digits, text[len(digits) :]
        try:
            number = float(number_text)
        except ValueError:
            raise ValueError(
                f"bad size {value!r}: use bytes or a number with a unit such as 200MiB, 512M, 1GiB"
            ) from None
    if unit not in _UNITS:
        raise ValueError(
            f"bad size unit in {value!r}: use B, K/KB, KiB, M/MB, MiB, G/GB, GiB, T/TB or TiB"
        )
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"bad size {value!r}: must be a finite number >= 0")
    return int(number * _UNITS[unit])


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f}MiB"


# -- the machine ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MachineMemory:
    """How much memory this process's machine (or container) may use, and where that came from."""

    total: int
    source: str
    """``cgroup v2 <file>``, ``cgroup v1 <file>`` or ``ram``."""


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _NO_LIMIT else None


def _own_cgroups(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory hierarchy."""
    v2: str | None = None
    v1: str | None = None
    with contextlib.suppress(OSError):
        for line in proc_self_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if controllers == "" and parts[0] == "0":
                v2 = path.strip()
            elif "memory" in controllers.split(","):
                v1 = path.strip()
    return v2, v1


def _lowest_limit(base: Path, rel: str | None, filename: str) -> tuple[int, Path] | None:
    """The lowest limit set on ``base/rel`` or any of its ancestors up to ``base``."""
    parts = [p for p in (rel or "").split("/") if p]
    found: tuple[int, Path] | None = None
    for depth in range(len(parts), -1, -1):
        path = base.joinpath(*parts[:depth], filename)
        limit = _read_limit(path)
        if limit is not None and (found is None or limit < found[0]):
            found = (limit, path)
    return found


def machine_memory(
    *,
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_self_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
    total_ram: int | None = None,
) -> MachineMemory:
    """The memory available to this process's machine or container: the lowest cgroup limit on
    its cgroup and the cgroup's ancestors (v2 ``memory.max``, else v1
    ``memory/memory.limit_in_bytes``), capped by the total RAM; else the total RAM (a Fly.io
    machine is a VM: its RAM is its limit)."""
    root = Path(cgroup_root)
    ram = total_ram if total_ram is not None else int(psutil.virtual_memory().total)
    v2, v1 = _own_cgroups(Path(proc_self_cgroup))
    for found, kind in (
        (_lowest_limit(root, v2, "memory.max"), "cgroup v2"),
        (_lowest_limit(root / "memory", v1, "memory.limit_in_bytes"), "cgroup v1"),
    ):
        if found is not None and found[0] < ram:
            return MachineMemory(found[0], f"{kind} {found[1]}")
    return MachineMemory(ram, "ram")


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """The guard's limits, in bytes of PSS (this process plus its workers)."""

    soft: int
    hard: int
    machine: int
    source: str
    """Where ``machine`` came from, and whether each limit was set or derived."""

    def __post_init__(self) -> None:
        if not 0 < self.soft < self.hard:
            raise ValueError(
                f"memory limits need 0 < soft < hard (soft {_mib(self.soft)}, "
                f"hard {_mib(self.hard)})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "soft": self.soft,
            "hard": self.hard,
            "machine": self.machine,
            "source": self.source,
        }


def derive_limits(
    machine: MachineMemory,
    *,
    soft: int | None = None,
    hard: int | None = None,
    soft_fraction: float = 0.80,
    hard_fraction: float = 0.90,
) -> MemoryLimits:
    """Limits from explicit values where given, else from fractions of the machine's memory.

    The defaults (80 % and 90 %) leave the last tenth of the machine to the kernel, the page
    cache and the time a graceful shutdown takes; see docs/host.md for the figures.
    """
    if not (0 < soft_fraction < 1 and 0 < hard_fraction < 1):
        raise ValueError("memory fractions must be within (0, 1)")
    if soft is None and hard is None and soft_fraction >= hard_fraction:
        raise ValueError("memory fractions need soft_fraction < hard_fraction")
    soft_value = soft if soft is not None else int(machine.total * soft_fraction)
    hard_value = hard if hard is not None else int(machine.total * hard_fraction)
    how = (
        f"machine {_mib(machine.total)} from {machine.source}; "
        f"soft {'set' if soft is not None else f'{soft_fraction:.0%}'}, "
        f"hard {'set' if hard is not None else f'{hard_fraction:.0%}'}"
    )
    return MemoryLimits(soft_value, hard_value, machine.total, how)


# -- snapshots -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's memory. ``pss`` is None when it was not asked for or cannot be read."""

    pid: int
    rss: int
    pss: int | None = None

    @property
    def cost(self) -> int:
        """What the guard counts: PSS when known, else RSS."""
        return self.pss if self.pss is not None else self.rss

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "rss": self.rss, "pss": self.pss}


def process_memory(pid: int | None = None, *, pss: bool = True) -> ProcessMemory | None:
    """RSS (and PSS, from ``smaps_rollup``) of a process; None if it is gone."""
    try:
        proc = psutil.Process(pid) if pid is not None else psutil.Process()
        if pss:
            try:
                full = proc.memory_full_info()
                return ProcessMemory(proc.pid, int(full.rss), int(getattr(full, "pss", 0)) or None)
            except psutil.AccessDenied:
                pass
        return ProcessMemory(proc.pid, int(proc.memory_info().rss))
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
        return None


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        with contextlib.suppress(Exception):
            return int(psutil.Process().num_fds())
        return -1


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return int(psutil.Process().num_threads())


def _task_count() -> int | None:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop in this thread
        return None


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """What grows when something leaks, at one moment. Take one with :func:`take_snapshot`."""

    taken_at: float
    """``time.time()``."""
    rss: int
    pss: int | None
    py_blocks: int
    """``sys.getallocatedblocks()``: live pymalloc blocks."""
    gc_counts: tuple[int, int, int]
    """``gc.get_count()``: allocations since each generation's last collection (cheap)."""
    gc_objects: int | None
    """``len(gc.get_objects())``; only when asked for (it walks every tracked object)."""
    fds: int
    threads: int
    """OS threads of this process (Go's and Python's)."""
    python_threads: int
    tasks: int | None
    """asyncio tasks of the running loop (None outside one)."""
    listeners: dict[str, int] = field(default_factory=dict)
    """Live handlers per event type, when a registry was given."""
    workers: tuple[ProcessMemory, ...] = ()

    @property
    def own(self) -> ProcessMemory:
        return ProcessMemory(os.getpid(), self.rss, self.pss)

    @property
    def total(self) -> int:
        """This process plus its workers, as the guard counts it (PSS, else RSS)."""
        return self.own.cost + sum(w.cost for w in self.workers)

    @property
    def total_rss(self) -> int:
        """This process plus its workers, RSS (overcounts shared pages)."""
        return self.rss + sum(w.rss for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "rss": self.rss,
            "pss": self.pss,
            "total": self.total,
            "total_rss": self.total_rss,
            "py_blocks": self.py_blocks,
            "gc_counts": list(self.gc_counts),
            "gc_objects": self.gc_objects,
            "fds": self.fds,
            "threads": self.threads,
            "python_threads": self.python_threads,
            "tasks": self.tasks,
            "listeners": dict(self.listeners),
            "workers": [w.to_dict() for w in self.workers],
        }

    def log_line(self) -> str:
        """One line for the log: ``memory rss=... pss=... py_blocks=... ...``."""
        parts = [
            f"rss={_mib(self.rss)}",
            f"pss={_mib(self.pss)}",
            f"total={_mib(self.total)}",
            f"py_blocks={self.py_blocks}",
        ]
        if self.gc_objects is not None:
            parts.append(f"gc_objects={self.gc_objects}")
        parts += [f"fds={self.fds}", f"threads={self.threads}", f"tasks={self.tasks}"]
        parts.append(f"listeners={sum(self.listeners.values())}")
        if self.listeners:
            top = sorted(self.listeners.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            parts.append("(" + ",".join(f"{k}:{v}" for k, v in top) + ")")
        for w in self.workers:
            parts.append(f"worker[{w.pid}] rss={_mib(w.rss)} pss={_mib(w.pss)}")
        return "memory " + " ".join(parts)


def take_snapshot(
    *,
    registry: _Counts | None = None,
    worker_pids: Iterable[int] = (),
    gc_objects: bool = False,
    pss: bool = True,
) -> MemorySnapshot:
    """A snapshot of this process (and of ``worker_pids``).

    Cheap by default (well under a millisecond): ``/proc`` reads and interpreter counters.
    ``gc_objects=True`` also counts every object the collector tracks (milliseconds on a big
    heap); ``pss=False`` skips ``smaps_rollup``.
    """
    own = process_memory(pss=pss)
    assert own is not None
    workers = tuple(
        w for w in (process_memory(pid, pss=pss) for pid in worker_pids) if w is not None
    )
    count0, count1, count2 = gc.get_count()
    return MemorySnapshot(
        taken_at=time.time(),
        rss=own.rss,
        pss=own.pss,
        py_blocks=sys.getallocatedblocks(),
        gc_counts=(count0, count1, count2),
        gc_objects=len(gc.get_objects()) if gc_objects else None,
        fds=_fd_count(),
        threads=_os_threads(),
        python_threads=threading.active_count(),
        tasks=_task_count(),
        listeners=dict(registry.counts()) if registry is not None else {},
        workers=workers,
    )


# -- the guard -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardStatus:
    """The outcome of one check."""

    level: GuardLevel
    used: int
    """Bytes counted (PSS of this process and its workers)."""
    limits: MemoryLimits
    checked_at: float

    @property
    def shedding(self) -> bool:
        return self.level != "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "used": self.used,
            "shedding": self.shedding,
            "checked_at": self.checked_at,
            **self.limits.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class MemoryGuardStats:
    """What :meth:`MemoryGuard.statistics` returns."""

    level: GuardLevel
    shedding: bool
    used: int | None
    """Bytes the last check measured (None before the first)."""
    peak: int
    soft_events: int
    hard_triggered: bool
    checks: int
    check_interval: float
    log_interval: float
    limits: MemoryLimits
    trims: int = 0
    """Checks that returned the C heap's free pages first (0 where that is not available)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # limits as a dict too


class MemoryGuard(Lifetime):
    """Watches memory every ``check_interval`` seconds and logs a snapshot every
    ``log_interval`` seconds (0 turns the periodic line off).

    - ``measure()`` returns the bytes to compare with the limits (default: PSS of this process).
    - ``snapshot()`` makes the snapshot of the periodic log line (default: :func:`take_snapshot`).
    - ``on_soft(status)`` is called on each entry into shedding; ``on_hard(status)`` once, the
      first time usage passes the hard limit (it should start a graceful shutdown).
    - ``hysteresis``: shedding ends below ``soft * (1 - hysteresis)``, so the guard does not
      flap around the limit.
    - ``trim``: each check first returns the C heap's free pages to the system
      (:func:`release_free_memory`), so what it measures, and what the machine pays, is the
      memory in use rather than pages the allocator kept.

    Use :meth:`check` directly (tests, or a caller's own loop), or :meth:`start` / :meth:`close`
    for the background task.
    """

    def __init__(
        self,
        limits: MemoryLimits,
        *,
        measure: Callable[[], int] | None = None,
        snapshot: Callable[[], MemorySnapshot] | None = None,
        on_soft: Callable[[GuardStatus], None] | None = None,
        on_hard: Callable[[GuardStatus], None] | None = None,
        check_interval: float = 5.0,
        log_interval: float = 300.0,
        hysteresis: float = 0.05,
        collect_on_soft: bool = True,
        trim: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if check_interval <= 0:
            raise ValueError("check_interval must be > 0")
        if log_interval < 0:
            raise ValueError("log_interval must be >= 0 (0: no periodic line)")
        if not 0 <= hysteresis < 1:
            raise ValueError("hysteresis must be within [0, 1)")
        self.limits = limits
        self.measure = measure or _own_cost
        self.snapshot = snapshot or take_snapshot
        self.on_soft = on_soft
        self.on_hard = on_hard
        self.check_interval = check_interval
        self.log_interval = log_interval
        self.hysteresis = hysteresis
        self.collect_on_soft = collect_on_soft
        self.trim = trim
        self.trims = 0
        self._clock = clock
        self.level: GuardLevel = "ok"
        self.status: GuardStatus | None = None
        self.peak = 0
        """The most bytes a check has seen."""
        self.soft_events = 0
        """Entries into shedding."""
        self.hard_triggered = False
        self.checks = 0
        self.log_lines = 0
        self.last_snapshot: MemorySnapshot | None = None
        self._next_log: float | None = None

    @property
    def shedding(self) -> bool:
        """True while new work should be refused (soft or hard limit passed)."""
        return self.level != "ok"

    def check(self) -> GuardStatus:
        """Measure once and act on the result; cheap (a few ``/proc`` reads, and the trim)."""
        if self.trim and release_free_memory():
            self.trims += 1
        used = int(self.measure())
        self.checks += 1
        self.peak = max(self.peak, used)
        limits = self.limits
        previous = self.level
        if used >= limits.hard:
            level: GuardLevel = "hard"
        elif used >= limits.soft:
            level = "soft"
        elif previous != "ok" and used >= limits.soft * (1 - self.hysteresis):
            level = "soft"  # within the hysteresis band: keep shedding
        else:
            level = "ok"
        self.level = level
        status = GuardStatus(level, used, limits, time.time())
        self.status = status
        if level != "ok" and previous == "ok":
            self.soft_events += 1
            log.warning(
                "memory %s passed the soft limit %s (hard %s): shedding new sends",
                _mib(used),
                _mib(limits.soft),
                _mib(limits.hard),
            )
            if self.collect_on_soft:
                gc.collect()
            if self.on_soft is not None:
                self._call(self.on_soft, status)
        elif level == "ok" and previous != "ok":
            log.warning("memory %s is back under the soft limit: accepting sends", _mib(used))
        if level == "hard" and not self.hard_triggered:
            self.hard_triggered = True
            log.error(
                "memory %s passed the hard limit %s: shutting down gracefully for a restart",
                _mib(used),
                _mib(limits.hard),
            )
            if self.on_hard is not None:
                self._call(self.on_hard, status)
        return status

    def log_now(self) -> MemorySnapshot:
        """Take a snapshot and log its line (INFO); returns it."""
        snap = self.snapshot()
        self.last_snapshot = snap
        self.log_lines += 1
        log.info(
            "%s level=%s soft=%s hard=%s",
            snap.log_line(),
            self.level,
            _mib(self.limits.soft),
            _mib(self.limits.hard),
        )
        return snap

    def tick(self) -> GuardStatus:
        """One step of the background loop: :meth:`check`, and the log line when it is due."""
        status = self.check()
        if self.log_interval > 0:
            now = self._clock()
            if self._next_log is None or now >= self._next_log:
                self._next_log = now + self.log_interval
                self.log_now()
        return status

    idempotent_start = True
    """``start()`` runs :meth:`tick` every ``check_interval`` seconds in a task, once;
    ``close()`` stops it."""

    async def _open(self) -> None:
        self.spawn(self._run(), name="waclient-memory-guard")

    def statistics(self) -> MemoryGuardStats:
        return MemoryGuardStats(
            level=self.level,
            shedding=self.shedding,
            used=self.status.used if self.status is not None else None,
            peak=self.peak,
            soft_events=self.soft_events,
            hard_triggered=self.hard_triggered,
            checks=self.checks,
            check_interval=self.check_interval,
            log_interval=self.log_interval,
            limits=self.limits,
            trims=self.trims,
        )

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("memory guard check failed")
            if not await self.sleep(self.check_interval):
                return

    @staticmethod
    def _call(fn: Callable[[GuardStatus], None], status: GuardStatus) -> None:
        try:
            fn(status)
        except Exception:
            log.exception("memory guard callback failed")


def _own_cost() -> int:
    own = process_memory()
    return own.cost if own is not None else 0


def describe(limits: MemoryLimits, extra: Mapping[str, Any] | None = None) -> str:
    """A one-line description of the limits, for the start-up log."""
    text = f"memory guard: soft {_mib(limits.soft)}, hard {_mib(limits.hard)} ({limits.source})"
    if extra:
        text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
    return text
