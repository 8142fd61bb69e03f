"""Settings: one value object, merged in one place (scenario < marker < call < command line)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import Settings, UsageError, Workload, scenario
from harness.config import configure, default_tracked_cycles, default_warmup


@scenario("configured", cycles=3000, warmup=100, thresholds={"rss": 64.0, "heap": 64.0})
def configured() -> Iterator[Workload]:
    yield Workload(lambda i: None)


def test_layers_merge_field_by_field_and_thresholds_channel_by_channel() -> None:
    marker = Settings.of(cycles=2500, thresholds={"rss": 100.0}, allow_undecided=True)
    call = Settings.of(warmup=300, thresholds={"py_blocks": 0.2})
    cli = Settings.of(cycles=4000)
    cfg = configure(configured.name, configured.settings, marker, call, cli)
    assert (cfg.cycles, cfg.warmup) == (4000, 300)
    assert cfg.thresholds == {"rss": 100.0, "heap": 64.0, "py_blocks": 0.2}
    assert cfg.allow_undecided and cfg.max_cycles == 16_000


def test_defaults_fill_what_no_layer_sets() -> None:
    cfg = configure("plain")
    assert cfg.cycles == 2000 and cfg.warmup == default_warmup(2000) == 200
    assert cfg.tracked_cycles == default_tracked_cycles(1800) == 180
    assert cfg.memray and cfg.trace_python_allocators and not cfg.native_traces
    assert configure("plain", Settings.of(memray=False)).tracked_cycles == 0


def test_the_run_has_a_finite_timeout_unless_one_asks_for_none() -> None:
    assert configure("plain").timeout == Settings.DEFAULT_TIMEOUT == 3600.0
    own = Settings.of(timeout=7200)  # a scenario's own layer
    assert configure("patient", own).timeout == 7200.0
    assert configure("patient", own, Settings.of(timeout=60)).timeout == 60.0
    assert configure("plain", Settings.of(timeout=float("inf"))).timeout is None
    assert Settings.from_json(Settings.of(timeout=float("inf")).to_json()).timeout == float("inf")


def test_the_child_process_gets_the_same_layer_as_json() -> None:
    layer = Settings.of(cycles=900, thresholds={"rss": 1.5}, expect_leak="rss", report_dir="r")
    assert Settings.from_json(layer.to_json()) == layer
    assert layer.expect_leak == ("rss",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cycels": 10}, "unknown soak setting"),
        ({"cycles": 30, "warmup": 20}, "measured cycles"),
        ({"cycles": 100, "max_cycles": 50}, "max_cycles"),
        ({"timeout": 0}, "timeout"),
        ({"cycle_timeout": 0}, "cycle_timeout"),
        ({"cycle_timeout": float("inf")}, "cycle_timeout"),
        ({"confidence": 1.5}, "confidence"),
        ({"thresholds": {"rss": -1}}, "threshold for rss"),
    ],
)
def test_bad_settings_are_usage_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        configure("bad", Settings.of(**options))
