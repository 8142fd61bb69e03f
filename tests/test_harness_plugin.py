"""The pytest plugin, through pytester: fixture, marker, options and ini settings; what it
reports (status, report section, end-of-session summary, JUnit XML properties, report files)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import Verdict

pytest_plugins = ["pytester"]

LEAKY = """
import math
kept = []

def settling():
    cache = {}
    def cycle(i):
        cache.setdefault(int(600 * (1 - math.exp(-i / 200))), "value " + "x" * 50)
    return cycle

def leaky(i):
    kept.append(object())

def big(i):
    kept.append(bytes(10240))

def clean(i):
    x = [i] * 10
"""


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function", *args
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _imported_once() -> None:
    """pytester runs in process and forgets modules the inner run imported; numpy's C
    extensions cannot be imported twice, so import what a soak needs out here first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import memray  # noqa: F401
    import scipy.stats  # noqa: F401


@pytest.fixture
def tests_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(cycles=LEAKY)
    pytester.syspathinsert()
    return pytester


def test_a_leak_fails_the_test_with_the_summary(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        from cycles import leaky, clean

        def test_leaky(soak):
            soak(leaky, cycles=400)

        def test_clean(soak):
            verdict = soak(clean, cycles=400)
            assert verdict.bounded
        """
    )
    result = run(tests_dir)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_leaky*", "*LEAK in py_blocks after 400 cycles*"])
    result.stdout.fnmatch_lines(["*cycles.py:11 in leaky*"])
    assert "Traceback" not in result.stdout.str()


def test_expect_leak_returns_the_verdict_and_fails_when_nothing_leaks(
    tests_dir: pytest.Pytester,
) -> None:
    tests_dir.makepyfile(
        test_user="""
        from cycles import leaky, clean

        def test_expected(soak):
            verdict = soak(leaky, cycles=300, expect_leak="py_blocks")
            assert verdict.channels["py_blocks"].leaking

        def test_any(soak):
            assert not soak(leaky, cycles=300, expect_leak=True).bounded

        def test_missing(soak):
            soak(clean, cycles=300, expect_leak=["listeners"])
        """
    )
    result = run(tests_dir, "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*expected a leak in listeners, not found*"])
    result.stdout.fnmatch_lines(["*::test_missing SOAK MISSED LEAK*"])


def test_the_marker_sets_defaults_and_the_call_wins(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        import pytest
        from cycles import leaky, clean

        @pytest.mark.soak(cycles=250, warmup=50, thresholds={"py_blocks": 5.0})
        def test_marked(soak):
            v = soak(leaky)
            assert (v.cycles, v.warmup) == (250, 50)
            assert v.bounded and v.channels["py_blocks"].threshold == 5.0

        @pytest.mark.soak(cycles=250)
        def test_call_wins(soak):
            assert soak(clean, cycles=120, memray=False).cycles == 120
        """
    )
    run(tests_dir).assert_outcomes(passed=2)


