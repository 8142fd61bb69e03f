"""A soak's settings: one value object, merged in one place.

Every way of starting a soak gives its options as a :class:`Settings` layer, every field
optional; :func:`configure` merges the layers, later ones winning field by field (thresholds
channel by channel), fills in the defaults and checks the result, giving a :class:`Config`:

    scenario's own defaults  <  pytest marker  <  the call's arguments  <  command line

(the pytest plugin puts its ini setting between the scenario and the marker, and its
``--soak-cycles`` on top). The CLI hands its layer to the scenario process as JSON
(:meth:`Settings.to_json`), so the child merges exactly as an in-process soak does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import UsageError

__all__ = [
    "Config",
    "Settings",
    "configure",
    "default_tracked_cycles",
    "default_warmup",
    "run_timeout",
]


@dataclass(frozen=True)
class Settings:
    """Options one layer sets; ``None`` means "not set here"."""

    DEFAULT_CYCLES: ClassVar[int] = 2000
    DEFAULT_TIMEOUT: ClassVar[float] = 3600.0
    """Seconds a run may take when nobody says (an hour: 8,000 cycles of 0.4 s, the default
    ``max_cycles``); ``inf`` for no deadline."""

    cycles: int | None = None
    """Cycles decided on: the warm-up plus the measured cycles (default 2,000)."""
    warmup: int | None = None
    """Cycles run first and not analysed (default 10 %, 10 to 1,000)."""
    max_cycles: int | None = None
    """While a channel is still settling, the run goes on up to this many (default 4 x cycles)."""
    tracked_cycles: int | None = None
    """Cycles run under memray after the decision, for the leak sites (default 10 % of the
    measured cycles, 100 to 500; 0 without memray)."""
    thresholds: Mapping[str, float] | None = None
    """Per channel, the slope (units per cycle) above which growth is a leak."""
    memray: bool | None = None
    native_traces: bool | None = None
    trace_python_allocators: bool | None = None
    timeout: float | None = None
    """Seconds the whole run may take (setup, cycles, analysis); past it: SoakTimeout
    (default :attr:`DEFAULT_TIMEOUT`; ``inf``: none)."""
    cycle_timeout: float | None = None
    """Seconds one cycle may take; past it the soak ends with CycleTimeout (a stall)."""
    confidence: float | None = None
    sample_every: int | None = None
    collect: bool | None = None
    expect_leak: tuple[str, ...] | None = None
    """Channels the scenario is known to leak on."""
    allow_undecided: bool | None = None
    """Count an undecided verdict as passing (plugin, suite)."""
    top_sites: int | None = None
    report_dir: str | None = None
    baseline: str | None = None
    """A verdict JSON of an earlier run: a slope that rose beyond its noise is a regression."""

    @classmethod
    def of(cls, **options: Any) -> Settings:
        """A layer from keyword options; unknown names are a :class:`UsageError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UsageError(
                f"unknown soak setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        values = {k: v for k, v in options.items() if v is not None}
        if "thresholds" in values:
            values["thresholds"] = {str(k): float(v) for k, v in dict(values["thresholds"]).items()}
        if "expect_leak" in values:
            e = values["expect_leak"]
            values["expect_leak"] = (e,) if isinstance(e, str) else tuple(sorted(e))
        for key in ("report_dir", "baseline"):
            if key in values:
                values[key] = os.fspath(values[key])
        return cls(**values)

    def over(self, lower: Settings) -> Settings:
        """This layer on top of ``lower``: set fields win; thresholds merge per channel."""
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in merged.items():
            if value is None:
                merged[name] = getattr(lower, name)
        if self.thresholds is not None and lower.thresholds is not None:
            merged["thresholds"] = {**lower.thresholds, **self.thresholds}
        return Settings(**merged)

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({k: v for k, v in d.items() if v is not None})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"bad settings JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError("bad settings JSON: not an object")
        return cls.of(**data)


@dataclass(frozen=True)
class Config:
    """Every setting of one soak, defaults filled in and checked."""

    name: str
    cycles: int
    warmup: int
    max_cycles: int
    tracked_cycles: int
    thresholds: dict[str, float] = field(default_factory=dict)
    memray: bool = True
    native_traces: bool = False
    trace_python_allocators: bool = True
    timeout: float | None = None
    cycle_timeout: float | None = None
    confidence: float = 0.99
    sample_every: int | None = None
    collect: bool = True
    expect_leak: tuple[str, ...] = ()
    allow_undecided: bool = False
    top_sites: int = 10
    report_dir: Path | None = None
    baseline: Path | None = None

    @property
    def measured(self) -> int:
        return self.cycles - self.warmup

    def with_cycles(self, cycles: int) -> Config:
        return replace(self, cycles=cycles)

    def decision_points(self) -> list[int]:
        """The cycles after which the soak decides: ``cycles``, then, while a channel is still
        settling, the measured cycles doubled each time, up to ``max_cycles``."""
        points = [self.cycles]
        while points[-1] < self.max_cycles:
            doubled = self.warmup + 2 * (points[-1] - self.warmup)
            points.append(min(self.max_cycles, max(doubled, points[-1] + 1)))
        return points


def default_warmup(cycles: int) -> int:
    """10 % of the cycles, at least 10 and at most 1,000."""
    return min(1000, max(10, cycles // 10))


def default_tracked_cycles(measured: int) -> int:
    """10 % of the measured cycles, at least 100 and at most 500."""
    return min(500, max(100, measured // 10))


def configure(name: str, *layers: Settings) -> Config:
    """Merge ``layers`` (lowest first), fill in the defaults, check; :class:`UsageError` if bad."""
    s = Settings()
    for layer in layers:
        s = layer.over(s)
    cycles = Settings.DEFAULT_CYCLES if s.cycles is None else int(s.cycles)
    warmup = default_warmup(cycles) if s.warmup is None else int(s.warmup)
    if cycles < 1:
        raise UsageError("cycles must be >= 1")
    if warmup < 0:
        raise UsageError("warmup must be >= 0")
    if cycles - warmup < 20:
        raise UsageError(
            f"{cycles} cycles with {warmup} warm-up leave {cycles - warmup} measured cycles; "
            "at least 20 are needed"
        )
    max_cycles = 4 * cycles if s.max_cycles is None else int(s.max_cycles)
    if max_cycles < cycles:
        raise UsageError(f"max_cycles ({max_cycles}) must be >= cycles ({cycles})")
    memray = True if s.memray is None else bool(s.memray)
    tracked = s.tracked_cycles
    if tracked is None:
        tracked = default_tracked_cycles(cycles - warmup) if memray else 0
    if tracked < 0:
        raise UsageError("tracked_cycles must be >= 0")
    if s.timeout is not None and not s.timeout > 0:
        raise UsageError("timeout must be > 0 seconds")
    if s.cycle_timeout is not None and not 0 < s.cycle_timeout < math.inf:
        raise UsageError("cycle_timeout must be a finite number of seconds > 0")
    if s.sample_every is not None and s.sample_every < 1:
        raise UsageError("sample_every must be >= 1")
    confidence = 0.99 if s.confidence is None else float(s.confidence)
    if not 0.5 < confidence < 1:
        raise UsageError("confidence must be within (0.5, 1)")
    thresholds = dict(s.thresholds or {})
    for channel, value in thresholds.items():
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"threshold for {channel} must be a finite number >= 0")
    return Config(
        name=name,
        cycles=cycles,
        warmup=warmup,
        max_cycles=max_cycles,
        tracked_cycles=int(tracked) if memray else 0,
        thresholds=thresholds,
        memray=memray,
        native_traces=bool(s.native_traces),
        trace_python_allocators=True
        if s.trace_python_allocators is None
        else bool(s.trace_python_allocators),
        timeout=run_timeout(s.timeout),
        cycle_timeout=None if s.cycle_timeout is None else float(s.cycle_timeout),
        confidence=confidence,
        sample_every=s.sample_every,
        collect=True if s.collect is None else bool(s.collect),
        expect_leak=tuple(sorted(s.expect_leak or ())),
        allow_undecided=bool(s.allow_undecided),
        top_sites=10 if s.top_sites is None else int(s.top_sites),
        report_dir=None if s.report_dir is None else Path(s.report_dir),
        baseline=None if s.baseline is None else Path(s.baseline),
    )


def run_timeout(value: float | None) -> float | None:
    """The run's deadline in seconds: :attr:`Settings.DEFAULT_TIMEOUT` unless set, None for
    ``inf`` (asked for no deadline)."""
    if value is None:
        return Settings.DEFAULT_TIMEOUT
    return None if math.isinf(value) else float(value)
