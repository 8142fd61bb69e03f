"""The built-in scenarios: the clean ones stay bounded, every mutant and the raw storm leak."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from harness import UsageError, soak
from harness.mutants import MUTANTS, bug_line
from harness.scenarios import builtin_scenarios, resolve


def test_every_scenario_of_the_design_is_built_in() -> None:
    names = set(builtin_scenarios())
    assert {
        "reconnect",
        "burst",
        "redis-outage",
        "scheduler-churn",
        "neonize-storm-raw",
        "neonize-storm-isolated",
        "media-churn",
        "talkback-burst",
        "webhook-outage",
    } <= names
    assert {m.name for m in MUTANTS} <= names
    assert len(MUTANTS) == 7


LEAKING_MUTANTS = [m for m in MUTANTS if not m.expect_stall]


@pytest.mark.parametrize("mutant", LEAKING_MUTANTS, ids=lambda m: m.name)
def test_each_mutant_leaks_on_its_channel_and_memray_names_its_line(mutant: object) -> None:
    from harness.model import Scenario

    assert isinstance(mutant, Scenario) and mutant.bug is not None
    v = soak(mutant, cycles=240, warmup=40)
    assert set(mutant.expect_leak) <= set(v.leaking_channels), v.summary()
    assert v.as_expected
    assert any(site.mentions(*mutant.bug) for site in v.leak_sites), v.summary(sites=10)


def test_bug_lines_point_at_the_bugs() -> None:
    path, line = bug_line("listeners")
    text = Path(path).read_text().splitlines()[line - 1]
    assert "client.on(MessageEv" in text
    with pytest.raises(LookupError):
        bug_line("no-such-bug")


def test_reconnect_is_bounded_with_two_lifetime_handlers() -> None:
    v = soak(resolve("reconnect"), cycles=500, warmup=100)
    assert v.bounded, v.summary()
    assert v.timeline["listeners"].values[-1] == 2.0
    assert v.channels["listeners"].kind == "flat"


def test_burst_is_bounded() -> None:
    v = soak(resolve("burst"), cycles=800, warmup=100)
    assert v.bounded, v.summary()


def test_the_raw_neonize_storm_leaks_rss_and_fds_at_about_the_known_rate() -> None:
    v = soak(resolve("neonize-storm-raw"), cycles=160, warmup=20)
    assert {"rss", "fds"} <= set(v.leaking_channels), v.summary()
    kib = v.channels["rss"].slope_per_cycle / 1024
    assert 100 < kib < 400, f"{kib:.0f} KiB per failed connect"  # FACTS.md: about 180 KB
    assert v.channels["fds"].slope_per_cycle == pytest.approx(1.0)
    assert v.as_expected


def test_the_isolated_storm_keeps_this_process_flat() -> None:
    # The parent's memory rises a little over each worker's life and drops at its recycle
    # (docs/harness.md, Findings): the run must span several recycles, as the suite's does.
    v = soak(resolve("neonize-storm-isolated"), cycles=1000, warmup=100)
    assert not ({"rss", "fds", "threads", "tasks"} & set(v.leaking_channels)), v.summary()


def test_scheduler_churn_is_bounded() -> None:
    # In a process of its own, as `python -m harness soak` runs it, at the scenario's own length
    # (2,000 cycles, 200 warm-up). In this pytest process, after the tests before it, croniter's
    # temporaries kept rising +0.06 blocks/cycle at cycle 2,000 (docs/harness.md, "Soak in a
    # fresh process"); at 400 cycles the run sat on the ramp of the fill.
    from harness.child import run_in_subprocess

    result = run_in_subprocess("scheduler-churn")
    assert result.verdict is not None, result
    assert result.verdict.bounded, result.verdict.summary()


def test_redis_outage_records_everything_and_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # pytest keeps every captured log record: the recorder's warnings at each outage would be
    # growth of this process. After the scenario's warm-up of 3,000 cycles, in which its slow
    # fill levels off (docs/harness.md, Findings).
    caplog.set_level(logging.ERROR, logger="waclient")
    v = soak(resolve("redis-outage"), cycles=3500, warmup=3000)
    assert v.bounded, v.summary()
    assert any("0 dropped" in note for note in v.notes)


def test_the_webhook_outage_receiver_counts_distinct_ids_across_kills(tmp_path: Path) -> None:
    """The scenario's teardown check rests on these counts: they survive a SIGKILL of the
    receiver, a retried webhook-id counts once, and a bad signature is refused and counted."""
    import httpx

    from harness.webhook_receiver import ReceiverProcess
    from waclient.webhooks.signing import generate_secret, signature_headers

    secret = generate_secret()
    rec = ReceiverProcess(secret, tmp_path / "ids")

    def post(msg_id: str, *, key: str = secret) -> int:
        body = b'{"type":"message.received"}'
        headers = signature_headers(msg_id, body, [key])
        return httpx.post(rec.url, content=body, headers=headers).status_code

    rec.start()
    try:
        assert post("in_1-0") == 204
        assert post("in_2-0", key=generate_secret()) == 400
        rec.stop()
        with pytest.raises(httpx.ConnectError):
            post("in_3-0")
        rec.start()
        assert post("in_1-0") == 204  # a retry of a delivered event: the same webhook-id
        assert post("in_3-0") == 204
    finally:
        rec.stop()
    counts = rec.counts()
    assert (counts.deliveries, counts.distinct, counts.bad_signatures) == (3, 2, 1)
    assert rec.starts == 2


def test_resolve_names_and_module_func(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "soakme.py").write_text("def cycle(i):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sc = resolve("soakme:cycle")
    assert sc.name == "soakme:cycle"
    with pytest.raises(UsageError, match="unknown scenario"):
        resolve("nope")
    with pytest.raises(UsageError, match="cannot import"):
        resolve("no_such_module_here:f")
    with pytest.raises(UsageError, match="no attribute"):
        resolve("soakme:missing")
    sys.modules.pop("soakme", None)


def test_talkback_burst_answers_every_message_of_each_burst_through_the_disk() -> None:
    # Its memory verdict needs 1,000 cycles (its warm-up spans a fill: docs/harness.md): that is
    # `nox -s soak`'s. Here the workload itself: each cycle raises unless all 1,000 messages were
    # answered and the on-disk queue is empty again.
    v = soak(resolve("talkback-burst"), cycles=25, warmup=5, memray=False)
    note = next(n for n in v.notes if n.startswith("talkback:"))
    replies, overflowed = (int(note.split()[k]) for k in (1, 3))
    assert replies == 25_000 and overflowed > 0, note
