"""``python -m harness``: soak, scenarios, report, compare, suite.

    python -m harness soak --scenario NAME|MODULE:FUNC [--cycles N] [--warmup N]
                           [--max-cycles N] [--tracked-cycles N] [--baseline verdict.json]
                           [--json PATH] [--report DIR] [--timeout S] [--cycle-timeout S]
                           [--threshold CH=V]...
    python -m harness scenarios
    python -m harness report DIR|verdict.json [--out DIR]
    python -m harness compare OLD NEW
    python -m harness suite [--long] [--report DIR] [--only NAME]... [--baseline DIR]

``soak`` runs the scenario in a fresh subprocess (``MODULE`` is imported there with this
environment, PYTHONPATH and current directory), shows a progress bar, prints a short summary,
and exits 0 when memory stays bounded, 1 when a channel leaks (or regressed against the
baseline), 3 when still undecided at ``--max-cycles`` (growth still settling), 2 when it could
not decide (bad usage, a cycle raised, timed out, a cycle ran past its ``--cycle-timeout``: a
stall); then the reason is one line on stderr, and the child's full output (traceback
included) is in ``scenario.log``.

``suite`` runs every built-in scenario that way (what ``nox -s soak`` does): each report goes
to ``DIR/<scenario>/``. Clean scenarios must be bounded; known leaks (the raw neonize storm,
an upstream leak; the mutants) must be detected on their channels; one expected to stall must
end at a cycle's deadline; a scenario that cannot run here (SKIPPED) or stays undecided fails
unless ``--allow-skipped``/``--allow-undecided``.
Exit 0 when every scenario is as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from harness.config import Settings

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _fail(message: str) -> int:
    print(f"harness: {message}", file=sys.stderr)
    return 2


def _thresholds(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(
                _fail(f"--threshold {item!r}: expected CHANNEL=UNITS_PER_CYCLE")
            ) from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_child"]:
        from harness.child import child_main

        return child_main(args[1:])
    parser = _Parser(prog="python -m harness", description="waclient's soak harness")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("soak", help="soak one scenario in a fresh subprocess")
    p.add_argument("--scenario", required=True, help="a built-in name or MODULE:FUNC")
    _run_options(p)
    p.add_argument("--json", help="write the verdict JSON here")
    p.add_argument("--report", help="write the report (HTML, PNG, flame graph) here")
    p.add_argument("--timeout", type=float,
                   help="stop the run after this many seconds (default: the scenario's, else "
                   f"{Settings.DEFAULT_TIMEOUT:,.0f}; inf: none)")  # fmt: skip
    p.add_argument("--cycle-timeout", type=float, metavar="S",
                   help="a cycle running over S seconds ends the soak (exit 2)")  # fmt: skip
    p.add_argument(
        "--threshold", action="append", default=[], metavar="CHANNEL=V",
        help="a channel's leak threshold in units per cycle (repeatable)",
    )  # fmt: skip
    p.add_argument("--baseline", help="a verdict JSON to compare with (regressions fail)")
    p.add_argument("--native-traces", action="store_true", default=None,
                   help="memray: native stacks too (slower; for C/Go leaks)")  # fmt: skip

    sub.add_parser("scenarios", help="list the built-in scenarios")

    r = sub.add_parser("report", help="re-render a report from its verdict JSON")
    r.add_argument("source", help="a report directory or a verdict JSON file")
    r.add_argument("--out", help="write the report here (default: next to the JSON)")

    c = sub.add_parser("compare", help="per channel slopes of two verdicts; regressions")
    c.add_argument("old", help="the baseline: a verdict JSON or a report directory")
    c.add_argument("new", help="the run to judge: a verdict JSON or a report directory")

    s = sub.add_parser("suite", help="every built-in scenario, with expectations")
    s.add_argument("--long", action="store_true", help="thousands of cycles (soak-long)")
    s.add_argument("--report", default="soak-report", help="reports go to DIR/<scenario>/")
    s.add_argument("--only", action="append", default=[], metavar="NAME")
    s.add_argument("--baseline", metavar="DIR",
                   help="compare with DIR/<scenario>/verdict.json of an earlier suite")  # fmt: skip
    s.add_argument("--allow-skipped", action="store_true",
                   help="a scenario that cannot run here does not fail the suite")  # fmt: skip
    _run_options(s, cycles=False)

    a = parser.parse_args(args)
    try:
        command: Callable[[argparse.Namespace], int] = {
            "soak": _soak, "scenarios": _scenarios, "report": _report, "compare": _compare,
            "suite": _suite,
        }[a.command]  # fmt: skip
        with _sigterm_interrupts():
            return command(a)
    except KeyboardInterrupt as exc:
        return _fail("terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted")
    except BrokenPipeError:  # `python -m harness ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return _fail("standard output was closed before everything was written")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the CLI is, so a scenario process it runs is ended first."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C (its default would end this process at once and leave
    the scenario process running); the previous handler afterwards. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_options(p: argparse.ArgumentParser, *, cycles: bool = True) -> None:
    if cycles:
        p.add_argument("--cycles", type=int, help="warm-up + measured cycles (default 2,000)")
        p.add_argument("--warmup", type=int, help="cycles before measuring (default 10%%)")
        p.add_argument(
            "--max-cycles",
            type=int,
            help="extend a run still settling up to N cycles (default 4 x cycles)",
        )
        p.add_argument(
            "--tracked-cycles",
            type=int,
            help="cycles under memray after the decision, for the leak sites",
        )
    p.add_argument("--no-memray", action="store_true", help="no tracked cycles, no leak sites")
    p.add_argument("--allow-undecided", action="store_true",
                   help="an undecided verdict (still settling) passes: exit 0, not 3")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _layer(a: argparse.Namespace) -> Settings:
    """The command line's settings layer (the highest)."""
    for flag in ("cycles", "max_cycles"):
        if getattr(a, flag, None) is not None and getattr(a, flag) < 1:
            raise _Usage(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("warmup", "tracked_cycles"):
        if getattr(a, flag, None) is not None and getattr(a, flag) < 0:
            raise _Usage(f"--{flag.replace('_', '-')} must be >= 0")
    if getattr(a, "timeout", None) is not None and a.timeout <= 0:
        raise _Usage("--timeout must be > 0")
    cycle_timeout = getattr(a, "cycle_timeout", None)
    if cycle_timeout is not None and not 0 < cycle_timeout < float("inf"):
        raise _Usage("--cycle-timeout must be a number of seconds > 0")
    return Settings.of(
        cycles=getattr(a, "cycles", None),
        warmup=getattr(a, "warmup", None),
        max_cycles=getattr(a, "max_cycles", None),
        tracked_cycles=getattr(a, "tracked_cycles", None),
        thresholds=_thresholds(getattr(a, "threshold", [])) or None,
        memray=False if a.no_memray else None,
        native_traces=getattr(a, "native_traces", None),
        timeout=getattr(a, "timeout", None),
        cycle_timeout=cycle_timeout,
        allow_undecided=a.allow_undecided or None,
    )


class _Usage(Exception):
    """Bad command line: exit 2 with this one line."""


def _soak(a: argparse.Namespace) -> int:
    from harness.child import run_in_subprocess
    from harness.expect import judge
    from harness.report import ProgressBar

    try:
        layer = _layer(a)
    except _Usage as exc:
        return _fail(str(exc))
    if a.baseline is not None and not Path(a.baseline).is_file():
        return _fail(f"--baseline {a.baseline}: no such verdict JSON")
    if ":" not in a.scenario:
        from harness.scenarios import builtin_scenarios

        names = builtin_scenarios()
        if a.scenario not in names:
            return _fail(
                f"unknown scenario {a.scenario!r}: use one of {', '.join(names)} or MODULE:FUNC"
            )
    bar = None if a.quiet else ProgressBar(a.scenario)
    try:
        result = run_in_subprocess(
            a.scenario, settings=layer, report_dir=a.report, on_progress=bar,
            baseline=None if a.baseline is None else str(Path(a.baseline).resolve()),
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if result.code == 2:
        hint = f" (full output: {result.log})" if result.log and result.kind != "usage" else ""
        return _fail(f"{a.scenario}: {result.reason}{hint}")
    assert result.verdict is not None
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(result.verdict.to_json(), encoding="utf-8")
    print(result.verdict.summary())
    # Bounded is expected here (a known leak still exits 1: "a leak was found").
    judgement = judge(result.verdict, False, allow_undecided=a.allow_undecided)
    return 0 if judgement.ok else result.code


def _scenarios(a: argparse.Namespace) -> int:
    from harness.scenarios import builtin_scenarios

    rows = []
    for sc in builtin_scenarios().values():
        expect = ("leaks: " if sc.expect_leak else "") + _expected(sc)
        missing = sc.missing()
        if missing:
            expect += f" (needs {', '.join(missing)})"
        rows.append((sc.name, str(sc.cycles), expect, sc.description))
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print(f"{'scenario':<{w0}}  {'cycles':>6}  {'expected':<{w2}}  description")
    for name, cycles, expect, desc in rows:
        print(f"{name:<{w0}}  {cycles:>6}  {expect:<{w2}}  {desc}")
    print("\nor MODULE:FUNC: a cycle(i), a Scenario, or a generator function yielding a Workload")
    return 0


def _expected(sc: Any) -> str:
    """What a scenario must come to: "bounded", its leaking channels, or "stalls"."""
    return "stalls" if sc.expect_stall else ", ".join(sorted(sc.expect_leak)) or "bounded"


def _report(a: argparse.Namespace) -> int:
    from harness.analysis import Verdict
    from harness.report import write_report

    src = Path(a.source)
    path = src / "verdict.json" if src.is_dir() else src
    if not path.exists():
        return _fail(f"no verdict JSON at {path}")
    try:
        verdict = Verdict.load(path)
    except (ValueError, OSError) as exc:
        return _fail(f"{path}: {exc}")
    out = Path(a.out) if a.out else path.parent
    if verdict.capture and not Path(verdict.capture).exists():
        verdict.capture = None
    page = write_report(verdict, out)
    print(verdict.summary())
    print(f"report: {page}")
    return 0


def _compare(a: argparse.Namespace) -> int:
    from harness.analysis import Verdict, format_quantity

    loaded = []
    for source in (a.old, a.new):
        path = _verdict_path(source)
        try:
            loaded.append(Verdict.load(path))
        except (ValueError, OSError) as exc:
            return _fail(f"{path}: {exc}")
    old, new = loaded
    new.compare_with(old, str(_verdict_path(a.old)))
    rows = [("channel", "old /cycle", "new /cycle", "change", "result")]
    for name, ch in new.channels.items():
        before = old.channels.get(name)
        if before is None:
            continue

        def slope(c: Any) -> str:
            return format_quantity(c.slope_per_cycle, c.unit, signed=True)

        change = format_quantity(ch.slope_per_cycle - before.slope_per_cycle, ch.unit, signed=True)
        result = "REGRESSION" if ch.regression else "LEAK" if ch.leaking else ch.kind
        rows.append((name, slope(before), slope(ch), change, result))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())
    regressions = [n for n, c in new.channels.items() if c.regression]
    print(
        f"\n{old.scenario} -> {new.scenario}: "
        + (f"REGRESSION in {', '.join(regressions)}" if regressions else "no regression")
    )
    return 1 if regressions else 0


def _verdict_path(source: str) -> Path:
    src = Path(source)
    return src / "verdict.json" if src.is_dir() else src


def _suite(a: argparse.Namespace) -> int:
    from harness.child import run_in_subprocess
    from harness.expect import STALLED, Judgement, judge, judge_stall, skipped
    from harness.report import ProgressBar
    from harness.scenarios import builtin_scenarios

    scenarios = builtin_scenarios()
    unknown = [n for n in a.only if n not in scenarios]
    if unknown:
        return _fail(f"unknown scenario(s) {', '.join(unknown)}; see `python -m harness scenarios`")
    try:
        layer = _layer(a)
    except _Usage as exc:
        return _fail(str(exc))
    chosen = [scenarios[n] for n in (a.only or scenarios)]
    root = Path(a.report)
    rows: list[tuple[str, str, str, Judgement, str]] = []
    started = time.monotonic()
    for sc in chosen:
        expected = _expected(sc)
        missing = sc.missing()
        if missing:
            rows.append((sc.name, expected, "-", skipped(
                f"needs {', '.join(missing)}", allowed=a.allow_skipped), ""))  # fmt: skip
            continue
        cycles = (sc.long_cycles or 5 * sc.cycles) if a.long else (sc.suite_cycles or sc.cycles)
        warmup = sc.settings.warmup
        if warmup is not None and a.long:
            warmup = max(warmup, cycles // 10)
        elif not a.long:
            warmup = sc.suite_warmup or (None if sc.suite_cycles is None else warmup)
        timeout = (sc.timeout or 600.0) * (8 if a.long else 1)
        baseline = Path(a.baseline).resolve() / sc.name / "verdict.json" if a.baseline else None
        bar = None if a.quiet else ProgressBar(sc.name)
        t0 = time.monotonic()
        try:
            result = run_in_subprocess(
                sc.name, settings=layer, cycles=cycles, warmup=warmup,
                report_dir=root / sc.name, timeout=timeout, on_progress=bar,
                baseline=str(baseline) if baseline is not None and baseline.exists() else None,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        took = f"{time.monotonic() - t0:.0f}s"
        v = result.verdict
        if result.code == 2 or v is None:
            error = result.kind or "crash"
            found = "stalled" if error == STALLED else "-"
            print(f"{sc.name}: {result.reason}\n", file=sys.stderr)
        else:
            error = ""
            found = ", ".join(v.leaking_channels) or v.status
            print(v.summary(sites=3) + "\n", file=sys.stderr)
        if sc.expect_stall:
            judgement = judge_stall(
                None if error else v, error, result.reason, bug=sc.bug, stacks=result.stacks
            )
        elif v is None or error:
            judgement = Judgement(False, f"ERROR: {result.reason}", result.reason)
        else:
            judgement = judge(v, bug=sc.bug, allow_undecided=a.allow_undecided)
        rows.append((sc.name, expected, found, judgement, took))
    return _suite_table(rows, root, time.monotonic() - started)


def _suite_table(rows: list[tuple[str, str, str, Any, str]], root: Path, seconds: float) -> int:
    head = ("scenario", "expected", "found")
    widths = [max(len(r[i]) for r in [*rows, (*head, None, "")]) for i in range(3)]
    print(f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:<{widths[2]}}  result")
    for name, expected, found, j, took in rows:
        print(
            f"{name:<{widths[0]}}  {expected:<{widths[1]}}  {found:<{widths[2]}}  "
            f"{j.status} {took}".rstrip()
        )
    print(f"\n{len(rows)} scenarios in {seconds:.0f}s; reports: {root.resolve()}/<scenario>/")
    summary = {n: {"expected": e, "found": f, "result": j.status, "ok": j.ok}
               for n, e, f, j, _ in rows}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "suite.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    failed = sum(1 for r in rows if not r[3].ok)
    if failed:
        print(f"{failed} scenario(s) not as expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
