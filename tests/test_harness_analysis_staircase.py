"""Staircases: memory that grows in blocks, flat between them (docs/harness.md, "Staircases")."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import soak
from harness.analysis import (
    MIN_STEP,
    ChannelResult,
    analyze_channel,
    find_steps,
)
from harness.config import Settings, configure

KIB = 1024
EVERY = 9
"""Cycles between two samples: what the sampler takes for a cheap cycle at the defaults."""
POINTS = configure("case", Settings()).decision_points()
"""The decisions of a default soak: 2,000 cycles, then 3,800, 7,400, 8,000 while undecided."""


def heap(x: np.ndarray, seed: int, level: float = 30e6) -> np.ndarray:
    """A C heap in use with a few KiB of scatter (seeded)."""
    return level + np.random.default_rng(seed).normal(0.0, 2 * KIB, x.shape)


def as_the_engine_decides(
    values: Callable[[np.ndarray], np.ndarray], warmup: int = 200
) -> tuple[ChannelResult, int]:
    """The heap channel decided at each of a default soak's decision points while undecided:
    (the last result, the cycles it was decided at)."""
    x = np.arange(warmup, POINTS[-1] + 1, EVERY, dtype=np.float64)
    y = values(x)
    for at in POINTS:
        keep = x <= at
        pauses = [p for p in POINTS if p < at]
        r = analyze_channel(
            "heap", "bytes", x[keep], y[keep], threshold=None, floor=32.0, pauses=pauses
        )
        if not r.undecided:
            break
    return r, at


def stairs(size: int, every: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A block of ``size`` bytes kept every ``every`` cycles (at 0, every, 2 x every...)."""
    return lambda x: heap(x, seed) + size * np.floor(x / every)


# -- planted staircases ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256 * KIB, 512 * KIB])
@pytest.mark.parametrize("every", [500, 700, 900, 1100, 1300, 1500])
def test_blocks_kept_every_500_to_1500_cycles_are_a_leak_at_default_settings(
    size: int, every: int
) -> None:
    r, at = as_the_engine_decides(stairs(size, every, seed=every))
    assert r.leaking and r.kind == "leak", (at, r.reason)
    assert len(r.steps) >= 2  # three by 2,000 cycles, or the trend once extended


def test_three_steps_and_a_short_tail_are_a_leak_at_2000_cycles() -> None:
    r, at = as_the_engine_decides(stairs(256 * KIB, 500, seed=1))
    assert at == 2000 and r.leaking
    assert r.steps == pytest.approx([500, 1000, 1500], abs=EVERY)


def test_one_or_two_steps_and_a_short_tail_extend_the_run() -> None:
    x = np.arange(200.0, 2001.0, EVERY)
    for every in (900, 1500):  # two steps (900, 1,800), then one (1,500)
        r = analyze_channel("heap", "bytes", x, stairs(512 * KIB, every, 2)(x), threshold=None)
        assert r.undecided and not r.leaking and r.kind == "undecided", r.reason
        assert "more cycles tell" in r.reason


def test_three_steps_and_a_tail_longer_than_their_spacing_are_undecided() -> None:
    # steps at 500, 1,000, 1,500, then flat to 2,400: longer than 500, not 2 x 500
    x = np.arange(200.0, 2401.0, EVERY)
    y = heap(x, 3) + 512 * KIB * np.clip(np.floor(x / 500), 0, 3)
    r = analyze_channel("heap", "bytes", x, y, threshold=None)
    assert len(r.steps) == 3 and r.undecided and not r.leaking, r.reason


# -- what is no staircase --------------------------------------------------------------------------


def test_a_single_early_step_and_a_long_flat_tail_stay_bounded() -> None:
    # A cache that fills once, just after the warm-up: the clean scenarios do that.
    r, at = as_the_engine_decides(lambda x: heap(x, 4) + 512 * KIB * (x >= 400))
    assert at == 2000 and r.steps == pytest.approx([400], abs=EVERY)
    assert not r.leaking and not r.undecided and r.kind in ("plateau", "flat"), r.reason


def test_a_single_late_step_is_bounded_once_the_flat_after_it_is_long_enough() -> None:
    # At 2,000 and 3,800 cycles the flat after a step at 1,500 is shorter than 2 x 1,500.
    r, at = as_the_engine_decides(lambda x: heap(x, 5) + 512 * KIB * (x >= 1500))
    assert at == 7400 and not r.leaking and not r.undecided, r.reason
    assert r.steps == pytest.approx([1500], abs=EVERY)


def test_steps_still_unclear_at_max_cycles_stay_undecided() -> None:
    # Steps at 1,500 and 4,000: at 8,000 cycles the flat after the second (4,000 cycles) is
    # not yet 2 x their spacing (2,500). Undecided (exit 3), never bounded.
    r, at = as_the_engine_decides(
        lambda x: heap(x, 6) + 512 * KIB * ((x >= 1500).astype(float) + (x >= 4000))
    )
    assert at == POINTS[-1] and r.undecided and not r.leaking, r.reason
    assert r.steps == pytest.approx([1500, 4000], abs=EVERY)


