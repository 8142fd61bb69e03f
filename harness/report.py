"""The report directory of a soak, and the progress bar shown while one runs.

``write_report(verdict, directory)`` writes:

- ``verdict.json``: the verdict (CONTRACT fields and the samples), re-renderable with
  ``python -m harness report DIR``;
- ``timeline.png``: one memory-timeline panel per channel (warm-up in grey, the measured cycles
  in colour, the Theil-Sen fits over all measured cycles and over their second half);
- ``report.html``: self-contained (the PNG embedded as base64, no external assets): the
  verdict, the channel table, the leak-sites table, the types that grew;
- ``leak-sites.txt``: the leak-sites table as text;
- ``flamegraph-leaks.html``: when the verdict leaks and the memray capture
  (``memray-leaks.bin``, aggregated format) is there, memray's flame graph of the memory still
  live after the measured cycles (``python -m memray flamegraph --leaks --no-web``; aggregated
  captures support ``--leaks``, not ``--temporal`` nor temporary allocations).
"""

from __future__ import annotations

import base64
import html
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.analysis import Verdict, format_quantity

__all__ = ["ProgressBar", "render_flamegraph", "render_html", "render_timeline", "write_report"]

_PHASE_LABEL = {
    "setup": "setting up",
    "warm-up": "warm-up (untracked)",
    "measured": "measured",
    "tracked": "under memray (leak sites)",
    "analysis": "analysing",
    "report": "writing the report",
    "teardown": "tearing down",
    "done": "done",
}


class ProgressBar:
    """A rich progress bar on stderr; plain phase lines when stderr is not a terminal.

    Call it as ``bar(phase, done, total)``; ``close()`` when finished.
    """

    def __init__(self, name: str, *, force: bool | None = None) -> None:
        self.name = name
        self.tty = sys.stderr.isatty() if force is None else force
        self._phase = ""
        self._progress: Any = None
        self._task: Any = None
        self._started = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self._phase = phase
            label = _PHASE_LABEL.get(phase, phase)
            if not self.tty:
                if phase in ("warm-up", "measured") and total:
                    print(f"{self.name}: {label}, {total:,} cycles", file=sys.stderr, flush=True)
                elif phase in ("analysis", "report"):
                    print(f"{self.name}: {label}", file=sys.stderr, flush=True)
                return
            self._ensure()
            self._progress.update(
                self._task,
                description=f"{self.name}: {label}",
                total=total or None,
                completed=done,
            )
            return
        if self.tty and self._progress is not None:
            self._progress.update(self._task, completed=done, total=total or None)

    def _ensure(self) -> None:
        if self._progress is not None:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.name, total=None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# -- the report directory --------------------------------------------------------------------------


