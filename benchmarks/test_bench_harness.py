"""What the harness costs: the same cycle in a bare loop, soaked untracked, soaked by default.

Three cycles: ``reconnect`` (the scenario: a connection, 20 messages, a disconnect) and a cheap
cycle, sync and async, in a process holding a large heap (half a million live lists, which a
per-sample walk of the heap would make slow). Each round runs the cycle ``CYCLES`` times after
a warm-up: in a plain ``for`` loop (bare; ``await cycle(i)`` for the async one), through
``soak(..., memray=False)`` (untracked) and through ``soak(...)`` (default: memray tracks
cycles after the decision), the three back to back in each of ``ROUNDS`` rounds, in the
reverse order every other round (the machine's load drifts: a fixed order would favour one).
The figure is seconds per cycle after the warm-up, tracked cycles included (the verdict's
``measured_cycles_per_second``); the ratios at the end are bare / soak, the soak's speed as
a share of the bare loop's (targets: untracked 0.9, default 0.5), of the medians over the
rounds and of the best rounds (on a shared machine the best round of each is the one least
slowed by other processes). No timing is asserted.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import record_median, report_ratio

from harness import soak
from harness.model import Scenario, as_scenario, open_async
from harness.scenarios import resolve

CYCLES = {"reconnect": 3000, "cheap": 10_000_000, "cheap-async": 10_000_000}
"""Long enough for the sampling budget to apply: a soak takes at least 200 samples (a few
hundred microseconds each in a large heap), which is 3 % of the measured run only when that
run lasts a couple of seconds; 1M cheap cycles (0.2 s) spent a quarter of it sampling."""
ROUNDS = 6
for _kind in CYCLES:
    for _mode, _target in (("untracked", 0.9), ("default", 0.5)):
        for _stat in ("median", "best"):
            report_ratio(
                f"{_kind}: {_mode} soak speed / bare loop speed ({_stat} of {ROUNDS} rounds)",
                f"{_kind}-bare-{_stat}", f"{_kind}-{_mode}-{_stat}", _target,
            )  # fmt: skip


@pytest.fixture(scope="module")
def large_heap() -> Iterator[list[list[int]]]:
    ballast = [[i] for i in range(500_000)]
    yield ballast
    ballast.clear()


def cheap(i: int) -> None:
    d = {"cycle": i, "text": str(i)}
    d.clear()


async def cheap_async(i: int) -> None:
    d = {"cycle": i, "text": str(i)}
    d.clear()


def workload(kind: str) -> Scenario:
    """The scenario soaked and looped over for ``kind``."""
    if kind == "reconnect":
        return resolve(kind)
    return as_scenario({"cheap": cheap, "cheap-async": cheap_async}[kind], kind)


def bare_rate(kind: str) -> float:
    """Cycles per second of a plain loop, after a warm-up of a tenth."""
    cycles = CYCLES[kind]
    warm = cycles // 10
    if kind == "cheap":
        cycle = cheap  # a local name, as the soak's loop has: no global lookup per cycle
        for i in range(warm):
            cycle(i)
        t = time.perf_counter()
        for i in range(warm, cycles):
            cycle(i)
        return (cycles - warm) / (time.perf_counter() - t)

    async def loop() -> float:
        async with open_async(workload(kind)) as opened:
            acycle = opened.cycle
            for i in range(warm):
                await acycle(i)
            t = time.perf_counter()
            for i in range(warm, cycles):
                await acycle(i)
            return (cycles - warm) / (time.perf_counter() - t)

    return asyncio.run(loop())


def soak_rate(kind: str, mode: str) -> float:
    cycles = CYCLES[kind]
    verdict = soak(workload(kind), cycles=cycles, warmup=cycles // 10, memray=mode == "default")
    assert verdict.bounded, verdict.summary()
    return verdict.measured_cycles_per_second


@pytest.mark.parametrize("kind", list(CYCLES))
def test_soak_speed(benchmark: Any, large_heap: list[list[int]], kind: str) -> None:
    """Each round runs bare, untracked and default back to back: the ratios of a round share
    the machine's load of the moment; the medians over the rounds are reported."""
    logging.getLogger("waclient").setLevel(logging.WARNING)
    rates: dict[str, list[float]] = {"bare": [], "untracked": [], "default": []}
    order = list(rates)

    def round_() -> None:
        for mode in order:
            rates[mode].append(bare_rate(kind) if mode == "bare" else soak_rate(kind, mode))
        order.reverse()

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)
    for mode, values in rates.items():
        benchmark.extra_info[f"{mode}_cycles_per_second"] = round(statistics.median(values), 1)
        benchmark.extra_info[f"{mode}_cycles_per_second_best"] = round(max(values), 1)
        record_median(f"{kind}-{mode}-median", 1.0 / statistics.median(values))
        record_median(f"{kind}-{mode}-best", 1.0 / max(values))
    for mode in ("untracked", "default"):
        ratios = [s / b for s, b in zip(rates[mode], rates["bare"], strict=True)]
        benchmark.extra_info[f"{mode}_over_bare_per_round"] = [round(r, 2) for r in ratios]