def test_a_sawtooth_is_no_staircase() -> None:
    # 512 KiB taken every 500 cycles and given back 250 cycles later: a pool that is pruned.
    r, _ = as_the_engine_decides(lambda x: heap(x, 7) + 512 * KIB * ((x % 500) >= 250))
    assert r.steps == [] and not r.leaking and not r.undecided, r.reason


def test_a_sawtooth_that_climbs_is_judged_by_its_trend_not_its_teeth() -> None:
    # Each tooth falls back below the middle of its rise: no step stays.
    x = np.arange(200.0, 2001.0, EVERY)
    y = heap(x, 8) + 512 * KIB * ((x % 400) >= 200) + 1 * KIB * np.floor(x / 400)
    assert find_steps(x, y, MIN_STEP["bytes"]) == []


def test_bursts_that_are_freed_are_no_steps() -> None:
    # burst's pattern: 2 MiB held for 10 cycles every 50, sampled every 2 cycles.
    x = np.arange(200.0, 2001.0, 2.0)
    y = heap(x, 9) + 2048 * KIB * ((x % 50) < 10)
    assert find_steps(x, y, MIN_STEP["bytes"]) == []


def test_a_rise_back_from_a_dip_is_no_step() -> None:
    # burst's RSS: the allocator gives 3.5 MiB back, and takes it again later.
    x = np.arange(200.0, 2001.0, EVERY)
    y = heap(x, 16) - 3584 * KIB * ((x > 1000) & (x < 1300))
    assert find_steps(x, y, MIN_STEP["bytes"]) == []


def test_a_ramp_is_no_step() -> None:
    # A cache filling 300 KiB over 800 cycles, then flat: the trend tests' case, a plateau.
    x = np.arange(200.0, 3001.0, EVERY)
    y = heap(x, 10) + 300 * KIB * np.clip((x - 200) / 800, 0, 1)
    r = analyze_channel("heap", "bytes", x, y, threshold=None)
    assert r.steps == [] and not r.leaking and not r.undecided, r.reason


def test_steps_smaller_than_the_least_step_are_not_counted() -> None:
    # RSS climbing by a few pages at a time (4 to 48 KiB in the clean scenarios).
    x = np.arange(200.0, 2001.0, EVERY)
    y = heap(x, 11) + 48 * KIB * np.floor(x / 300)
    assert find_steps(x, y, MIN_STEP["bytes"]) == []
    assert find_steps(x, y, 32 * KIB) != []


def test_steps_must_stand_above_the_noise() -> None:
    x = np.arange(200.0, 2001.0, EVERY)
    noisy = heap(x, 12) + np.random.default_rng(13).normal(0.0, 100 * KIB, x.shape)
    assert find_steps(x, noisy + 256 * KIB * np.floor(x / 500), MIN_STEP["bytes"]) == []


def test_counts_are_not_searched_for_steps() -> None:
    x = np.arange(200.0, 2001.0, EVERY)
    y = 1000.0 + 500 * np.floor(x / 500)
    r = analyze_channel("py_blocks", "blocks", x, y, threshold=None, floor=0.05)
    assert r.steps == []
    assert analyze_channel("heap", "bytes", x, y * KIB, threshold=None, min_step=0).steps == []


def test_a_rise_across_a_decision_is_not_a_step() -> None:
    # The allocator may find the decision's scratch memory anew: RSS rises between the sample
    # taken before a decision and the one after it.
    x = np.arange(200.0, 3801.0, EVERY)  # a sample at 2,000, the next at 2,009
    y = heap(x, 14) + 512 * KIB * (x > 2000)
    [(at, rise)] = find_steps(x, y, MIN_STEP["bytes"])
    assert at == 2009.0 and rise == pytest.approx(512 * KIB, rel=0.02)
    assert find_steps(x, y, MIN_STEP["bytes"], pauses=[2000.0]) == []


def test_the_steps_are_in_the_verdict() -> None:
    x = np.arange(200.0, 2001.0, EVERY)
    r = analyze_channel("heap", "bytes", x, stairs(256 * KIB, 500, 15)(x), threshold=None)
    d = r.to_dict()
    assert d["steps"] == r.steps and len(r.steps) == 3
    assert ChannelResult.from_dict(json.loads(json.dumps(d))).steps == r.steps


def test_decision_points() -> None:
    assert POINTS == [2000, 3800, 7400, 8000]
    assert configure("c", Settings(cycles=2000, max_cycles=2000)).decision_points() == [2000]
    cfg = configure("c", Settings(cycles=500, warmup=100, max_cycles=1000))
    assert cfg.decision_points() == [500, 900, 1000]


# -- recorded samples (tests/data/staircases.json) -------------------------------------------------


