"""What the harness costs: the same cycle in a bare loop, soaked untracked, soaked by default.

Two cycles: ``reconnect`` (the scenario: a connection, 20 messages, a disconnect) and a cheap
sync cycle in a process holding a large heap (half a million live lists, which a per-sample
walk of the heap would make slow). Each round runs the cycle ``CYCLES`` times after a
warm-up: in a plain ``for`` loop (bare), through ``soak(..., memray=False)`` (untracked) and
through ``soak(...)`` (default: memray tracks cycles after the decision), the three back to
back in each of 5 rounds. The figure is
seconds per cycle after the warm-up, tracked cycles included (the verdict's
``measured_cycles_per_second``); the ratios at the end are bare / soak, the soak's speed as
a share of the bare loop's (targets: untracked 0.9, default 0.5). No timing is asserted.
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
from harness.model import open_async
from harness.scenarios import resolve

CYCLES = {"reconnect": 3000, "cheap": 1_000_000}
for _kind in CYCLES:
    for _mode, _target in (("untracked", 0.9), ("default", 0.5)):
        report_ratio(
            f"{_kind}: {_mode} soak speed / bare loop speed",
            f"{_kind}-bare", f"{_kind}-{_mode}", _target,
        )  # fmt: skip


@pytest.fixture(scope="module")
def large_heap() -> Iterator[list[list[int]]]:
    ballast = [[i] for i in range(500_000)]
    yield ballast
    ballast.clear()


def cheap(i: int) -> None:
    d = {"cycle": i, "text": str(i)}
    d.clear()


def bare_rate(kind: str) -> float:
    """Cycles per second of a plain loop, after a warm-up of a tenth."""
    cycles = CYCLES[kind]
    warm = cycles // 10
    if kind == "cheap":
        for i in range(warm):
            cheap(i)
        t = time.perf_counter()
        for i in range(warm, cycles):
            cheap(i)
        return (cycles - warm) / (time.perf_counter() - t)

    async def loop() -> float:
        async with open_async(resolve(kind)) as workload:
            for i in range(warm):
                await workload.cycle(i)
            t = time.perf_counter()
            for i in range(warm, cycles):
                await workload.cycle(i)
            return (cycles - warm) / (time.perf_counter() - t)

    return asyncio.run(loop())


def soak_rate(kind: str, mode: str) -> float:
    target: Any = cheap if kind == "cheap" else resolve(kind)
    cycles = CYCLES[kind]
    verdict = soak(target, cycles=cycles, warmup=cycles // 10, memray=mode == "default")
    assert verdict.bounded, verdict.summary()
    return verdict.measured_cycles_per_second


@pytest.mark.parametrize("kind", list(CYCLES))
def test_soak_speed(benchmark: Any, large_heap: list[list[int]], kind: str) -> None:
    """Each round runs bare, untracked and default back to back: the ratios of a round share
    the machine's load of the moment; the medians over the rounds are reported."""
    logging.getLogger("waclient").setLevel(logging.WARNING)
    rates: dict[str, list[float]] = {"bare": [], "untracked": [], "default": []}

    def round_() -> None:
        rates["bare"].append(bare_rate(kind))
        for mode in ("untracked", "default"):
            rates[mode].append(soak_rate(kind, mode))

    benchmark.pedantic(round_, rounds=5, iterations=1)
    for mode, values in rates.items():
        benchmark.extra_info[f"{mode}_cycles_per_second"] = round(statistics.median(values), 1)
        record_median(f"{kind}-{mode}", 1.0 / statistics.median(values))
    for mode in ("untracked", "default"):
        ratios = [s / b for s, b in zip(rates[mode], rates["bare"], strict=True)]
        benchmark.extra_info[f"{mode}_over_bare_per_round"] = [round(r, 2) for r in ratios]
