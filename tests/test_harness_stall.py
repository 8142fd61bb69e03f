"""A cycle's deadline (``cycle_timeout``): a stall ends the soak as "could not run" (exit 2, the
reason in one line), never as bounded or leaking; a scenario can be expected to stall."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_harness_cli import harness, one_line_error

from harness import CycleError, Settings, SoakTimeout, UsageError, Workload, scenario, soak
from harness.errors import CycleTimeout
from harness.expect import STALLED, judge_stall

STALLING = """
import asyncio, time

def blocks(i):
    if i == 5:
        time.sleep(3600)  # the sync stall

async def waits(i):
    if i == 5:
        await asyncio.Event().wait()  # the async stall

def quick(i):
    pass
"""


def line_of(text: str, marker: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


# -- soak(): the deadline --------------------------------------------------------------------------


def test_an_async_cycle_past_its_deadline_is_a_stall_at_its_index_and_line() -> None:
    torn_down = []

    @scenario("waits", cycles=100, cycle_timeout=1.0, memray=False)
    async def waits() -> AsyncIterator[Workload]:
        async def cycle(i: int) -> None:
            if i == 5:
                await asyncio.Event().wait()  # the stall

        try:
            yield Workload(cycle)
        finally:
            torn_down.append(True)

    with pytest.raises(CycleTimeout) as info:
        soak(waits)
    stall = info.value
    assert (stall.cycle, stall.phase, stall.timeout, stall.scenario) == (5, "warm-up", 1.0, "waits")
    assert str(stall) == (
        f"cycle 5 (warm-up) of waits did not finish within its 1 s deadline: stalled at "
        f"{stall.where}"
    )
    assert stall.where.endswith(f"test_harness_stall.py:{_line(waits, '# the stall')}")
    assert isinstance(stall, SoakTimeout) and torn_down == [True]
    assert any(f.endswith(" in cycle") for f in stall.stacks["cycle"])


def _line(sc: object, marker: str) -> int:
    import inspect

    setup = sc.setup  # type: ignore[attr-defined]
    lines, start = inspect.getsourcelines(setup)
    return start + next(n for n, text in enumerate(lines) if marker in text)


def test_a_sync_cycle_that_blocks_past_its_deadline_is_interrupted_and_reported() -> None:
    def cycle(i: int) -> None:
        if i == 40:
            time.sleep(3600)  # blocks

    with pytest.raises(CycleTimeout) as info:
        soak(cycle, cycles=100, memray=False, cycle_timeout=1.0)
    assert (info.value.cycle, info.value.phase) == (40, "measured")
    assert "within its 1 s deadline: stalled at " in str(info.value)
    assert info.value.where.endswith(f":{cycle.__code__.co_firstlineno + 2}")
    # the interrupted main thread's stack is among where everything waited
    assert any(f.endswith("in cycle") for f in info.value.stacks["cycle"])


def test_cycles_within_their_deadline_are_soaked_as_usual() -> None:
    async def acycle(i: int) -> None:
        await asyncio.sleep(0)

    assert soak(lambda i: None, cycles=300, memray=False, cycle_timeout=30.0).bounded
    assert soak(acycle, cycles=300, memray=False, cycle_timeout=30.0).bounded


def test_a_cycle_that_raises_its_own_timeout_error_raised_it_did_not_stall() -> None:
    async def cycle(i: int) -> None:
        if i == 7:
            await asyncio.wait_for(asyncio.Event().wait(), 0.01)

    with pytest.raises(CycleError) as info:
        soak(cycle, cycles=100, memray=False, cycle_timeout=30.0)
    assert info.value.cycle == 7 and "raised TimeoutError" in str(info.value)


def test_the_run_timeout_still_ends_a_run_whose_cycles_have_a_longer_deadline() -> None:
    def cycle(i: int) -> None:
        if i == 5:
            time.sleep(3600)

    with pytest.raises(SoakTimeout) as info:
        soak(cycle, cycles=100, memray=False, timeout=3.0, cycle_timeout=600.0)
    assert type(info.value) is SoakTimeout and info.value.cycle == 5


def test_a_teardown_held_by_the_stall_is_given_the_deadline_too() -> None:
    @scenario("held", cycles=100, cycle_timeout=1.0, memray=False)
    async def held() -> AsyncIterator[Workload]:
        stuck = asyncio.Event()

        async def cycle(i: int) -> None:
            if i == 3:
                await stuck.wait()

        yield Workload(cycle)
        await stuck.wait()  # never reached: the teardown after a failure is the finally

    @scenario("held-teardown", cycles=100, cycle_timeout=1.0, memray=False)
    async def held_teardown() -> AsyncIterator[Workload]:
        stuck = asyncio.Event()

        async def cycle(i: int) -> None:
            if i == 3:
                await stuck.wait()

        try:
            yield Workload(cycle)
        finally:
            await stuck.wait()  # what holds the cycle holds the teardown

    with pytest.raises(CycleTimeout) as info:
        soak(held_teardown)
    assert str(info.value).endswith("; its teardown did not finish within 1 s either")
    with pytest.raises(CycleTimeout) as plain:
        soak(held)
    assert "teardown" not in str(plain.value)


def test_the_deadline_is_a_setting_of_every_layer_and_must_be_positive() -> None:
    @scenario("layered", cycles=100, cycle_timeout=30.0)
    def layered() -> Iterator[Workload]:
        yield Workload(lambda i: None)

    assert layered.settings.cycle_timeout == 30.0
    assert Settings.from_json(Settings.of(cycle_timeout=2.5).to_json()).cycle_timeout == 2.5
    for bad in (0, -1, float("inf")):
        with pytest.raises(UsageError, match="cycle_timeout"):
            soak(lambda i: None, cycles=100, cycle_timeout=bad)


def test_expect_stall_needs_a_deadline_and_no_expected_leak() -> None:
    def setup() -> Iterator[Workload]:
        yield Workload(lambda i: None)

    with pytest.raises(UsageError, match="cycle_timeout"):
        scenario("no-deadline", expect_stall=True)(setup)
    with pytest.raises(UsageError, match="expect_leak"):
        scenario("both", expect_stall=True, cycle_timeout=5, expect_leak="rss")(setup)
    assert scenario("ok", expect_stall=True, cycle_timeout=5)(setup).expect_stall


# -- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("func", "marker"), [("blocks", "# the sync"), ("waits", "# the async")])
def test_a_stall_is_exit_2_with_the_cycle_the_deadline_and_the_scenario_in_one_line(
    tmp_path: Path, func: str, marker: str
) -> None:
    (tmp_path / "stalling.py").write_text(STALLING)
    args = ["--cycles", "100", "--cycle-timeout", "2", "--quiet", "--report", "rep"]
    line = one_line_error(harness(tmp_path, "soak", "--scenario", f"stalling:{func}", *args))
    at = line_of(STALLING, marker)
    assert line.startswith(
        f"harness: stalling:{func}: cycle 5 (warm-up) of stalling:{func} did not finish within "
        f"its 2 s deadline: stalled at stalling.py:{at} (full output: rep/scenario.log)"
    ), line
    log = (tmp_path / "rep" / "scenario.log").read_text()
    assert "At the deadline of cycle 5 (2 s):" in log and f"stalling.py:{at} in {func}" in log
    assert not (tmp_path / "rep" / "verdict.json").exists()


def test_a_quick_cycle_under_a_deadline_exits_0_and_a_bad_deadline_is_usage(
    tmp_path: Path,
) -> None:
    (tmp_path / "stalling.py").write_text(STALLING)
    p = harness(tmp_path, "soak", "--scenario", "stalling:quick", "--cycles", "200",
                "--cycle-timeout", "30", "--no-memray", "--quiet")  # fmt: skip
    assert p.returncode == 0 and "BOUNDED" in p.stdout, p.stdout + p.stderr
    line = one_line_error(
        harness(tmp_path, "soak", "--scenario", "stalling:quick", "--cycle-timeout", "0")
    )
    assert "--cycle-timeout must be a number of seconds > 0" in line


# -- the suite's judge -----------------------------------------------------------------------------


def test_the_judge_of_a_stall_wants_the_cycle_deadline_and_nothing_else() -> None:
    reason = "cycle 0 (warm-up) of x did not finish within its 20 s deadline: stalled"
    assert judge_stall(None, STALLED, reason).ok
    assert not judge_stall(None, "CycleError", "cycle 3 (warm-up) raised KeyError").ok
    assert not judge_stall(None, "SoakTimeout", "timed out after 9 s during cycle 3").ok
    assert not judge_stall(None, "crash", "the scenario process died of signal SIGSEGV").ok
    bounded = soak(lambda i: None, cycles=100, memray=False)
    assert bounded.bounded
    j = judge_stall(bounded, "", "")
    assert not j.ok and j.status == "MISSED STALL (bounded)"
    kept: list[object] = []
    leak = soak(lambda i: kept.append(object()), cycles=300, memray=False)
    j = judge_stall(leak, "", "")
    assert not j.ok and j.status.startswith("MISSED STALL (") and "py_blocks" in j.status


def test_a_mutant_that_stalls_must_wait_at_its_bug_line() -> None:
    path, line = "/src/harness/mutants.py", 250
    at_bug = {"task pump": ["/x/client.py:9 in call", f"{path}:{line} in call"]}
    elsewhere = {"task pump": ["/x/client.py:9 in call", f"{path}:{line + 1} in call"]}
    reason = "cycle 0 (warm-up) of mutant-x did not finish within its 20 s deadline: stalled"
    j = judge_stall(None, STALLED, reason, bug=(path, line), stacks=at_bug)
    assert j.ok and j.status == "mutant caught"
    j = judge_stall(None, STALLED, reason, bug=(path, line), stacks=elsewhere)
    assert not j.ok and "not at its line" in j.status
    assert not judge_stall(None, STALLED, reason, bug=(path, line)).ok