def recorded() -> dict[str, Any]:
    path = Path(__file__).parent / "data" / "staircases.json"
    series: dict[str, Any] = json.loads(path.read_text())["series"]
    return series


def decide_recorded(key: str, upto: float | None = None) -> ChannelResult:
    s = recorded()[key]
    x = np.asarray(s["cycles"], dtype=np.float64)
    y = np.asarray(s["values"], dtype=np.float64)
    keep = x <= (upto or x[-1])
    floor = {"rss": 32.0, "heap": 32.0}.get(s["channel"], 0.0)
    resolution = 120.0 * KIB if s["channel"] == "rss" else 0.0
    return analyze_channel(
        s["channel"], s["unit"], x[keep], y[keep], threshold=None, floor=floor,
        resolution=resolution,
    )  # fmt: skip


def test_upb_s_arena_over_10000_cycles_is_no_plateau() -> None:
    # protobuf 4.24.4 (upb), 400 B per map lookup taken from the message's arena, whose blocks
    # double: the C heap steps by 576 KiB at 1,540, 1.13 MiB at 3,070, 2.25 MiB at 6,175. The
    # second half of 1,000..10,000 holds one step: the trend tests call it a plateau.
    assert recorded()["upb_heap_10000"]["kind_before_staircases"] == "plateau"
    r = decide_recorded("upb_heap_10000")
    assert r.steps == pytest.approx([1540, 3070, 6175], abs=40)
    assert r.undecided and not r.leaking, r.reason  # the engine extends the run
    assert "more cycles tell" in r.reason


def test_upb_s_arena_is_a_leak_once_its_tail_is_no_longer_than_its_steps_spacing() -> None:
    r = decide_recorded("upb_heap_10000", upto=7000)
    assert r.leaking and "staircase" in r.reason, r.reason


@pytest.mark.parametrize(("upto", "steps"), [(2000, 1), (4000, 2), (5000, 2)])
def test_upb_s_arena_with_one_or_two_steps_in_the_window_is_not_bounded(
    upto: int, steps: int
) -> None:
    # From cycle 1,000 (its warm-up): the old rule said flat or plateau for each.
    r = decide_recorded("upb_heap_10000", upto=upto)
    assert len(r.steps) == steps and r.undecided and not r.leaking, r.reason


def test_upb_s_arena_over_a_default_run_is_a_leak() -> None:
    r = decide_recorded("upb_heap_2000")
    assert r.leaking and len(r.steps) == 3, r.reason


def test_a_recorded_staircase_the_trend_tests_call_a_plateau_is_a_leak() -> None:
    # blocks_256k_every_500: steps at 500, 1,000, 1,500; the second half holds one.
    r = decide_recorded("planted_256k_every_500")
    assert r.leaking and "staircase" in r.reason and "256 KiB" in r.reason, r.reason
    assert r.steps == pytest.approx([500, 1000, 1500], abs=EVERY)


def test_a_recorded_planted_staircase_extends_then_leaks() -> None:
    # blocks_512k_every_900 (benchmarks/soak_cases.py): two steps by 2,000 cycles, four by 3,800.
    first = decide_recorded("planted_512k_every_900", upto=2000)
    assert first.undecided and len(first.steps) == 2, first.reason
    assert decide_recorded("planted_512k_every_900").leaking


def clean_keys() -> list[str]:
    return sorted(k for k in recorded() if k.startswith("clean_"))


@pytest.mark.parametrize("key", clean_keys())
def test_recorded_clean_runs_stay_bounded(key: str) -> None:
    r = decide_recorded(key)
    assert not r.leaking and not r.undecided, r.reason


# -- a soak ----------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


@pytest.fixture
def blocks() -> Iterator[list[int]]:
    """C heap blocks a cycle keeps (malloc'ed, not written), freed after the test."""
    kept: list[int] = []
    yield kept
    for p in kept:
        _libc.free(p)


def test_a_soak_catches_512_kib_kept_every_500_cycles(blocks: list[int]) -> None:
    def cycle(i: int) -> None:
        if i % 500 == 0:
            blocks.append(_libc.malloc(512 * KIB))  # the leak

    v = soak(cycle, memray=False)
    assert v.status == "leak" and "heap" in v.leaking_channels, v.summary()
    assert len(v.channels["heap"].steps) >= 3


def test_a_soak_of_one_late_block_extends_and_ends_bounded(blocks: list[int]) -> None:
    # 16 MiB once, at cycle 1,500: mmapped, in the heap channel, not resident. Extended twice,
    # RSS shows no step of the harness's own decisions.
    def cycle(i: int) -> None:
        if i == 1500:
            blocks.append(_libc.malloc(16 * 1024 * KIB))

    v = soak(cycle, memray=False)
    assert v.status == "bounded" and v.cycles == 7400, v.summary()
    assert v.channels["heap"].steps == pytest.approx([1500], abs=EVERY)
    assert v.channels["rss"].steps == []
