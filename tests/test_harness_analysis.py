"""The per-channel decision on synthetic series: leaks, plateaus, bursts, steps, noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.analysis import (
    ChannelResult,
    LeakSite,
    Timeline,
    TypeGrowth,
    Verdict,
    analyze_channel,
    format_quantity,
    type_growth,
)

X = np.arange(200.0, 2001.0)


def judge(y: np.ndarray, threshold: float = 0.5, min_growth: float = 0.0) -> ChannelResult:
    return analyze_channel("py_blocks", "blocks", X, y, threshold=threshold, min_growth=min_growth)


def noise(seed: int, scale: float = 20.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, X.shape)


def test_one_block_per_cycle_leaks() -> None:
    r = judge(100_000 + X + noise(1))
    assert r.leaking and r.kind == "leak"
    assert r.slope_low > 0.5 and abs(r.slope_per_cycle - 1.0) < 0.05
    assert r.late_slope_per_cycle > 0.5 and r.late_p_value < 0.01
    assert 1500 < r.growth < 2100
    assert "grows" in r.reason


def test_a_cache_that_fills_then_stops_is_a_plateau_not_a_leak() -> None:
    x = np.arange(300.0, 3001.0)  # 3,000 cycles, 300 of warm-up
    filled = np.minimum(x, 1500.0) * 2.0  # fills during the first 1,500, then flat
    y = filled + np.random.default_rng(2).normal(0.0, 5.0, x.shape)
    r = analyze_channel("py_blocks", "blocks", x, y, threshold=0.5)
    assert not r.leaking
    assert r.kind == "plateau"  # the whole run grows, its second half does not
    assert r.slope_low > 0.5 and abs(r.late_slope_per_cycle) < 0.5
    assert "stopped" in r.reason


def test_a_slow_steady_leak_is_found_where_a_plateau_is_not() -> None:
    slow = 0.8 * X + noise(3, 5.0)
    assert judge(slow).leaking


def test_a_cache_still_filling_in_the_second_half_is_undecided_not_a_leak() -> None:
    # Growth that decelerates past the middle of the measured cycles: more cycles will tell.
    filled = np.minimum(X, 1500.0) * 2.0
    r = judge(filled + noise(2, 5.0))
    assert not r.leaking and r.undecided and r.kind == "undecided"
    assert r.early_slope_per_cycle > 2 * r.late_slope_per_cycle
    assert "still settling" in r.reason


@pytest.mark.parametrize("seed", range(10))
def test_a_fill_falling_as_one_over_cycles_is_no_leak_over_a_default_run(seed: int) -> None:
    # croniter's fill in scheduler-churn (~82 ln(cycle) blocks), sampled every 2 cycles with
    # +-1 block of noise, over a default run's measured cycles (200..2,000).
    x = np.arange(200.0, 2001.0, 2.0)
    y = 546_000 + np.round(82.0 * np.log(x) + np.random.default_rng(seed).normal(0, 1, x.shape))
    r = analyze_channel("py_blocks", "blocks", x, y, threshold=0.05)
    assert not r.leaking and r.kind in ("undecided", "plateau"), r.reason


@pytest.mark.parametrize("seed", range(10))
def test_a_steady_leak_is_a_leak_not_undecided(seed: int) -> None:
    r = judge(0.6 * X + noise(seed, 20.0))
    assert r.leaking and not r.undecided


def test_an_automatic_threshold_is_the_noise_over_the_span_or_the_floor() -> None:
    quiet = analyze_channel("rss", "bytes", X, 5.0 * X + noise(4, 1.0), threshold=None, floor=32)
    assert quiet.threshold == 32 and quiet.threshold_auto and not quiet.leaking
    noisy = analyze_channel(
        "rss", "bytes", X, 40.0 * X + noise(5, 100_000.0), threshold=None, floor=32
    )
    assert noisy.threshold == pytest.approx(3 * noisy.noise / (X[-1] - X[0]))
    assert noisy.threshold > 100 and not noisy.leaking
    assert analyze_channel("rss", "bytes", X, 128.0 * X + noise(6, 4096.0), threshold=None,
                           floor=32).leaking  # fmt: skip


def pages(x: np.ndarray, every: float, phase: float) -> np.ndarray:
    """RSS as the kernel shows it: a 4 KiB page gained every ``every`` cycles."""
    return 150.0 * 2**20 + 4096.0 * np.floor((x - x[0] + phase) / every)


@pytest.mark.parametrize("seed", range(5))
def test_rss_growth_within_the_resolution_is_fine_and_a_real_leak_is_not(seed: int) -> None:
    # The clean runs' false alarms: a staircase of pages, steady (its slope's interval is above
    # the floor) but only +56 KiB over 900 measured cycles, the C heap in use flat.
    from harness.probes import FLOORS, RESOLUTIONS

    def rss(x: np.ndarray, y: np.ndarray) -> ChannelResult:
        return analyze_channel("rss", "bytes", x, y, threshold=None, floor=FLOORS["rss"],
                               resolution=RESOLUTIONS["rss"])  # fmt: skip

    x = np.arange(100.0, 1001.0, 3.0)  # a clean run's drift: +56 KiB over 900 cycles
    drift = rss(x, pages(x, 64.0, 7.0 * seed))
    assert drift.slope_low > drift.threshold and drift.growth <= RESOLUTIONS["rss"]
    assert not drift.leaking and drift.kind == "fine" and "resolution" in drift.reason
    leak = rss(X, pages(X, 32.0, 3.0 * seed))  # 128 B/cycle over 1,800 cycles
    assert leak.leaking and leak.growth > RESOLUTIONS["rss"]


def test_a_slope_that_rose_beyond_noise_against_a_baseline_is_a_regression() -> None:
    from harness.analysis import compare_channel

    def rss(slope: float, seed: int) -> ChannelResult:
        y = slope * X + noise(seed, 2000.0)
        return analyze_channel("rss", "bytes", X, y, threshold=1024.0)

    old, same, worse = rss(30.0, 7), rss(30.0, 8), rss(300.0, 9)
    assert not worse.leaking  # under the absolute threshold
    assert compare_channel(worse, old, 32.0).regression and worse.leaking
    assert worse.kind == "regression" and "REGRESSION" in worse.reason
    assert not compare_channel(same, old, 32.0).regression and not same.leaking
    shrinking, shrinking_less = rss(-300.0, 10), rss(-100.0, 11)
    assert not compare_channel(shrinking_less, shrinking, 32.0).regression
    fine = rss(300.0, 12)
    fine.resolution = fine.growth  # a rise the channel cannot resolve is no regression
    assert not compare_channel(fine, old, 32.0).regression


@pytest.mark.parametrize("period", [25, 50, 100])
def test_periodic_bursts_that_are_freed_are_bounded(period: int) -> None:
    burst = np.where((X % period) < period / 5, 5000.0, 0.0)
    assert not judge(100_000 + burst + noise(period)).leaking


@pytest.mark.parametrize("period", [40, 100, 150])
def test_a_sawtooth_of_a_buffer_flushed_periodically_is_bounded(period: int) -> None:
    saw = (X % period) * 10.0
    assert not judge(100_000 + saw + noise(period, 3.0)).leaking


@pytest.mark.parametrize("seed", range(20))
def test_noise_alone_never_leaks(seed: int) -> None:
    assert not judge(100_000 + noise(seed, 200.0)).leaking


def count(name: str, cycles: np.ndarray, values: np.ndarray) -> ChannelResult:
    """A count channel judged as the built-in probes judge it: threshold from noise, floor 0,
    a rise of at least 1 in the second half."""
    unit = name.rsplit("_", 1)[-1]
    return analyze_channel(name, unit, cycles, values, threshold=None, min_growth=1.0, floor=0.0)


def test_a_count_that_steps_once_is_not_steady_growth() -> None:
    threads = np.where(X < 1600, 9.0, 10.0)  # a pool that grew one thread, late in the run
    assert not count("threads", X, threads).leaking


def test_a_count_that_keeps_rising_leaks_at_any_slope() -> None:
    tasks = 3.0 + np.floor((X - 200) / 10)  # one task every 10 cycles
    r = count("tasks", X, tasks)
    assert r.leaking and abs(r.slope_per_cycle - 0.1) < 0.01
    assert r.threshold < 0.001  # a count that moves only by its leak has no scatter


def host_fds() -> tuple[np.ndarray, np.ndarray]:
    """The host's open fds over a suite-length run of the host scenario (tests/data)."""
    data = json.loads((Path(__file__).parent / "data" / "host_fds_suite_run.json").read_text())
    return np.asarray(data["cycles"]), np.asarray(data["values"])


