"""The cost of memray on a soak: reconnect cycles per second, tracked against untracked.

Each round is a whole soak of the ``reconnect`` scenario (setup, warm-up, measured cycles,
analysis); the figure that matters is the measured phase's cycles per second, kept in
``extra_info`` and compared at the end of the run as seconds per cycle, tracked / untracked
(the slowdown memray causes). No timing is asserted.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import pytest
from conftest import record_median, report_ratio

from harness import soak
from harness.scenarios import resolve

CYCLES = 1500
WARMUP = 150
report_ratio(
    "memray slowdown on reconnect (seconds per measured cycle, tracked / untracked)",
    "soak-tracked",
    "soak-untracked",
    None,
)


@pytest.mark.parametrize("mode", ["untracked", "tracked", "tracked-malloc-only"])
def test_reconnect_soak_cycles_per_second(benchmark: Any, mode: str) -> None:
    logging.getLogger("waclient").setLevel(logging.WARNING)
    rates: list[float] = []

    def run() -> None:
        verdict = soak(
            resolve("reconnect"),
            cycles=CYCLES,
            warmup=WARMUP,
            memray=mode != "untracked",
            trace_python_allocators=mode == "tracked",
        )
        assert verdict.bounded, verdict.summary()
        rates.append(verdict.measured_cycles_per_second)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    rate = statistics.median(rates)
    benchmark.extra_info["measured_cycles_per_second"] = round(rate, 1)
    benchmark.extra_info["cycles"] = CYCLES
    if mode != "tracked-malloc-only":
        record_median(f"soak-{mode}", 1.0 / rate)
