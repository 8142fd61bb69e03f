"""``python -m harness``: exit codes, one-line reasons, no tracebacks, JSON, report re-render."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness as harness_package

USER_MODULE = """
import asyncio, ctypes, math, time
kept = []
cache = {}

def settling(i):
    key = int(600 * (1 - math.exp(-i / 200)))
    cache.setdefault(key, "value " + "x" * 50)

def leaky(i):
    kept.append(object())

def clean(i):
    x = [i] * 10

def boom(i):
    if i == 17:
        raise ValueError("boom")

def hang(i):
    if i == 300:
        time.sleep(3600)

async def ahang(i):
    if i == 300:
        await asyncio.Event().wait()

def crash(i):
    if i == 5:
        ctypes.string_at(0)

def two(a, b):
    pass
"""


PROGRESS = re.compile(r"^\S+: (warm-up \(untracked\)|measured|analysing|writing the report)")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "usercycles.py").write_text(USER_MODULE)
    return tmp_path


def harness_env() -> dict[str, str]:
    # The user's module must be found through the current directory; PYTHONPATH holds only
    # the harness under test (this checkout's, not whichever one is installed).
    checkout = str(Path(harness_package.__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=checkout)


def harness(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    """The reason: exit 2, no traceback, and one line on stderr after any progress lines."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = [ln for ln in p.stderr.strip().splitlines() if not PROGRESS.match(ln)]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_a_leak_exits_1_with_a_summary_json_and_report(workdir: Path) -> None:
    p = harness(
        workdir, "soak", "--scenario", "usercycles:leaky", "--cycles", "400",
        "--json", "out/v.json", "--report", "rep",
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert "LEAK in py_blocks" in p.stdout and "usercycles.py:11" in p.stdout
    d = json.loads((workdir / "out/v.json").read_text())
    assert d["bounded"] is False and d["cycles"] == 400 and d["warmup"] == 40
    assert d["channels"]["py_blocks"]["leaking"] is True
    assert {"slope_per_cycle", "growth", "unit", "leaking"} <= set(d["channels"]["rss"])
    assert d["leak_sites"][0]["location"].endswith("usercycles.py:11")
    for site in d["leak_sites"]:  # never the harness's own frames (its progress JSON...)
        for frame in [site["location"], *site["stack"]]:
            assert "harness/" not in frame and "json/" not in frame, site
    rep = workdir / "rep"
    for name in ("verdict.json", "timeline.png", "report.html", "flamegraph-leaks.html"):
        assert (rep / name).exists(), name


def test_a_clean_cycle_exits_0(workdir: Path) -> None:
    p = harness(workdir, "soak", "--scenario", "usercycles:clean", "--cycles", "300")
    assert p.returncode == 0, p.stderr
    assert "BOUNDED" in p.stdout


def test_an_unknown_scenario_is_exit_2_in_one_line(workdir: Path) -> None:
    line = one_line_error(harness(workdir, "soak", "--scenario", "no-such-thing"))
    assert "unknown scenario 'no-such-thing'" in line and "reconnect" in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nomodule:f", "cannot import 'nomodule'"),
        ("usercycles:missing", "has no attribute 'missing'"),
        ("usercycles:two", "cannot be a cycle"),
    ],
)
def test_a_bad_module_func_is_exit_2_in_one_line(workdir: Path, spec: str, expected: str) -> None:
    line = one_line_error(
        harness(workdir, "soak", "--scenario", spec, "--cycles", "100", "--quiet")
    )
    assert expected in line


def test_a_cycle_that_raises_is_exit_2_with_where_and_a_log(workdir: Path) -> None:
    line = one_line_error(
        harness(workdir, "soak", "--scenario", "usercycles:boom", "--cycles", "100", "--quiet")
    )
    assert re.search(r"cycle 17 \(measured\) raised ValueError: boom at usercycles.py:\d+ ", line)
    log = line.rsplit("full output: ", 1)[1].rstrip(")")
    assert "Traceback" in Path(log).read_text()


@pytest.mark.parametrize("spec", ["usercycles:hang", "usercycles:ahang"])
def test_a_cycle_that_hangs_times_out_with_exit_2(workdir: Path, spec: str) -> None:
    line = one_line_error(
        harness(workdir, "soak", "--scenario", spec, "--cycles", "400", "--timeout", "6")
    )
    assert "timed out after 6 s during cycle 300 of 400" in line