def write_report(verdict: Verdict, directory: str | os.PathLike[str]) -> Path:
    """Write the report files into ``directory``; return the path of ``report.html``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    verdict.report_dir = str(out)
    capture = out / "memray-leaks.bin"
    if verdict.capture is None and capture.exists():
        verdict.capture = str(capture)
    notes_before = list(verdict.notes)
    flame = out / "flamegraph-leaks.html"
    if not verdict.bounded and verdict.capture and Path(verdict.capture).exists():
        error = render_flamegraph(Path(verdict.capture), flame)
        if error:
            verdict.notes.append(f"no flame graph: {error}")
    elif flame.exists():
        flame.unlink()  # a stale one from an earlier run
    (out / "verdict.json").write_text(verdict.to_json(), encoding="utf-8")
    png = render_timeline(verdict)
    (out / "timeline.png").write_bytes(png)
    (out / "leak-sites.txt").write_text(leak_sites_text(verdict), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(verdict, png, flame if flame.exists() else None), encoding="utf-8")
    verdict.notes = notes_before + [n for n in verdict.notes if n not in notes_before]
    return page


def render_flamegraph(capture: Path, output: Path, timeout: float = 300.0) -> str | None:
    """memray's flame graph of leaks (self-contained HTML); an error message, or None."""
    cmd = [
        sys.executable, "-m", "memray", "flamegraph", "--leaks", "--no-web", "-f",
        "-o", str(output), str(capture),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0 or not output.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return tail[-1] if tail else f"memray exited with {proc.returncode}"
    return None


def leak_sites_text(verdict: Verdict) -> str:
    lines = [
        f"memory still live after the {verdict.tracked_cycles} cycles of {verdict.scenario} "
        f"under memray: {format_quantity(verdict.leaked_bytes, 'bytes')} in "
        f"{verdict.leaked_allocations:,} allocations",
        "",
        f"{'size':>12}  {'allocs':>9}  {'per cycle':>10}  location",
    ]
    if not verdict.tracked:
        lines.append("(not tracked: run with memray to see leak sites)")
    for s in verdict.leak_sites:
        per = format_quantity(s.size / max(1, verdict.tracked_cycles), "bytes")
        lines.append(f"{format_quantity(s.size, 'bytes'):>12}  {s.count:>9,}  {per:>10}  {s.where}")
        for frame in s.stack[1:6]:
            lines.append(f"{'':>37}  called from {frame}")
    return "\n".join(lines) + "\n"


def render_timeline(verdict: Verdict) -> bytes:
    """One panel per channel: samples, the warm-up shaded, the fitted slopes; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(verdict.channels)
    ncols = 2
    nrows = max(1, (len(names) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows), squeeze=False)
    title = {"bounded": "BOUNDED", "undecided": "UNDECIDED (still settling)"}.get(
        verdict.status, "LEAK in " + ", ".join(verdict.leaking_channels)
    )
    fig.suptitle(
        f"{verdict.scenario}: {title}  ({verdict.cycles:,} cycles, {verdict.warmup:,} warm-up)",
        fontsize=14,
        color="black" if verdict.bounded else "#b00020",
    )
    for ax, name in zip(axes.flat, names, strict=False):
        ch = verdict.channels[name]
        tl = verdict.timeline.get(name)
        scale, unit = _scale(ch.unit, tl.values if tl else [])
        if tl and tl.cycles:
            x = np.asarray(tl.cycles)
            y = np.asarray(tl.values) / scale
            warm = x < verdict.warmup
            tracked = x > verdict.cycles
            measured = ~warm & ~tracked
            ax.plot(x[warm], y[warm], ".", ms=2, color="0.6", label="warm-up (untracked)")
            ax.plot(x[measured], y[measured], ".", ms=2, color="#1f77b4", label="measured")
            if tracked.any():
                ax.plot(x[tracked], y[tracked], ".", ms=2, color="#9467bd",
                        label="under memray (not analysed)")  # fmt: skip
            m, my = x[measured], y[measured]
            if m.size >= 2:
                # Lines through the median residual, as Theil-Sen's own intercept.
                slope = ch.slope_per_cycle / scale
                b = float(np.median(my - slope * m))
                xs = np.array([m[0], m[-1]])
                ax.plot(xs, b + slope * xs, "-", color="#ff7f0e", lw=1.5,
                        label=f"slope {_fmt_slope(ch)}")  # fmt: skip
                late = m >= m[0] + (m[-1] - m[0]) / 2
                if late.sum() >= 2:
                    ls = ch.late_slope_per_cycle / scale
                    bl = float(np.median(my[late] - ls * m[late]))
                    xl = np.array([m[late][0], m[late][-1]])
                    ax.plot(xl, bl + ls * xl, "--", color="#2ca02c", lw=1.5,
                            label="second half")  # fmt: skip
                if verdict.tracked:
                    ax.axvline(verdict.cycles, color="0.5", lw=0.8, ls=":")
        if verdict.warmup:
            ax.axvspan(0, verdict.warmup, color="0.92", zorder=0)
        state = ch.kind.upper() if ch.leaking or ch.undecided else ch.kind
        ax.set_title(f"{name}: {state}", color="#b00020" if ch.leaking else "black", fontsize=11)
        ax.set_xlabel("cycles")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _scale(unit: str, values: list[float]) -> tuple[float, str]:
    if unit != "bytes":
        return 1.0, unit
    peak = max((abs(v) for v in values), default=0.0)
    for suffix, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if peak >= 10 * scale:
            return scale, suffix
    return 1.0, "bytes"


def _fmt_slope(ch: Any) -> str:
    return format_quantity(ch.slope_per_cycle, ch.unit, signed=True) + "/cycle"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em} .leak{color:#b00020;font-weight:bold} .ok{color:#1b7f3b;font-weight:bold}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.leakrow td{background:#fdecee}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
img{max-width:100%;border:1px solid #ddd} .small{color:#666;font-size:.85em}
"""


def render_html(verdict: Verdict, png: bytes, flamegraph: Path | None = None) -> str:
    """A self-contained page: no scripts, styles or images from anywhere else."""
    e = html.escape
    state = (
        '<span class="ok">BOUNDED</span>'
        if verdict.bounded
        else f'<span class="leak">LEAK in {e(", ".join(verdict.leaking_channels))}</span>'
    )
    expected = ""
    if verdict.expect_leak:
        outcome = "detected" if verdict.as_expected else "NOT detected"
        expected = f"<p>Known leak expected in {e(', '.join(verdict.expect_leak))}: {outcome}.</p>"
    pct = f"{verdict.confidence:.0%}"
    rows = []
    for name, ch in verdict.channels.items():
        rows.append(
            f'<tr class="{"leakrow" if ch.leaking else ""}"><td class="l">{e(name)}</td>'
            f"<td>{e(format_quantity(ch.slope_per_cycle, ch.unit, signed=True))}</td>"
            f"<td>{e(format_quantity(ch.slope_low, ch.unit, signed=True))} .. "
            f"{e(format_quantity(ch.slope_high, ch.unit, signed=True))}</td>"
            f"<td>{e(format_quantity(ch.late_slope_per_cycle, ch.unit, signed=True))}</td>"
            f"<td>{e(format_quantity(ch.growth, ch.unit, signed=True))}</td>"
            f"<td>{e(format_quantity(ch.threshold, ch.unit))}</td>"
            f"<td>{ch.late_p_value:.2g}</td><td>{ch.samples}</td>"
            f'<td class="l">{"<b>LEAK</b>" if ch.leaking else e(ch.kind)}</td>'
            f'<td class="l small">{e(ch.reason)}</td></tr>'
        )
    site_rows = []
    for s in verdict.leak_sites:
        stack = "<br>".join(e(f) for f in s.stack[:8])
        site_rows.append(
            f"<tr><td>{e(format_quantity(s.size, 'bytes'))}</td><td>{s.count:,}</td>"
            f"<td>{e(format_quantity(s.size / max(1, verdict.tracked_cycles), 'bytes'))}</td>"
            f'<td class="l"><code>{e(s.where)}</code></td>'
            f'<td class="l small"><code>{stack}</code></td></tr>'
        )
    if not verdict.tracked:
        sites = "<p>No cycles ran under memray: no leak sites.</p>"
    elif site_rows:
        sites = (
            "<table><tr><th>size</th><th>allocations</th><th>per cycle</th>"
            '<th class="l">location (first frame in user code)</th><th class="l">stack</th></tr>'
            + "".join(site_rows)
            + "</table>"
        )
    else:
        sites = "<p>memray saw nothing still live.</p>"
    growth_rows = "".join(
        f'<tr><td class="l"><code>{e(g.type)}</code></td><td>{g.start:,}</td><td>{g.end:,}</td>'
        f"<td>{g.delta:+,}</td></tr>"
        for g in verdict.gc_growth
    )
    growth = (
        "<table><tr><th class='l'>type</th><th>start</th><th>end</th><th>change</th></tr>"
        + growth_rows
        + "</table>"
        if growth_rows
        else "<p>No type changed its instance count.</p>"
    )
    flame = (
        f'<p>memray flame graph of the memory still live: <a href="{e(flamegraph.name)}">'
        f"{e(flamegraph.name)}</a></p>"
        if flamegraph is not None
        else ""
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in verdict.notes)
    img = base64.b64encode(png).decode("ascii")
    tracked = (
        f"then {verdict.tracked_cycles:,} more under memray, for the leak sites only"
        if verdict.tracked
        else "no cycles under memray (no leak sites)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>soak: {e(verdict.scenario)}</title>
<style>{_CSS}</style></head><body>
<h1>soak <code>{e(verdict.scenario)}</code>: {state}</h1>
<p>{verdict.cycles:,} cycles: {verdict.warmup:,} warm-up (untracked, not analysed), then
{verdict.measured:,} measured (untracked: the verdict is decided on these); {tracked}.
{verdict.measured_cycles_per_second:,.0f} cycles/s after the warm-up
(warm-up {verdict.warmup_cycles_per_second:,.0f} cycles/s); sampled every
{verdict.sample_every} cycle(s); {verdict.seconds:.1f} s in all.</p>
{expected}
<p class="small">A channel leaks when the Theil-Sen slope of the measured cycles has its {pct}
lower confidence bound above the channel's threshold AND the second half of the measured cycles
still grows (its own slope above the threshold, Mann-Kendall p below {1 - verdict.confidence:.2g},
growth above the channel's minimum). A cache that fills and stops fails the second test.</p>
<h2>Channels</h2>
<table><tr><th class="l">channel</th><th>slope/cycle</th><th>{pct} CI</th>
<th>2nd-half slope</th><th>growth</th><th>threshold</th><th>2nd-half p</th><th>samples</th>
<th class="l">verdict</th><th class="l">why</th></tr>
{"".join(rows)}</table>
<h2>Timeline</h2>
<img alt="memory timeline per channel" src="data:image/png;base64,{img}">
<h2>Leak sites</h2>
<p>Memory allocated during the cycles under memray and still live when they ended:
{e(format_quantity(verdict.leaked_bytes, "bytes"))} in {verdict.leaked_allocations:,}
allocations.</p>
{sites}
{flame}
<h2>Types that grew</h2>
<p class="small">gc-tracked instances per type at the start and the end of the measured
cycles.</p>
{growth}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
</body></html>
"""