def test_a_count_that_swings_with_the_load_must_grow_beyond_its_swing() -> None:
    # Measured: the host's fds fall by about 12 at each Redis outage (every 100 cycles) and
    # climb back as the load refills the pool; this run ended near a top. At a fixed threshold
    # of 0 it read as a leak of 6.5 fds; its own scatter puts the threshold above its slope.
    cycles, fds = host_fds()
    fixed = analyze_channel("host_fds", "fds", cycles, fds, threshold=0.0, min_growth=1.0)
    assert fixed.leaking and fixed.growth == pytest.approx(6.5)
    r = count("host_fds", cycles, fds)
    assert not r.leaking and r.threshold > r.slope_low > 0


@pytest.mark.parametrize("every", [50, 20, 10])
def test_a_count_leak_beyond_the_swing_is_caught(every: int) -> None:
    cycles, fds = host_fds()
    leaked = fds + np.floor((cycles - cycles[0]) / every)  # one fd kept every ``every`` cycles
    r = count("host_fds", cycles, leaked)
    assert r.leaking and r.slope_per_cycle >= 1 / every


def test_a_constant_channel_is_flat() -> None:
    r = judge(np.full(X.shape, 7.0))
    assert not r.leaking and r.kind == "flat"
    assert r.slope_per_cycle == 0.0 and r.p_value == 1.0


