"""``python -m harness``: soak, scenarios, report, suite.

    python -m harness soak --scenario NAME|MODULE:FUNC [--cycles N] [--warmup N]
                           [--json PATH] [--report DIR] [--timeout S] [--threshold CH=V]...
    python -m harness scenarios
    python -m harness report DIR|verdict.json [--out DIR]
    python -m harness suite [--long] [--report DIR] [--only NAME]...

``soak`` runs the scenario in a fresh subprocess (``MODULE`` is imported there with this
environment, PYTHONPATH and current directory), shows a progress bar, prints a short summary,
and exits 0 when memory stays bounded, 1 when a channel leaks, 2 when it could not decide (bad
usage, a cycle raised, timed out); then the reason is one line on stderr, and the child's full
output (traceback included) is in ``scenario.log``.

``suite`` runs every built-in scenario that way (what ``nox -s soak`` does): each report goes
to ``DIR/<scenario>/``. Clean scenarios must be bounded; known leaks (the raw neonize storm,
an upstream leak; the mutants) must be detected on their channels. Exit 0 when every
scenario is as expected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
        from harness.runner import child_main

        return child_main(args[1:])
    parser = _Parser(prog="python -m harness", description="waclient's soak harness")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("soak", help="soak one scenario in a fresh subprocess")
    p.add_argument("--scenario", required=True, help="a built-in name or MODULE:FUNC")
    p.add_argument("--cycles", type=int, help="all cycles, warm-up included")
    p.add_argument("--warmup", type=int, help="cycles before measuring (default 10%%)")
    p.add_argument("--json", help="write the verdict JSON here")
    p.add_argument("--report", help="write the report (HTML, PNG, flame graph) here")
    p.add_argument("--timeout", type=float, help="stop the run after this many seconds")
    p.add_argument(
        "--threshold", action="append", default=[], metavar="CHANNEL=V",
        help="a channel's leak threshold in units per cycle (repeatable)",
    )  # fmt: skip
    p.add_argument("--no-memray", action="store_true", help="measure without memray")
    p.add_argument("--native-traces", action="store_true", default=None,
                   help="memray: native stacks too (slower; for C/Go leaks)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("scenarios", help="list the built-in scenarios")

    r = sub.add_parser("report", help="re-render a report from its verdict JSON")
    r.add_argument("source", help="a report directory or a verdict JSON file")
    r.add_argument("--out", help="write the report here (default: next to the JSON)")

    s = sub.add_parser("suite", help="every built-in scenario, with expectations")
    s.add_argument("--long", action="store_true", help="thousands of cycles (soak-long)")
    s.add_argument("--report", default="soak-report", help="reports go to DIR/<scenario>/")
    s.add_argument("--only", action="append", default=[], metavar="NAME")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    a = parser.parse_args(args)
    try:
        if a.command == "soak":
            return _soak(a)
        if a.command == "scenarios":
            return _scenarios()
        if a.command == "report":
            return _report(a)
        return _suite(a)
    except KeyboardInterrupt:
        return _fail("interrupted")


def _soak(a: argparse.Namespace) -> int:
    from harness.report import ProgressBar
    from harness.runner import run_in_subprocess

    if a.cycles is not None and a.cycles < 1:
        return _fail("--cycles must be >= 1")
    if a.warmup is not None and a.warmup < 0:
        return _fail("--warmup must be >= 0")
    if a.timeout is not None and a.timeout <= 0:
        return _fail("--timeout must be > 0")
    thresholds = _thresholds(a.threshold)
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
            a.scenario,
            cycles=a.cycles,
            warmup=a.warmup,
            report_dir=a.report,
            timeout=a.timeout,
            thresholds=thresholds or None,
            memray=not a.no_memray,
            native_traces=a.native_traces,
            on_progress=bar,
        )
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
    return result.code


def _scenarios() -> int:
    from harness.scenarios import builtin_scenarios

    rows = []
    for sc in builtin_scenarios().values():
        expect = ("leaks: " + ", ".join(sorted(sc.expect_leak))) if sc.expect_leak else "bounded"
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


def _suite(a: argparse.Namespace) -> int:
    from harness.report import ProgressBar
    from harness.runner import run_in_subprocess
    from harness.scenarios import builtin_scenarios

    scenarios = builtin_scenarios()
    unknown = [n for n in a.only if n not in scenarios]
    if unknown:
        return _fail(f"unknown scenario(s) {', '.join(unknown)}; see `python -m harness scenarios`")
    chosen = [scenarios[n] for n in (a.only or scenarios)]
    root = Path(a.report)
    rows: list[tuple[str, str, str, str, str]] = []
    failed = 0
    started = time.monotonic()
    for sc in chosen:
        missing = sc.missing()
        if missing:
            rows.append((sc.name, "-", "-", f"SKIPPED (needs {', '.join(missing)})", ""))
            continue
        cycles = (sc.long_cycles or 5 * sc.cycles) if a.long else (sc.suite_cycles or sc.cycles)
        warmup = None if sc.warmup is None else max(sc.warmup, cycles // 10) if a.long else None
        timeout = (sc.timeout or 600.0) * (8 if a.long else 1)
        bar = None if a.quiet else ProgressBar(sc.name)
        t0 = time.monotonic()
        try:
            result = run_in_subprocess(
                sc.name,
                cycles=cycles,
                warmup=warmup,
                report_dir=root / sc.name,
                timeout=timeout,
                on_progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        took = f"{time.monotonic() - t0:.0f}s"
        expected = ", ".join(sorted(sc.expect_leak)) or "bounded"
        v = result.verdict
        if result.code == 2 or v is None:
            failed += 1
            rows.append((sc.name, expected, "-", f"ERROR: {result.reason}", took))
            continue
        found = ", ".join(v.leaking_channels) or "bounded"
        if not sc.expect_leak:
            status = "ok" if v.bounded else "UNEXPECTED LEAK"
        elif not v.as_expected:
            status = "MISSED LEAK"
        else:
            status = "known upstream leak, detected" if not sc.bug else "mutant caught"
            if sc.bug and not any(site.mentions(*sc.bug) for site in v.leak_sites):
                status = "mutant caught, but its line is not among the leak sites"
        if status not in ("ok", "known upstream leak, detected", "mutant caught"):
            failed += 1
        rows.append((sc.name, expected, found, status, took))
        print(v.summary(sites=3), file=sys.stderr)
        print(file=sys.stderr)
    widths = [
        max(len(r[i]) for r in [*rows, ("scenario", "expected", "found", "", "")]) for i in range(3)
    ]
    print(f"{'scenario':<{widths[0]}}  {'expected':<{widths[1]}}  {'found':<{widths[2]}}  result")
    for name, expected, found, status, took in rows:
        print(
            f"{name:<{widths[0]}}  {expected:<{widths[1]}}  {found:<{widths[2]}}  {status} {took}"
        )
    total = time.monotonic() - started
    print(
        f"\n{len(rows)} scenarios in {total:.0f}s; reports: {root.resolve()}/<scenario>/report.html"
    )
    summary = {n: {"expected": e, "found": f, "result": s} for n, e, f, s, _ in rows}
    root.mkdir(parents=True, exist_ok=True)
    (root / "suite.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if failed:
        print(f"{failed} scenario(s) not as expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
