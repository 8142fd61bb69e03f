"""The pytest plugin, through pytester: fixture, marker, options and ini settings."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    result = run(tests_dir)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*expected a leak in listeners, not found*"])


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
    result = run(tests_dir)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*UNDECIDED: still settling after 600 cycles; run longer*"])
