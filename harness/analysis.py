"""Per-channel trend test, thresholds, memray leak sites -> :class:`Verdict`.

The decision, per channel, on the samples of the measured cycles only (warm-up excluded):

1. Theil-Sen slope over all measured samples (``scipy.stats.theilslopes``) with its confidence
   interval at ``confidence`` (default 99 %): the lower bound must be above the channel's
   threshold (units per cycle). Theil-Sen is the median of pairwise slopes: outliers, a
   collection now and then, a burst, do not move it.
2. The second half of the measured samples must still grow: its own Theil-Sen slope above the
   threshold, a Mann-Kendall trend test (Kendall's tau of value against cycle,
   ``scipy.stats.kendalltau(alternative="greater")``) significant at ``1 - confidence``, and its
   growth (median of its last tenth minus median of its first tenth) above the channel's
   ``min_growth``.
3. The growth must not decelerate: a first half whose slope is confidently above the second
   half's (intervals apart, the second under :data:`SETTLING_RATIO` of the first) is
   *undecided*: more cycles tell (the engine extends the run up to ``max_cycles``).

Before these, a channel with a ``resolution`` (rss: RSS moves by pages the allocator keeps or
returns in chunks) whose growth over the measured cycles is within it is ``fine``, not a leak.

After them, a channel in bytes that the trend tests do not call a leak is searched for a
*staircase* (:func:`find_steps`): sharp rises of at least :data:`MIN_STEP` that never fall back
(an arena or a pool that takes memory in blocks, flat between them). Three or more steps whose
last is no further from the end than the longest spacing between them are a leak, however flat
between them; a step (or several) whose flat tail is not yet :data:`PLATEAU_TAIL` times that
spacing (the cycles before it, for a single step) is *undecided*: more cycles tell. Only a tail
clearly longer than the spacing lets a stepped channel be ``plateau`` or ``flat``.

A cache that fills in the first half and then stops passes 1 but fails 2: not a leak. A slow
steady leak passes all three. A sawtooth or bursts that free their memory fail 1, and their
rises fall back: no staircase. Thresholds of the memory channels come from each run's own noise
(:func:`analyze_channel` with ``threshold=None``), floored per channel; :func:`compare_channel`
judges a baseline.
"""

from __future__ import annotations

import json
import math
import os
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from harness.threads import Frames

__all__ = [
    "MAX_POINTS",
    "ChannelResult",
    "LeakSite",
    "Timeline",
    "TypeGrowth",
    "Verdict",
    "analyze_channel",
    "find_steps",
    "format_quantity",
    "leak_sites_from_capture",
]

MAX_POINTS = 800
"""Samples analysed per channel at most (evenly thinned beyond): Theil-Sen is O(n^2)."""
TOP_SITES = 10
NO_PYTHON_FRAME = "<no Python frame>"
"""The location of memory memray saw allocated with no Python stack: a native thread (Go's),
or a coroutine chain resumed by an exception (see :func:`_native_frames`)."""
NO_PYTHON_FRAME_MEANS = (
    "allocated with no Python code on the stack: memray's tracer (line tables and frames of "
    "code it first sees), the interpreter, an extension or a native thread; --native-traces "
    "tells which (and leaves the tracer's own out)"
)
"""What a :data:`NO_PYTHON_FRAME` site is, said where it is shown."""
NATIVE = "[native] "
"""The prefix of a location that is a C function (a site with native traces and no Python
frame: ``[native] function``, in its file)."""
TRACER_FRAMES = frozenset({"call_trace", "call_trace_protected", "trace_function_entry"})
"""C functions of CPython's profiling hook: memory allocated under them is the tracer's own
(line tables and frame objects of code first run under memray), not the code's."""


# -- results ---------------------------------------------------------------------------------------


@dataclass
class ChannelResult:
    """The trend of one channel over the measured cycles (slopes are in units per cycle)."""

    name: str
    unit: str
    slope_per_cycle: float
    """Theil-Sen slope over all measured samples."""
    slope_low: float
    slope_high: float
    """Confidence interval of the slope, at ``confidence``."""
    growth: float
    """End level minus start level over the measured cycles (medians of the first/last tenth)."""
    late_slope_per_cycle: float
    """Theil-Sen slope over the second half of the measured samples."""
    late_growth: float
    p_value: float
    """Mann-Kendall (Kendall's tau, one-sided "increasing") p-value, all measured samples."""
    late_p_value: float
    threshold: float
    min_growth: float
    confidence: float
    leaking: bool
    reason: str
    samples: int
    start: float
    end: float
    undecided: bool = False
    """Still settling: the growth decelerates (a cache filling?); more cycles will tell."""
    early_slope_per_cycle: float = 0.0
    """Theil-Sen slope over the first half of the measured samples."""
    late_slope_high: float = 0.0
    noise: float = 0.0
    """Scatter of the samples around the trend (1.4826 x median absolute residual)."""
    threshold_auto: bool = False
    """The threshold was derived from this run's noise (not set by the user)."""
    baseline_slope: float | None = None
    """The slope of the same channel in the baseline verdict, when one was given."""
    regression: bool = False
    """The slope rose beyond noise against the baseline (then ``leaking`` is True too)."""
    resolution: float = 0.0
    """The least growth over the measured cycles that can be a leak (the channel's grain)."""
    steps: list[float] = field(default_factory=list)
    """Cycles at which the channel rose by a step that stayed (:func:`find_steps`)."""

    @property
    def kind(self) -> str:
        """``leak``, ``regression``, ``undecided``, ``plateau``, ``fine``, ``flat`` or
        ``few-samples`` (``fine``: a steady slope, but less growth than the channel resolves)."""
        if self.regression:
            return "regression"
        if self.leaking:
            return "leak"
        if self.undecided:
            return "undecided"
        if self.samples < MIN_SAMPLES:
            return "few-samples"
        if self.slope_low > self.threshold and self.growth <= self.resolution:
            return "fine"
        if self.slope_low > self.threshold:
            return "plateau"
        return "flat"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelResult:
        names = cls.__dataclass_fields__
        return cls(**{k: _num(v) for k, v in d.items() if k in names})