def test_too_few_samples_do_not_decide() -> None:
    r = analyze_channel("rss", "bytes", [1, 2, 3], [1, 2, 3], threshold=0.0)
    assert not r.leaking and r.kind == "few-samples"


def test_the_threshold_decides_how_much_growth_is_a_leak() -> None:
    y = 100_000 + 2.0 * X + noise(5, 2.0)
    assert judge(y, threshold=1.0).leaking
    assert not judge(y, threshold=3.0).leaking


def test_long_series_are_thinned_to_the_analysis_limit() -> None:
    x = np.arange(0.0, 20_000.0)
    r = analyze_channel("rss", "bytes", x, 4096.0 * x, threshold=1024.0)
    assert r.leaking and r.samples <= 1500


def test_mismatched_or_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        analyze_channel("rss", "bytes", [1, 2], [1], threshold=0.0)
    with pytest.raises(ValueError):
        analyze_channel("rss", "bytes", X, X, threshold=0.0, confidence=1.5)


def _verdict() -> Verdict:
    leak = judge(100_000 + X + noise(1))
    flat = analyze_channel("rss", "bytes", X, np.full(X.shape, 9e7), threshold=1024.0)
    return Verdict(
        bounded=False,
        cycles=2000,
        warmup=200,
        channels={"rss": flat, "py_blocks": leak},
        leak_sites=[LeakSite("app.py:12", "cycle", 32_000, 1800, ["app.py:12 in cycle"])],
        scenario="unit",
        tracked=True,
        gc_growth=[TypeGrowth("app.Thing", 10, 1810)],
        timeline={"rss": Timeline([1.0, 2.0], [3.0, 4.0])},
    )


def test_verdict_json_round_trip_keeps_the_contract_fields() -> None:
    v = _verdict()
    d = json.loads(v.to_json())
    for key in ("bounded", "cycles", "warmup", "channels", "leak_sites"):
        assert key in d
    for key in ("slope_per_cycle", "growth", "unit", "leaking"):
        assert key in d["channels"]["py_blocks"]
    assert d["channels"]["py_blocks"]["leaking"] is True and d["bounded"] is False
    back = Verdict.from_dict(d)
    assert back.leaking_channels == ["py_blocks"]
    assert back.leak_sites[0].location == "app.py:12"
    assert back.timeline["rss"].values == [3.0, 4.0]
    assert back.to_dict() == v.to_dict()


def test_summary_names_the_leak_its_rate_and_its_site() -> None:
    text = _verdict().summary()
    assert text.startswith("unit: LEAK in py_blocks after 2000 cycles")
    assert "app.py:12 in cycle" in text and "app.Thing +1,800" in text


def test_leak_site_matches_its_file_and_line() -> None:
    site = LeakSite("harness/mutants.py:68", "f", 1, 1, ["x.py:1 in g"])
    assert site.mentions("/work/main/harness/mutants.py", 68)
    assert site.mentions("x.py", 1)
    assert not site.mentions("harness/mutants.py", 69)


def test_from_dict_refuses_what_is_not_a_verdict() -> None:
    with pytest.raises(ValueError, match="not a soak verdict"):
        Verdict.from_dict({"bounded": True})


def test_type_growth_lists_the_types_that_grew_most() -> None:
    rows = type_growth({"a": 1, "b": 5}, {"a": 101, "b": 5, "c": 7})
    assert [(r.type, r.delta) for r in rows] == [("a", 100), ("c", 7)]


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (180 * 1024, "bytes", "180 KiB"),
        (1.0, "blocks", "1 blocks"),
        (-3.0, "", "-3"),
        (12, "bytes", "12 B"),
    ],
)
def test_format_quantity(value: float, unit: str, text: str) -> None:
    assert format_quantity(value, unit) == text