def test_a_scenario_process_that_crashes_is_exit_2(workdir: Path) -> None:
    line = one_line_error(
        harness(workdir, "soak", "--scenario", "usercycles:crash", "--cycles", "100", "--quiet")
    )
    assert "died of signal SIGSEGV" in line


@pytest.mark.parametrize(
    "args",
    [
        ["soak"],
        ["soak", "--scenario", "reconnect", "--cycles", "0"],
        ["soak", "--scenario", "reconnect", "--threshold", "rss"],
        ["soak", "--scenario", "reconnect", "--cycles", "many"],
        ["frobnicate"],
    ],
)
def test_bad_usage_is_exit_2_in_one_line(workdir: Path, args: list[str]) -> None:
    one_line_error(harness(workdir, *args))


def test_scenarios_lists_every_built_in(workdir: Path) -> None:
    p = harness(workdir, "scenarios")
    assert p.returncode == 0
    for name in ("reconnect", "neonize-storm-raw", "mutant-listeners", "redis-outage"):
        assert name in p.stdout


def test_a_reader_that_went_away_is_exit_2_in_one_line(workdir: Path) -> None:
    # `python -m harness scenarios | head -1`: stdout is a pipe whose reader has gone.
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as stdout:
        p = subprocess.run(
            [sys.executable, "-m", "harness", "scenarios"], cwd=workdir, env=harness_env(),
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "harness: standard output was closed before everything was written"


def test_report_rerenders_from_the_json(workdir: Path) -> None:
    assert harness(workdir, "soak", "--scenario", "usercycles:leaky", "--cycles", "300",
                   "--report", "rep").returncode == 1  # fmt: skip
    for name in ("timeline.png", "report.html"):
        (workdir / "rep" / name).unlink()
    p = harness(workdir, "report", "rep", "--out", "again")
    assert p.returncode == 0, p.stderr
    assert (workdir / "again" / "report.html").exists()
    assert (workdir / "again" / "timeline.png").exists()
    assert "LEAK in py_blocks" in p.stdout
    one_line_error(harness(workdir, "report", "nowhere"))


def test_still_settling_at_max_cycles_exits_3_with_the_evidence(workdir: Path) -> None:
    p = harness(
        workdir, "soak", "--scenario", "usercycles:settling", "--cycles", "600",
        "--max-cycles", "600", "--no-memray", "--json", "v.json",
    )  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    assert "UNDECIDED: still settling after 600 cycles; run longer" in p.stdout
    assert "py_blocks: still settling" in p.stdout
    assert json.loads((workdir / "v.json").read_text())["status"] == "undecided"
    allowed = harness(
        workdir, "soak", "--scenario", "usercycles:settling", "--cycles", "600",
        "--max-cycles", "600", "--no-memray", "--allow-undecided",
    )  # fmt: skip
    assert allowed.returncode == 0 and "UNDECIDED" in allowed.stdout


def test_a_slope_that_rose_against_the_baseline_is_a_regression(workdir: Path) -> None:
    base = harness(workdir, "soak", "--scenario", "usercycles:clean", "--cycles", "600",
                   "--no-memray", "--json", "base.json")  # fmt: skip
    assert base.returncode == 0, base.stderr
    # Under its (raised) absolute threshold, the leak is a regression against the baseline.
    p = harness(
        workdir, "soak", "--scenario", "usercycles:leaky", "--cycles", "600", "--no-memray",
        "--threshold", "py_blocks=5", "--threshold", "gc_objects=5", "--baseline", "base.json",
        "--json", "new.json",
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    # py_blocks among the regressions (rss may rise with the kept objects' pages too)
    assert re.search(r"regression against the baseline: [a-z_, ]*py_blocks", p.stdout)
    d = json.loads((workdir / "new.json").read_text())
    assert d["channels"]["py_blocks"]["kind"] == "regression"
    assert d["baseline"].endswith("base.json")

    table = harness(workdir, "compare", "base.json", "new.json")
    assert table.returncode == 1, table.stderr
    assert re.search(r"^py_blocks\s+.*REGRESSION", table.stdout, re.M)
    assert re.search(r"REGRESSION in [a-z_, ]*py_blocks", table.stdout)
    same = harness(workdir, "compare", "base.json", "base.json")
    assert same.returncode == 0 and "no regression" in same.stdout
    one_line_error(harness(workdir, "compare", "base.json", "missing.json"))
    one_line_error(harness(workdir, "soak", "--scenario", "usercycles:clean",
                           "--baseline", "missing.json"))  # fmt: skip