def test_soak_cycles_option_overrides_and_ini_sets_the_default(
    tests_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests_dir.makeini("[pytest]\nsoak_cycles = 150\n")
    tests_dir.makepyfile(
        test_user="""
        import os
        from cycles import clean

        def test_default(soak):
            v = soak(clean, memray=False)
            assert v.cycles == int(os.environ.get("EXPECT", "150"))

        def test_explicit(soak):
            v = soak(clean, cycles=300, memray=False)
            assert v.cycles == int(os.environ.get("EXPECT", "300"))
        """
    )
    run(tests_dir).assert_outcomes(passed=2)
    monkeypatch.setenv("EXPECT", "222")
    run(tests_dir, "--soak-cycles", "222").assert_outcomes(passed=2)


def test_soak_report_writes_one_directory_per_test(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        from cycles import clean

        def test_one(soak):
            soak(clean, cycles=200)
            soak(clean, cycles=200)
        """
    )
    run(tests_dir, "--soak-report", "reports").assert_outcomes(passed=1)
    dirs = sorted(p.name for p in Path(tests_dir.path, "reports").iterdir())
    assert dirs == ["test_user.py_test_one", "test_user.py_test_one-2"]
    assert (Path(tests_dir.path, "reports", dirs[0], "report.html")).exists()


def test_async_tests_use_run_async(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        import asyncio
        import pytest

        @pytest.mark.asyncio
        async def test_tasks(soak):
            async def cycle(i):
                asyncio.get_running_loop().create_task(asyncio.sleep(3600))

            v = await soak.run_async(cycle, cycles=200, expect_leak="tasks")
            assert v.channels["tasks"].slope_per_cycle == 1.0
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
        """
    )
    run(tests_dir).assert_outcomes(passed=1)


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.soak(cycles=None*"])


def test_an_undecided_verdict_fails_unless_the_test_allows_it(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        import pytest
        from cycles import settling

        def test_settling(soak):
            soak(settling(), cycles=600, max_cycles=600, memray=False)

        @pytest.mark.soak(allow_undecided=True)
        def test_allowed(soak):
            v = soak(settling(), cycles=600, max_cycles=600, memray=False)
            assert v.status == "undecided" and v.exit_code == 3
        """
    )
    result = run(tests_dir, "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*UNDECIDED: still settling after 600 cycles; run longer*"])
    result.stdout.fnmatch_lines(["*::test_settling SOAK UNDECIDED*"])


# -- what the plugin reports --------------------------------------------------------------------

TWO_TESTS = """
from cycles import big, clean

def test_big(soak):
    soak(big, cycles=80)

def test_clean(soak):
    soak(clean, cycles=80)
    soak(clean, cycles=60, memray=False)
"""
"""A test whose soak leaks 10 KiB a cycle, and one with two clean soaks."""


def test_a_failed_soak_has_its_status_and_a_section_with_the_verdict(
    tests_dir: pytest.Pytester,
) -> None:
    tests_dir.makepyfile(test_user=TWO_TESTS)
    result = run(tests_dir)
    result.assert_outcomes(passed=1, failed=1)  # still a failure for pytest and for CI
    result.stdout.fnmatch_lines(["test_user.py S. *"])
    result.stdout.fnmatch_lines(
        [
            "*_ test_big _*",
            "big: LEAK in heap*after 80 cycles*",
            "*- soak verdict -*",
            "big: LEAK in heap*after 80 cycles*",
            "  heap *+10 KiB/cycle*LEAK",
            "*still live after the measured cycles (memray):",
            "*cycles.py:14 in big",
        ]
    )
    assert "PASSES" not in result.stdout.str()
    verbose = run(tests_dir, "-v", "-rf")
    verbose.stdout.fnmatch_lines(["*::test_big SOAK LEAK *", "*::test_clean PASSED *"])
    verbose.stdout.fnmatch_lines(["SOAK LEAK test_user.py::test_big - *big: LEAK in heap*"])


def test_a_passed_soaks_section_shows_with_rA_and_not_without(
    tests_dir: pytest.Pytester,
) -> None:
    tests_dir.makepyfile(
        test_user="""
        from cycles import clean

        def test_clean(soak):
            soak(clean, cycles=80, memray=False)
        """
    )
    quiet = run(tests_dir)
    quiet.assert_outcomes(passed=1)
    assert "soak verdict" not in quiet.stdout.str()
    shown = run(tests_dir, "-rA")
    shown.assert_outcomes(passed=1)
    shown.stdout.fnmatch_lines(
        [
            "*= PASSES =*",
            "*_ test_clean _*",
            "*- soak verdict -*",
            "clean: BOUNDED after 80 cycles*",
            "  py_blocks *",
        ]
    )


def test_the_summary_lists_every_soak_and_the_flag_hides_it(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(test_user=TWO_TESTS)
    result = run(tests_dir)
    result.stdout.fnmatch_lines(
        [
            "*= soak summary =*",
            "test * verdict * result * cycles * cycles/s",
            "test_user.py::test_big * leak * UNEXPECTED LEAK * 80 * [0-9]*",
            "    rss * heap +10 KiB/cycle LEAK, py_blocks +1 blocks/cycle LEAK, *",
            "test_user.py::test_clean * bounded * ok * 80 * [0-9]*",
            "    rss *, heap *, py_blocks *, gc_objects *, listeners *, fds *, threads *, tasks *",
            "test_user.py::test_clean (soak 2) * bounded * ok * 60 * [0-9]*",
        ]
    )
    assert "LEAK" not in result.stdout.str().split("(soak 2)")[1].split("short test summary")[0]
    hidden = run(tests_dir, "--hide-soak-summary")
    hidden.assert_outcomes(passed=1, failed=1)
    assert "soak summary" not in hidden.stdout.str()
    tests_dir.makeini("[pytest]\nhide_soak_summary = true\n")
    assert "soak summary" not in run(tests_dir).stdout.str()


def test_no_summary_when_no_test_soaked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "soak summary" not in result.stdout.str()


def test_junit_xml_carries_each_soaks_properties(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(test_user=TWO_TESTS)
    run(tests_dir, "--junitxml", "junit.xml").assert_outcomes(passed=1, failed=1)
    cases = {
        case.get("name"): {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        for case in ET.parse(tests_dir.path / "junit.xml").iter("testcase")
    }
    big, clean = cases["test_big"], cases["test_clean"]
    assert big["soak_status"] == "leak" and big["soak_result"] == "UNEXPECTED LEAK"
    assert big["soak_failure"] == "UNEXPECTED LEAK"
    assert big["soak_cycles"] == "80"
    assert "heap" in big["soak_leak_channels"].split(",")
    assert float(big["soak_slope_heap"]) >= 10240
    assert float(big["soak_cycles_per_second"]) > 0
    assert {f"soak_slope_{c}" for c in ("rss", "py_blocks", "gc_objects", "tasks")} <= set(big)
    assert clean["soak_status"] == clean["soak2_status"] == "bounded"
    assert clean["soak_result"] == clean["soak2_result"] == "ok"
    assert (clean["soak_cycles"], clean["soak2_cycles"]) == ("80", "60")
    assert clean["soak_leak_channels"] == "" and "soak_failure" not in clean


def test_soak_report_writes_each_tests_verdict_as_json(tests_dir: pytest.Pytester) -> None:
    tests_dir.makepyfile(
        test_user="""
        from cycles import big, clean

        def test_big(soak):
            soak(big, cycles=80, memray=False)

        def test_clean(soak):
            soak(clean, cycles=80, memray=False)
        """
    )
    result = run(tests_dir, "--soak-report", "reports", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    reports = tests_dir.path / "reports"
    big = Verdict.load(reports / "test_user.py_test_big" / "verdict.json")
    clean = Verdict.load(reports / "test_user.py_test_clean" / "verdict.json")
    assert (big.status, big.cycles, clean.status, clean.cycles) == ("leak", 80, "bounded", 80)
    assert "heap" in big.leaking_channels
    for case in ET.parse(tests_dir.path / "junit.xml").iter("testcase"):
        properties = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        where = tests_dir.path / str(properties["soak_report"])
        assert where == reports / f"test_user.py_{case.get('name')}"