@dataclass
class LeakSite:
    """Memory allocated during the measured cycles and still live when they ended."""

    location: str
    """``file:line`` of the first frame in user code (or the best frame there is)."""
    function: str
    size: int
    """Bytes still live."""
    count: int
    """Allocations still live."""
    stack: list[str] = field(default_factory=list)
    """Frames, innermost first, as ``file:line in function`` (harness internals left out)."""

    @property
    def where(self) -> str:
        """The site as shown: ``location in function``, or what memory with no frame is."""
        if self.location == NO_PYTHON_FRAME:
            return f"{NO_PYTHON_FRAME}: {NO_PYTHON_FRAME_MEANS}"
        return f"{self.location} in {self.function}"

    def mentions(self, filename: str, line: int) -> bool:
        """True when this site's location or stack is at ``filename:line``."""
        suffix = f"{Path(filename).name}:{line}"
        needle = f"{os.path.normpath(filename)}:{line}"
        frames = [self.location, *(s.split(" in ", 1)[0] for s in self.stack)]
        return any(f in (needle, suffix) or f.endswith("/" + suffix) for f in frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeakSite:
        return cls(
            location=str(d["location"]),
            function=str(d.get("function", "")),
            size=int(d["size"]),
            count=int(d["count"]),
            stack=[str(s) for s in d.get("stack", [])],
        )


@dataclass
class TypeGrowth:
    """Instances of one type, at the start and the end of the measured cycles (like objgraph)."""

    type: str
    start: int
    end: int

    @property
    def delta(self) -> int:
        return self.end - self.start


@dataclass
class Timeline:
    """Samples of one channel: ``cycles`` completed when each ``value`` was read."""

    cycles: list[float]
    values: list[float]


@dataclass
class Verdict:
    """What a soak found. ``bounded`` is False when any channel leaks."""

    bounded: bool
    cycles: int
    """All cycles run, warm-up included."""
    warmup: int
    channels: dict[str, ChannelResult]
    leak_sites: list[LeakSite]
    scenario: str = "cycle"
    confidence: float = 0.99
    tracked: bool = False
    """True when ``tracked_cycles`` ran under memray after the measured (untracked) cycles."""
    seconds: float = 0.0
    warmup_cycles_per_second: float = 0.0
    measured_cycles_per_second: float = 0.0
    sample_every: int = 1
    gc_growth: list[TypeGrowth] = field(default_factory=list)
    timeline: dict[str, Timeline] = field(default_factory=dict)
    leaked_bytes: int = 0
    """Bytes memray saw still live after the measured cycles, all sites."""
    leaked_allocations: int = 0
    expect_leak: list[str] = field(default_factory=list)
    """Channels the scenario is known to leak on (a documented upstream leak, a mutant)."""
    notes: list[str] = field(default_factory=list)
    report_dir: str | None = None
    capture: str | None = None
    tracked_cycles: int = 0
    """Cycles run under memray after the decision, for the leak sites (not in ``cycles``)."""
    requested_cycles: int = 0
    """The cycles asked for; ``cycles`` is more when the run was extended while settling."""
    max_cycles: int = 0
    baseline: str | None = None
    """The verdict JSON this run was compared with."""

    # -- derived ---------------------------------------------------------------------------

    @property
    def measured(self) -> int:
        return self.cycles - self.warmup

    @property
    def leaking_channels(self) -> list[str]:
        return [name for name, ch in self.channels.items() if ch.leaking]

    @property
    def undecided(self) -> bool:
        """No channel leaks, but one is still settling after ``cycles`` (exit status 3)."""
        return not self.leaking_channels and any(c.undecided for c in self.channels.values())

    @property
    def status(self) -> str:
        """``bounded``, ``leak`` or ``undecided``."""
        if self.leaking_channels:
            return "leak"
        return "undecided" if self.undecided else "bounded"

    @property
    def exit_code(self) -> int:
        """``python -m harness soak``'s exit status: 0 bounded, 1 leak, 3 undecided."""
        return {"bounded": 0, "leak": 1, "undecided": 3}[self.status]

    # -- assembled by the engine -----------------------------------------------------------

    def settle(self) -> None:
        """``bounded`` from the channels (after a comparison with a baseline, say)."""
        self.bounded = self.status == "bounded"

    def attach_timeline(
        self, warm: Mapping[str, tuple[Any, Any]], measured: Mapping[str, tuple[Any, Any]]
    ) -> None:
        """Every sample of every phase, for the plot (warm-up, measured, tracked)."""
        for name in self.channels:
            wx, wy = warm.get(name, ([], []))
            mx, my = measured.get(name, ([], []))
            self.timeline[name] = Timeline(
                [float(v) for v in (*wx, *mx)], [float(v) for v in (*wy, *my)]
            )

    def set_rates(self, seconds: Mapping[str, float]) -> None:
        """Cycles per second of the warm-up, and of every cycle after it (tracked or not)."""
        after = seconds.get("measured", 0.0) + seconds.get("tracked", 0.0)
        warm = seconds.get("warm-up", 0.0)
        self.warmup_cycles_per_second = self.warmup / warm if warm else 0.0
        self.measured_cycles_per_second = (
            (self.measured + self.tracked_cycles) / after if after else 0.0
        )

    def note_type_growth(self, start: Mapping[str, int], end: Mapping[str, int]) -> None:
        self.gc_growth = type_growth(start, end)

    def compare_with(self, baseline: Verdict, source: str) -> None:
        """Mark channels whose slope rose beyond noise against ``baseline`` as regressions."""
        from harness.probes import threshold_floor

        self.baseline = source
        for name, ch in self.channels.items():
            old = baseline.channels.get(name)
            if old is not None:
                compare_channel(ch, old, threshold_floor(name))
        self.settle()

    @classmethod
    def load_baseline(cls, path: str | os.PathLike[str]) -> Verdict:
        """A baseline verdict; :class:`~harness.errors.UsageError` when it cannot be read."""
        from harness.errors import UsageError

        try:
            return cls.load(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"baseline {os.fspath(path)}: {exc}") from None

    @property
    def as_expected(self) -> bool:
        """Clean scenarios: bounded. Known leaks: every expected channel detected."""
        if not self.expect_leak:
            return self.bounded
        return set(self.expect_leak) <= set(self.leaking_channels)

    def summary(self, sites: int = 5) -> str:
        """A short human summary: the verdict, the channels, the top leak sites, the report."""
        leaking = self.leaking_channels
        settling = [n for n, c in self.channels.items() if c.undecided]
        if self.status == "undecided":
            head = (
                f"UNDECIDED: still settling after {self.cycles} cycles; run longer "
                f"({', '.join(settling)})"
            )
        elif leaking:
            regressions = [n for n in leaking if self.channels[n].regression]
            head = f"LEAK in {', '.join(leaking)}"
            if regressions:
                head += f" (regression against the baseline: {', '.join(regressions)})"
        else:
            head = "BOUNDED"
        if self.expect_leak and not self.bounded and self.as_expected:
            head += " (expected: " + ", ".join(self.expect_leak) + ")"
        elif self.expect_leak and not self.as_expected:
            head += " (expected a leak in " + ", ".join(self.expect_leak) + ": NOT detected)"
        tracked = f", then {self.tracked_cycles} under memray" if self.tracked else ""
        lines = [
            f"{self.scenario}: {head} after {self.cycles} cycles "
            f"({self.warmup} warm-up, {self.measured} measured untracked{tracked}; "
            f"{self.measured_cycles_per_second:,.0f} cycles/s)"
        ]
        width = max((len(n) for n in self.channels), default=8)
        pct = f"{self.confidence:.0%}"
        for name, ch in self.channels.items():
            slope = format_quantity(ch.slope_per_cycle, ch.unit, signed=True)
            lo = format_quantity(ch.slope_low, ch.unit, signed=True, bare=True)
            hi = format_quantity(ch.slope_high, ch.unit, signed=True, bare=True)
            growth = format_quantity(ch.growth, ch.unit, signed=True)
            mark = ch.kind.upper() if ch.leaking or ch.undecided else ch.kind
            lines.append(
                f"  {name:<{width}}  {slope:>14}/cycle  {pct} CI [{lo}, {hi}]  "
                f"growth {growth:>12}  {mark}"
            )
        if not self.bounded:
            for name in leaking or settling:
                lines.append(f"  {name}: {self.channels[name].reason}")
            if self.leak_sites:
                lines.append("  still live after the measured cycles (memray):")
                for site in self.leak_sites[:sites]:
                    lines.append(
                        f"    {format_quantity(site.size, 'bytes'):>10} in {site.count:>7,} "
                        f"allocations  {site.where}"
                    )
            grown = [g for g in self.gc_growth if g.delta > 0][:3]
            if grown:
                text = ", ".join(f"{g.type} +{g.delta:,}" for g in grown)
                lines.append(f"  types that grew: {text}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.report_dir:
            lines.append(f"  report: {Path(self.report_dir) / 'report.html'}")
        return "\n".join(lines)

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the CONTRACT fields (bounded, cycles, warmup, channels, leak_sites)..."""
        return {
            "bounded": self.bounded,
            "status": self.status,
            "cycles": self.cycles,
            "warmup": self.warmup,
            "measured": self.measured,
            "tracked_cycles": self.tracked_cycles,
            "requested_cycles": self.requested_cycles,
            "max_cycles": self.max_cycles,
            "baseline": self.baseline,
            "scenario": self.scenario,
            "leaking_channels": self.leaking_channels,
            "expect_leak": list(self.expect_leak),
            "as_expected": self.as_expected,
            "channels": {n: c.to_dict() for n, c in self.channels.items()},
            "leak_sites": [s.to_dict() for s in self.leak_sites],
            "leaked_bytes": self.leaked_bytes,
            "leaked_allocations": self.leaked_allocations,
            "confidence": self.confidence,
            "tracked": self.tracked,
            "seconds": self.seconds,
            "warmup_cycles_per_second": self.warmup_cycles_per_second,
            "measured_cycles_per_second": self.measured_cycles_per_second,
            "sample_every": self.sample_every,
            "gc_growth": [
                {"type": g.type, "start": g.start, "end": g.end, "delta": g.delta}
                for g in self.gc_growth
            ],
            "notes": list(self.notes),
            "report_dir": self.report_dir,
            "capture": self.capture,
            "timeline": {
                n: {"cycles": t.cycles, "values": t.values} for n, t in self.timeline.items()
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        try:
            return cls(
                bounded=bool(d["bounded"]),
                cycles=int(d["cycles"]),
                warmup=int(d["warmup"]),
                channels={
                    str(n): ChannelResult.from_dict(c) for n, c in dict(d["channels"]).items()
                },
                leak_sites=[LeakSite.from_dict(s) for s in d.get("leak_sites", [])],
                scenario=str(d.get("scenario", "cycle")),
                confidence=float(d.get("confidence", 0.99)),
                tracked=bool(d.get("tracked", False)),
                seconds=float(d.get("seconds", 0.0)),
                warmup_cycles_per_second=float(d.get("warmup_cycles_per_second", 0.0)),
                measured_cycles_per_second=float(d.get("measured_cycles_per_second", 0.0)),
                sample_every=int(d.get("sample_every", 1)),
                gc_growth=[
                    TypeGrowth(str(g["type"]), int(g["start"]), int(g["end"]))
                    for g in d.get("gc_growth", [])
                ],
                timeline={
                    str(n): Timeline(
                        [float(x) for x in t["cycles"]], [float(v) for v in t["values"]]
                    )
                    for n, t in dict(d.get("timeline", {})).items()
                },
                leaked_bytes=int(d.get("leaked_bytes", 0)),
                leaked_allocations=int(d.get("leaked_allocations", 0)),
                expect_leak=[str(c) for c in d.get("expect_leak", [])],
                notes=[str(n) for n in d.get("notes", [])],
                report_dir=d.get("report_dir"),
                capture=d.get("capture"),
                tracked_cycles=int(d.get("tracked_cycles", 0)),
                requested_cycles=int(d.get("requested_cycles", 0)),
                max_cycles=int(d.get("max_cycles", 0)),
                baseline=d.get("baseline"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a soak verdict: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Verdict:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, np.floating) else v


# -- the trend test --------------------------------------------------------------------------------

MIN_SAMPLES = 12
NOISE_MULTIPLE = 3.0
"""An automatic threshold is at least this many times the channel's scatter over the span."""
SETTLING_RATIO = 0.5
"""Growth decelerates when the second half's slope is below this fraction of the first's (and
their confidence intervals are apart). A fill whose rate falls as 1/cycle has a ratio of 0.71
over cycles 100..200, 0.51 over 100..400 and 0.35 over 200..2,000: a short run on such a ramp is
called a leak; its warm-up must cover the ramp (docs/harness.md, "Undecided"). A looser ratio
(0.75) turned the raw neonize storm's rss, whose growth follows Go's heap pacing, from a leak into
"undecided"."""

MIN_STEP = {"bytes": 128.0 * 1024}
"""Per unit, the least rise that is a step of a staircase (units without one are not searched).
Memory that comes in blocks comes in blocks of at least this: upb's arena (protobuf 4.24.4)
took 144, 288, 576 KiB..., planted leaks 256 and 512 KiB, glibc mmaps 128 KiB and more; the
clean scenarios' RSS climbs by 4 to 48 KiB at a time (docs/harness.md, "Staircases")."""
STEP_WINDOW = 5
"""Samples on each side of a step whose medians are the levels it joins: a rise that falls back
within fewer samples (a burst) is no step."""
STEP_NOISE = 5.0
"""A step is also at least this many times the scatter of consecutive samples."""
PLATEAU_TAIL = 2.0
"""A stepped channel may be a plateau only when the flat after its last step is longer than
this many times the longest spacing of its steps (for a single step: the cycles before it)."""


def analyze_channel(
    name: str,
    unit: str,
    cycles: Sequence[float] | npt.NDArray[np.float64],
    values: Sequence[float] | npt.NDArray[np.float64],
    *,
    threshold: float | None,
    min_growth: float = 0.0,
    confidence: float = 0.99,
    floor: float = 0.0,
    resolution: float = 0.0,
    min_step: float | None = None,
    pauses: Sequence[float] = (),
) -> ChannelResult:
    """Decide whether one channel leaks; see the module docstring for the rule.

    ``threshold=None`` derives it from this run's noise: the larger of ``floor`` and
    :data:`NOISE_MULTIPLE` times the channel's scatter around its trend (1.4826 x the median
    absolute residual) divided by the cycles spanned. Growth over the measured cycles of at
    most ``resolution`` (in the channel's unit) is never a leak, however steady its slope.
    ``min_step`` is the least rise of a staircase's step (default :data:`MIN_STEP` of ``unit``;
    0: no staircase search); ``cycles`` count from the start of the run, warm-up included.
    ``pauses`` are the cycles after which the harness decided and went on (see
    :func:`find_steps`).
    """
    x = np.asarray(cycles, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("cycles and values differ in length")
    if not 0.5 < confidence < 1:
        raise ValueError("confidence must be within (0.5, 1)")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = _thin(x[ok], y[ok], MAX_POINTS)
    n = int(x.shape[0])
    auto = threshold is None
    if n < MIN_SAMPLES or float(np.ptp(x)) == 0.0:
        start = float(y[0]) if n else 0.0
        end = float(y[-1]) if n else 0.0
        return ChannelResult(
            name, unit, 0.0, 0.0, 0.0, end - start, 0.0, 0.0, 1.0, 1.0,
            floor if threshold is None else threshold, min_growth, confidence, False,
            f"only {n} samples: too few to tell (run more cycles)", n, start, end,
            threshold_auto=auto, resolution=resolution,
        )  # fmt: skip

    slope, lo, hi = _theil_sen(x, y, confidence)
    noise = _scatter(x, y, slope)
    if threshold is None:
        threshold = max(floor, NOISE_MULTIPLE * noise / float(np.ptp(x)))
    p = _mann_kendall(x, y)
    mid = x[0] + (x[-1] - x[0]) / 2
    late = x >= mid
    xl, yl = x[late], y[late]
    xe, ye = x[~late], y[~late]
    late_slope, _, late_hi = _theil_sen(xl, yl, confidence) if xl.shape[0] >= 4 else (0.0, 0.0, 0.0)
    early_slope, early_lo, _ = (
        _theil_sen(xe, ye, confidence) if xe.shape[0] >= 4 else (0.0, 0.0, 0.0)
    )
    late_p = _mann_kendall(xl, yl) if xl.shape[0] >= 4 else 1.0
    growth = _level_change(y)
    late_growth = _level_change(yl)
    alpha = 1.0 - confidence

    per = f"{unit}/cycle" if unit else "/cycle"
    thr = f"{_g(threshold)} {per}" + (" (from noise)" if auto else "")
    leaking = undecided = False
    if lo <= threshold:
        if slope > threshold:
            reason = (
                f"slope {_g(slope)} {per} but its {confidence:.0%} lower bound {_g(lo)} "
                f"is not above {thr}"
            )
        else:
            reason = f"slope {_g(slope)} {per} is not above {thr}"
    elif growth <= resolution:
        reason = (
            f"slope {_g(slope)} {per}, but {_g(growth)} {unit} in all over the measured cycles, "
            f"within the channel's resolution of {_g(resolution)} {unit}: not a leak this run "
            "can show (run more cycles)"
        )
    elif late_slope <= threshold or late_p >= alpha or late_growth <= min_growth:
        reason = (
            f"grew early (slope {_g(slope)} {per}) but stopped: the second half grows "
            f"{_g(late_slope)} {per} (p={late_p:.2g}), {_g(late_growth)} {unit} in all; "
            "a cache or pool that fills, not a leak"
        )
    elif early_lo > late_hi and late_slope < SETTLING_RATIO * early_slope:
        undecided = True
        reason = (
            f"still settling: grows {_g(early_slope)} {per} in the first half of the measured "
            f"cycles and {_g(late_slope)} {per} in the second ({confidence:.0%} CIs apart); "
            "decelerating growth is a cache filling or a leak under it: run longer"
        )
    else:
        leaking = True
        reason = (
            f"grows {_g(slope)} {per} ({confidence:.0%} CI {_g(lo)}..{_g(hi)}, above {thr}), "
            f"{_g(growth)} {unit} over the measured cycles, and still grows in their second "
            f"half ({_g(late_slope)} {per}, Mann-Kendall p={late_p:.2g})"
        )
    step = MIN_STEP.get(unit, 0.0) if min_step is None else min_step
    steps = find_steps(x, y, step, pauses) if step > 0 else []
    if steps and not leaking:
        stairs = _judge_staircase(steps, float(x[-1]), unit)
        if stairs is not None:
            leaking, undecided, reason = stairs
    return ChannelResult(
        name=name,
        unit=unit,
        slope_per_cycle=slope,
        slope_low=lo,
        slope_high=hi,
        growth=growth,
        late_slope_per_cycle=late_slope,
        late_growth=late_growth,
        p_value=p,
        late_p_value=late_p,
        threshold=threshold,
        min_growth=min_growth,
        confidence=confidence,
        leaking=leaking,
        reason=reason,
        samples=n,
        start=float(y[0]),
        end=float(y[-1]),
        undecided=undecided,
        early_slope_per_cycle=early_slope,
        late_slope_high=late_hi,
        noise=noise,
        threshold_auto=auto,
        resolution=resolution,
        steps=[c for c, _ in steps],
    )


def find_steps(
    cycles: Sequence[float] | npt.NDArray[np.float64],
    values: Sequence[float] | npt.NDArray[np.float64],
    min_step: float,
    pauses: Sequence[float] = (),
) -> list[tuple[float, float]]:
    """The rises of ``values`` that are steps of a staircase: (cycle, rise) of each, in order.

    A rise is a change between two consecutive samples, the level after it (the median of the
    :data:`STEP_WINDOW` samples from it) at least ``min_step`` and :data:`STEP_NOISE` times the
    scatter of consecutive samples above the level before it (the median of the samples
    before), at least half of it in that one interval (sharp: a ramp has no rises) and at least
    half of it above every level before (a rise back from a dip, as ``burst``'s RSS takes when
    the allocator gave memory back and takes it again, is no step). A rise
    whose level falls back below its midpoint later is a tooth (a sawtooth's, a burst's); one
    that never does is a step once it has stayed up longer than the longest tooth (the last
    tooth of a sawtooth may be up when the samples end). A rise across one of ``pauses`` (a
    decision of the harness between two samples) is no step: the allocator keeps part of the
    decision's scratch memory resident (Theil-Sen's pairwise differences, megabytes): an
    extended soak's RSS rose by 1.7 MiB across its decision at 2,000 cycles and by 0.7 MiB
    across the one at 3,800, a staircase of the harness's own.
    """
    y = np.asarray(values, dtype=np.float64)
    x = np.asarray(cycles, dtype=np.float64)
    w = STEP_WINDOW
    if y.shape[0] < 2 * w:
        return []
    levels = np.median(np.lib.stride_tricks.sliding_window_view(y, w), axis=1)
    least = max(min_step, STEP_NOISE * _jitter(np.diff(y)))
    stayed: list[tuple[int, float]] = []
    tooth = 0.0
    for i, before, rise in _sharp_rises(y, levels, least):
        fell = np.flatnonzero(levels[i:] < before + rise / 2)
        if fell.shape[0]:
            tooth = max(tooth, float(x[i + fell[0]] - x[i]))
        elif any(x[i - 1] <= p < x[i] for p in pauses):
            continue
        elif stayed and i - stayed[-1][0] < w:
            stayed[-1] = max(stayed[-1], (i, rise), key=lambda s: s[1])
        else:
            stayed.append((i, rise))
    # up from x[i] at least until the last window's start, as a tooth is until its fall's
    return [(float(x[i]), rise) for i, rise in stayed if x[-w] - x[i] > tooth]


def compare_channel(new: ChannelResult, old: ChannelResult, floor: float) -> ChannelResult:
    """``new`` marked a regression when its slope rose beyond the noise of both runs.

    Beyond noise: the new slope's lower confidence bound is above the old one's upper bound
    (within-run noise), and both the rise and the new slope are above ``floor`` (run-to-run
    drift of clean runs, the channel's automatic threshold floor; for counts, which have
    none, any rise), and the new growth beyond the channel's resolution: a channel that shrinks
    less than before has not regressed.
    """
    new.baseline_slope = old.slope_per_cycle
    rise = new.slope_per_cycle - old.slope_per_cycle
    grows = new.slope_per_cycle > floor and rise > floor and new.growth > new.resolution
    if new.leaking or new.slope_low <= old.slope_high or not grows:
        return new
    per = f"{new.unit}/cycle" if new.unit else "/cycle"
    new.leaking = new.regression = True
    new.undecided = False
    new.reason = (
        f"REGRESSION: slope {_g(new.slope_per_cycle)} {per} (CI {_g(new.slope_low)}.."
        f"{_g(new.slope_high)}) against {_g(old.slope_per_cycle)} {per} (CI "
        f"{_g(old.slope_low)}..{_g(old.slope_high)}) in the baseline: +{_g(rise)} {per}, "
        f"beyond the noise of both runs (and above {_g(floor)} {per})"
    )
    return new


def decide(
    probes: Sequence[Any],
    series: Mapping[str, tuple[Any, Any]],
    cfg: Any,
    cycles: int,
) -> Verdict:
    """The verdict on ``series`` (the measured samples) of ``probes``, with ``cfg``'s options.

    ``cfg`` is a :class:`harness.config.Config`; ``cycles`` how many ran (warm-up included).
    """
    channels = {}
    pauses = [t for t in cfg.decision_points() if t < cycles]
    for p in probes:
        xs, ys = series.get(p.name, ([], []))
        channels[p.name] = analyze_channel(
            p.name, p.unit, xs, ys, threshold=p.threshold, min_growth=p.min_growth,
            confidence=cfg.confidence, floor=p.floor, resolution=p.resolution, pauses=pauses,
        )  # fmt: skip
    v = Verdict(
        bounded=False,
        cycles=cycles,
        warmup=cfg.warmup,
        channels=channels,
        leak_sites=[],
        scenario=cfg.name,
        confidence=cfg.confidence,
        expect_leak=list(cfg.expect_leak),
        requested_cycles=cfg.cycles,
        max_cycles=cfg.max_cycles,
    )
    v.settle()
    return v


def _sharp_rises(
    y: npt.NDArray[np.float64], levels: npt.NDArray[np.float64], least: float
) -> Iterator[tuple[int, float, float]]:
    """(index, level before, rise) of each sharp rise of ``y`` by ``least`` to new ground: at
    least half of it above every level before (a rise back from a dip is none; see
    find_steps)."""
    w = STEP_WINDOW
    d = np.diff(y)
    peaks = np.maximum.accumulate(levels)
    for i in (int(j) + 1 for j in np.flatnonzero(d >= least / 2)):
        if w <= i <= y.shape[0] - w:
            before = float(np.median(y[i - w : i]))
            rise = float(levels[i]) - before
            new = float(levels[i] - peaks[i - w])
            if rise >= least and d[i - 1] >= rise / 2 and new >= rise / 2:
                yield i, before, rise


def _jitter(d: npt.NDArray[np.float64]) -> float:
    """The scatter of one sample, from consecutive differences ``d`` (robust to steps)."""
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def _judge_staircase(
    steps: Sequence[tuple[float, float]], end: float, unit: str
) -> tuple[bool, bool, str] | None:
    """(leaking, undecided, reason) of a channel that rose by ``steps``; None: no verdict."""
    at = [c for c, _ in steps]
    tail = end - at[-1]
    spacing = float(max(np.diff(at))) if len(at) > 1 else at[0]
    what = f"{len(at)} step{'s' if len(at) > 1 else ''} of {_sizes(steps, unit)}"
    where = "at cycle" + ("s " if len(at) > 1 else " ") + ", ".join(_g(c) for c in at)
    if len(at) >= 3 and tail <= spacing:
        return True, False, (
            f"rises in {what} ({where}, up to {_g(spacing)} cycles apart), flat between them, "
            f"the last {_g(tail)} cycles before the end: a staircase (memory taken in blocks), "
            "a leak however flat between its steps"
        )  # fmt: skip
    if tail <= PLATEAU_TAIL * spacing:
        gap = f"{_g(spacing)} cycles " + ("apart" if len(at) > 1 else "into the run")
        return False, True, (
            f"rose in {what} ({where}, {gap}) and has been flat for {_g(tail)} cycles since, "
            f"not yet {PLATEAU_TAIL:g} x {_g(spacing)}: a staircase or a pool that filled; "
            "more cycles tell"
        )  # fmt: skip
    return None


def _sizes(steps: Sequence[tuple[float, float]], unit: str) -> str:
    rises = [r for _, r in steps]
    lo, hi = format_quantity(min(rises), unit), format_quantity(max(rises), unit)
    return lo if lo == hi else f"{lo} to {hi}"


def _scatter(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], slope: float) -> float:
    """Robust scatter of ``y`` around its trend line: 1.4826 x median absolute residual."""
    r = y - slope * x
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _thin(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], limit: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    if x.shape[0] <= limit:
        return x, y
    idx = np.unique(np.linspace(0, x.shape[0] - 1, limit).round().astype(np.int64))
    return x[idx], y[idx]


def _theil_sen(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], confidence: float
) -> tuple[float, float, float]:
    from scipy import stats

    if float(np.ptp(y)) == 0.0:
        return 0.0, 0.0, 0.0
    res = stats.theilslopes(y, x, alpha=confidence)
    return float(res.slope), float(res.low_slope), float(res.high_slope)


def _mann_kendall(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    from scipy import stats

    if float(np.ptp(y)) == 0.0:
        return 1.0
    p = float(stats.kendalltau(x, y, alternative="greater").pvalue)
    return p if math.isfinite(p) else 1.0


def _level_change(y: npt.NDArray[np.float64]) -> float:
    k = max(1, y.shape[0] // 10)
    return float(np.median(y[-k:]) - np.median(y[:k]))


def _g(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_quantity(value: float, unit: str, *, signed: bool = False, bare: bool = False) -> str:
    """``183 KiB``, ``+1.00 blocks``... ``bare`` leaves the unit out (not for bytes)."""
    sign = "+" if signed and value > 0 else ""
    if unit == "bytes":
        v = abs(value)
        for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if v >= scale:
                text = f"{value / scale:.3g} {suffix}"
                break
        else:
            text = f"{value:.3g} B" if abs(value) < 100 else f"{value:.0f} B"
        return sign + text
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return sign + text if bare or not unit else f"{sign}{text} {unit}"


# -- memray leak sites -----------------------------------------------------------------------------

_HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))
_MACHINERY = {
    os.path.join(_HARNESS_DIR, f"{m}.py")
    for m in (
        "__init__", "__main__", "analysis", "child", "cli", "config", "engine", "errors",
        "expect", "model", "plugin", "probes", "report",
    )
}  # fmt: skip
"""The harness's own modules (not the scenarios, mutants, rigs: they are workloads)."""
_THREADS = os.path.join(_HARNESS_DIR, "threads.py")
"""Plumbing: the wrapper of Thread.start that notes where threads start."""
_STDLIB_DIRS = tuple(
    os.path.normpath(p) + os.sep
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
)
_SITE_DIRS = tuple(
    os.path.normpath(p) + os.sep
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
)
_IGNORED_STDLIB = (
    "asyncio",
    "threading.py",
    "concurrent",
    "contextlib.py",
    "selectors.py",
    "runpy.py",
)


def _library_dirs() -> tuple[str, ...]:
    """Directories of the libraries under test: ``waclient`` counts as library code."""
    import importlib.util

    dirs = []
    spec = importlib.util.find_spec("waclient")
    if spec is not None and spec.submodule_search_locations:
        dirs += [os.path.normpath(p) + os.sep for p in spec.submodule_search_locations]
    return tuple(dirs)


def is_machinery(filename: str) -> bool:
    """Frames the harness itself, memray, or the event loop's plumbing put on the stack."""
    f = os.path.normpath(filename)
    if f in _MACHINERY or f == _THREADS or "/memray/" in f:
        return True
    if f.startswith(_STDLIB_DIRS):
        rest = f.split(os.sep)[-2:]
        return rest[0] in _IGNORED_STDLIB or rest[-1] in _IGNORED_STDLIB
    return False


def _is_library(filename: str, libraries: tuple[str, ...]) -> bool:
    f = os.path.normpath(filename)
    return (
        f.startswith(_STDLIB_DIRS)
        or f.startswith(_SITE_DIRS)
        or f.startswith(libraries)
        or "site-packages" in f
        or f.startswith("<")
    )


def display_path(filename: str) -> str:
    """A short path: relative to the current directory, or from ``site-packages/``."""
    f = os.path.normpath(filename)
    cwd = os.getcwd() + os.sep
    if f.startswith(cwd):
        return f[len(cwd) :]
    marker = os.sep + "site-packages" + os.sep
    if marker in f:
        return f.split(marker, 1)[1]
    for d in _STDLIB_DIRS:
        if f.startswith(d):
            return "<stdlib>/" + f[len(d) :]
    return f


def leak_sites_from_capture(
    path: str | os.PathLike[str],
    top: int = TOP_SITES,
    starts: Mapping[str, Frames] | None = None,
) -> tuple[list[LeakSite], int, int]:
    """The largest sites still live at the end of a memray capture, grouped by location.

    The location of a site is its first frame in user code: not the harness's own machinery,
    memray, asyncio or threading plumbing, the standard library, installed packages, or
    ``waclient`` (the library under test). When there is no such frame (memory the Go core
    took on a neonize thread), the innermost remaining frame; memory a thread allocated with
    no Python stack goes to the line that started it when ``starts``
    (:func:`harness.threads.thread_starts`) knows it. Returns (sites, bytes, count).
    """
    import memray

    libraries = _library_dirs()
    grouped: dict[str, LeakSite] = {}
    largest: dict[str, int] = {}
    total_size = total_count = 0
    reader = memray.FileReader(os.fspath(path))
    hybrid = bool(reader.metadata.has_native_traces)
    try:
        for rec in reader.get_leaked_allocation_records(merge_threads=False):
            size, count = int(rec.size), int(rec.n_allocations)
            frames: Frames = [(fn, file, line) for fn, file, line in rec.stack_trace()]
            native: Frames = []
            if not frames and hybrid:
                native = _native_frames(rec)
                if any(fn in TRACER_FRAMES for fn, _, _ in native):
                    continue  # the tracer's own: line tables, frames of code it first sees
                frames = [fr for fr in native if fr[1].endswith(".py")] or native
            if not frames and starts:
                frames = list(starts.get(str(rec.thread_name), []))
            if _allocated_by_the_harness(frames, libraries):
                continue  # the harness's own bookkeeping (progress JSON, sampling)
            kept = [fr for fr in frames if not is_machinery(fr[1])]
            if frames and not kept:
                continue  # the event loop's or a thread's plumbing only
            total_size += size
            total_count += count
            if not kept:
                location, function = NO_PYTHON_FRAME, "?"
            elif not kept[0][1].endswith(".py"):  # native frames only
                c = next((fr for fr in kept if fr[0] not in _ALLOCATORS), kept[0])
                location, function = f"{NATIVE}{c[0]}", f"{os.path.basename(c[1])}:{c[2]}"
            else:
                user = next((fr for fr in kept if not _is_library(fr[1], libraries)), kept[0])
                location, function = f"{display_path(user[1])}:{user[2]}", user[0]
            site = grouped.get(location)
            if site is None:
                site = grouped[location] = LeakSite(location, function, 0, 0)
            site.size += size
            site.count += count
            if size > largest.get(location, -1):
                largest[location] = size
                site.stack = [f"{display_path(f)}:{ln} in {fn}" for fn, f, ln in kept[:12]]
    finally:
        reader.close()
    # Memory with no Python frame (a thread's own stack and state, allocated before it runs
    # Python; Go's) ranks after every located site: the Python line that caused it, such as
    # the Thread.start() call, says more.
    sites = sorted(
        grouped.values(), key=lambda s: (s.location == NO_PYTHON_FRAME, -s.size, s.location)
    )
    return sites[:top], total_size, total_count


def _allocated_by_the_harness(
    frames: Sequence[tuple[str, str, int]], libraries: tuple[str, ...]
) -> bool:
    """True when the innermost frame that is not library code is the harness's own.

    The cycle runs under the harness's loop, so harness frames are at the bottom of every
    stack; memory is the harness's when no user frame comes before one, innermost first
    (``json.dumps`` of a progress message: the stdlib frame, then the harness's).
    """
    for _function, filename, _line in frames:
        if os.path.normpath(filename) in _MACHINERY:
            return True
        if not _is_library(filename, libraries):
            return False
    return False


def _native_frames(rec: Any) -> list[tuple[str, str, int]]:
    """A record's hybrid stack (C frames with the Python ones among them), when memray lost
    its Python stack.

    memray's Python stack of a coroutine chain resumed by ``throw()`` (an exception or a
    cancellation delivered into an awaiting coroutine) can come out empty (CPython gh-93592);
    with native traces the interpreter's own frames are still in the native stack. Memory C
    code allocated with no Python code under it (a native thread's) has C frames only.
    """
    try:
        hybrid = rec.hybrid_stack_trace()
    except Exception:  # memray asserts on some native stacks
        return []
    return [(str(fn), str(file), int(line)) for fn, file, line in hybrid]


_ALLOCATORS = frozenset(
    {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign", "valloc",
     "mmap", "mmap64", "operator new", "operator new[]"}
)  # fmt: skip
"""C functions that only allocate: a native site is the first frame outside them."""


def gc_type_counts() -> dict[str, int]:
    """Live gc-tracked objects per type (``module.qualname``), frozen ones left out.

    The soak freezes everything before its measured cycles, so this counts what they created
    and kept: the types that grew. Not unfreezing keeps it cheap and small: a list of every
    object in a large process is megabytes, and a transient allocation that size moves glibc's
    dynamic mmap and trim thresholds, which shows as rss moving long after.
    """
    import gc

    # A plain loop: Counter(iterable) asks isinstance(iterable, Mapping), and that caches the
    # iterable's type in a weak set per ABC of the check (a weakref, its callback and a set
    # each): objects of the harness's own that grew between two counts.
    by_type: dict[type, int] = {}
    for o in gc.get_objects():
        t = type(o)
        by_type[t] = by_type.get(t, 0) + 1
    counts: dict[str, int] = {}
    for t, n in by_type.items():
        key = f"{t.__module__}.{t.__qualname__}"
        counts[key] = counts.get(key, 0) + n
    return counts


def type_growth(
    start: Mapping[str, int], end: Mapping[str, int], top: int = 15
) -> list[TypeGrowth]:
    """The types whose instance count grew most (then those that shrank least)."""
    rows = [TypeGrowth(t, start.get(t, 0), end.get(t, 0)) for t in set(start) | set(end)]
    rows.sort(key=lambda r: (-r.delta, r.type))
    return [r for r in rows if r.delta != 0][:top]
