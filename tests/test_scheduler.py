"""waclient.scheduler against a real redis-server: persistence, atomic claims, cancel, churn,
and hypothesis tests for cron and date validation."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from waclient.redis import open_redis
from waclient.scheduler import (
    DateInPastError,
    EmptyTextError,
    InvalidChatError,
    InvalidCronError,
    InvalidTimezoneError,
    NaiveDateTimeError,
    Scheduler,
    SchedulerError,
    TextTooLongError,
    TooManyJobsError,
    next_cron_time,
    validate_cron,
    validate_when,
)

NS = "test:sched"
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class Outbox:
    """A ``send`` that records what it sent (also in a shared ``tally``, if given)."""

    def __init__(
        self,
        name: str = "",
        fail: bool = False,
        *,
        gate: Rendezvous | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.name = name
        self.fail = fail
        self.sent: list[tuple[str, str]] = []
        self._gate = gate
        self._tally = tally

    async def __call__(self, chat: str, text: str) -> object:
        await asyncio.sleep(0)  # a real send yields; let other schedulers interleave
        if self._gate is not None:
            await self._gate.arrive(self.name)
        if self.fail:
            raise RuntimeError("not connected")
        self.sent.append((chat, text))
        if self._tally is not None:
            self._tally.add(text)
        return None


class Tally:
    """Texts sent by several outboxes; ``done`` is set once ``expected`` distinct ones were."""

    def __init__(self, expected: int) -> None:
        self.counts: Counter[str] = Counter()
        self.done = asyncio.Event()
        self._expected = expected

    def add(self, text: str) -> None:
        self.counts[text] += 1
        if len(self.counts) >= self._expected:
            self.done.set()


class Rendezvous:
    """Holds every party's sends until each party has come to send once: proof that each one
    claimed jobs, whatever the machine's scheduling."""

    def __init__(self, *parties: str) -> None:
        self._missing = set(parties)
        self._open = asyncio.Event()

    async def arrive(self, party: str) -> None:
        self._missing.discard(party)
        if not self._missing:
            self._open.set()
        await self._open.wait()


class HeldSend:
    """A ``send`` that holds every send until ``release`` is set; ``sending`` is set when one
    starts (its job is claimed by then)."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, chat: str, text: str) -> object:
        self.sending.set()
        await self.release.wait()
        return None


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = open_redis(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


async def ns_keys(redis: Redis, ns: str = NS) -> list[bytes]:
    return sorted([k async for k in redis.scan_iter(f"{ns}:*", count=1000)])


# -- basics ----------------------------------------------------------------------------------


async def test_create_get_list_cancel(r: Redis) -> None:
    s = Scheduler(r, Outbox(), namespace=NS)
    once = await s.create_once("1555@s.whatsapp.net", "hello", T0 + timedelta(hours=1), now=T0)
    cron = await s.create_cron("1555@s.whatsapp.net", "daily", "0 9 * * *", now=T0)
    assert once.kind == "once" and once.next_run == T0 + timedelta(hours=1) and once.runs == 0
    assert cron.kind == "cron" and cron.cron == "0 9 * * *"
    assert cron.next_run == datetime(2030, 1, 2, 9, 0, tzinfo=UTC)
    assert await s.get(once.id) == once
    assert [j.id for j in await s.list()] == [once.id, cron.id]  # soonest first
    assert await s.count() == 2
    assert len(await ns_keys(r)) == 3  # due zset + 2 hashes
    assert await s.cancel(once.id) is True
    assert await s.cancel(once.id) is False
    assert await s.get(once.id) is None
    assert await s.cancel("not-a-job-id") is False and await s.get("../x") is None
    assert await s.cancel(cron.id)
    assert await ns_keys(r) == []
    assert await s.list() == []
    assert once.to_dict()["next_run"] == (T0 + timedelta(hours=1)).isoformat()


async def test_once_fires_exactly_once_and_leaves_nothing(r: Redis) -> None:
    out = Outbox()
    s = Scheduler(r, out, namespace=NS)
    job = await s.create_once("c1", "ping", T0 + timedelta(minutes=5), now=T0)
    assert await s.tick(T0 + timedelta(minutes=4)) == []
    assert await s.tick(T0 + timedelta(minutes=5)) == [job.id]
    assert await s.tick(T0 + timedelta(minutes=6)) == []
    assert out.sent == [("c1", "ping")]
    assert await ns_keys(r) == []
    assert s.statistics().sent == 1


async def test_cron_is_rearmed_after_firing_and_skips_missed_runs(r: Redis) -> None:
    out = Outbox()
    s = Scheduler(r, out, namespace=NS)
    job = await s.create_cron("c1", "every 5", "*/5 * * * *", now=T0)
    assert job.next_run == T0 + timedelta(minutes=5)
    assert await s.tick(T0 + timedelta(minutes=5)) == [job.id]
    after = await s.get(job.id)
    assert after is not None and after.runs == 1 and not after.claimed
    assert after.next_run == T0 + timedelta(minutes=10)
    assert after.last_run == T0 + timedelta(minutes=5)
    assert await s.tick(T0 + timedelta(minutes=5)) == []  # not twice for one due time
    # Down for an hour: one send, then the next regular time (no burst of 12).
    assert await s.tick(T0 + timedelta(hours=1, minutes=2)) == [job.id]
    later = await s.get(job.id)
    assert later is not None and later.next_run == T0 + timedelta(hours=1, minutes=5)
    assert len(out.sent) == 2


async def test_cron_in_a_time_zone(r: Redis) -> None:
    s = Scheduler(r, Outbox(), namespace=NS)
    winter = await s.create_cron("c", "t", "0 9 * * *", tz="Europe/Paris", now=T0)
    assert winter.tz == "Europe/Paris"
    assert winter.next_run == datetime(2030, 1, 2, 8, 0, tzinfo=UTC)  # CET = UTC+1
    summer = await s.create_cron(
        "c", "t", "0 9 * * *", tz=ZoneInfo("Europe/Paris"), now=datetime(2030, 7, 1, tzinfo=UTC)
    )
    assert summer.next_run == datetime(2030, 7, 1, 7, 0, tzinfo=UTC)  # CEST = UTC+2


async def test_jobs_survive_a_restart(redis_url: str) -> None:
    first = open_redis(redis_url)
    a = Scheduler(first, Outbox(), namespace=NS)
    ids = {
        (await a.create_once("c", f"m{i}", T0 + timedelta(minutes=i + 1), now=T0)).id
        for i in range(5)
    }
    cron = await a.create_cron("c", "cron", "0 * * * *", now=T0)
    await first.aclose()
    del a  # the process is gone; only Redis remembers

    second = open_redis(redis_url)
    out = Outbox()
    b = Scheduler(second, out, namespace=NS)
    assert {j.id for j in await b.list()} == ids | {cron.id}
    fired = await b.tick(T0 + timedelta(hours=1))
    assert set(fired) == ids | {cron.id}
    assert sorted(t for _, t in out.sent) == sorted([f"m{i}" for i in range(5)] + ["cron"])
    assert [j.id for j in await b.list()] == [cron.id]
    await second.aclose()


async def test_runner_start_close(r: Redis) -> None:
    fired = asyncio.Event()

    async def send(chat: str, text: str) -> object:
        fired.set()
        return None

    s = Scheduler(r, send, namespace=NS, poll_interval=0.02)
    # Due now by the runner's (real) clock, created as of a second ago: no race with the clock.
    due = datetime.now(UTC)
    await s.create_once("c", "due", due, now=due - timedelta(seconds=1))
    async with s:
        await s.start()  # idempotent
        await asyncio.wait_for(fired.wait(), 30)
    await s.close()  # idempotent
    assert not s.statistics().running
    assert await ns_keys(r) == []  # close() let the tick that sent it settle it


# -- concurrency -------------------------------------------------------------------------------


async def test_two_schedulers_running_never_send_a_due_job_twice(redis_url: str) -> None:
    ra, rb = open_redis(redis_url), open_redis(redis_url)
    n = 400
    gate, tally = Rendezvous("a", "b"), Tally(n)
    out_a = Outbox("a", gate=gate, tally=tally)
    out_b = Outbox("b", gate=gate, tally=tally)
    a = Scheduler(ra, out_a, namespace=NS, poll_interval=0.005, claim_batch=7)
    b = Scheduler(rb, out_b, namespace=NS, poll_interval=0.005, claim_batch=7)
    # All due by the runners' (real) clock, created as of a minute ago: no race with the clock.
    due = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(n):
        await a.create_once(
            "c", f"job {i}", due + timedelta(microseconds=i), now=due - timedelta(minutes=1)
        )
    await a.start()
    await b.start()
    try:
        await asyncio.wait_for(tally.done.wait(), 120)
    finally:
        await a.close()  # each lets its tick in progress settle what it sent
        await b.close()
    assert set(tally.counts) == {f"job {i}" for i in range(n)}
    assert max(tally.counts.values()) == 1
    print(f"\ntwo runners: a sent {len(out_a.sent)}, b sent {len(out_b.sent)}, duplicates 0")
    assert out_a.sent and out_b.sent  # both really took part (the rendezvous makes sure)
    assert await a.count() == 0
    assert await ns_keys(ra) == []
    await ra.aclose()
    await rb.aclose()


async def test_concurrent_ticks_claim_each_cron_run_once(redis_url: str) -> None:
    ra, rb = open_redis(redis_url), open_redis(redis_url)
    out_a, out_b = Outbox("a"), Outbox("b")
    a = Scheduler(ra, out_a, namespace=NS, claim_batch=5)
    b = Scheduler(rb, out_b, namespace=NS, claim_batch=5)
    jobs = [await a.create_cron("c", f"cron {i}", "* * * * *", now=T0) for i in range(60)]
    for minute in range(1, 11):
        now = T0 + timedelta(minutes=minute)
        await asyncio.gather(a.tick(now), b.tick(now), a.tick(now), b.tick(now))
    counts = Counter(t for _, t in out_a.sent + out_b.sent)
    assert counts == Counter({f"cron {i}": 10 for i in range(60)})
    for job in jobs:
        stored = await a.get(job.id)
        assert stored is not None and stored.runs == 10
    await ra.aclose()
    await rb.aclose()


async def test_a_crashed_claim_is_released_by_its_lease(r: Redis) -> None:
    hang = HeldSend()  # never released
    crashed = Scheduler(r, hang, namespace=NS, lease=60, send_timeout=30)
    job = await crashed.create_once("c", "x", T0 + timedelta(minutes=1), now=T0)
    task = asyncio.create_task(crashed.tick(T0 + timedelta(minutes=1)))
    await asyncio.wait_for(hang.sending.wait(), 30)  # a send starts only after its claim
    got = await crashed.get(job.id)
    assert got is not None and got.claimed
    task.cancel()  # the process died while sending
    await asyncio.gather(task, return_exceptions=True)
    out = Outbox()
    other = Scheduler(r, out, namespace=NS)
    assert await other.tick(T0 + timedelta(minutes=1, seconds=30)) == []  # still leased
    assert await other.tick(T0 + timedelta(minutes=2, seconds=1)) == [job.id]
    assert out.sent == [("c", "x")]
    assert await ns_keys(r) == []


async def test_the_job_cap_holds_under_concurrent_creates(redis_url: str) -> None:
    ra, rb = open_redis(redis_url), open_redis(redis_url)
    a = Scheduler(ra, Outbox(), namespace=NS, max_jobs_per_session=25)
    b = Scheduler(rb, Outbox(), namespace=NS, max_jobs_per_session=25)

    async def create(s: Scheduler, i: int) -> bool:
        try:
            await s.create_once("c", f"m{i}", T0 + timedelta(days=1), now=T0)
        except TooManyJobsError as exc:
            assert "\n" not in str(exc) and "25" in str(exc)
            return False
        return True

    results = await asyncio.gather(*(create(a if i % 2 else b, i) for i in range(60)))
    assert sum(results) == 25 and await a.count() == 25
    await ra.aclose()
    await rb.aclose()


# -- cancel and churn --------------------------------------------------------------------------


async def test_cancel_leaves_no_key_even_during_a_send(r: Redis) -> None:
    slow = HeldSend()
    s = Scheduler(r, slow, namespace=NS)
    cron = await s.create_cron("c", "cron", "* * * * *", now=T0)
    once = await s.create_once("c", "once", T0 + timedelta(days=1), now=T0)
    tick = asyncio.create_task(s.tick(T0 + timedelta(minutes=1)))
    await asyncio.wait_for(slow.sending.wait(), 10)
    assert await s.cancel(cron.id)  # cancelled while it is being sent
    assert await s.cancel(once.id)
    slow.release.set()
    assert await tick == [cron.id]
    assert await ns_keys(r) == []  # the settle did not bring the cancelled job back


CHURN_WARMUP = 1000
"""Cycles before measuring. The re, dateutil and croniter caches fill for the first few hundred
(measured in a fresh process: +1,400 blocks in cycles 0-500, +70..+100 in 500-1,000, then
+10..+45 per 500 cycles, on an idle and on a loaded machine alike)."""
CHURN_CYCLES = 2000


def test_create_cancel_churn_leaves_no_growth(redis_url: str) -> None:
    """Create/cancel churn leaves no key and no Python object behind.

    Measured in a fresh process: in the pytest process, blocks allocated by whatever else still
    runs there (threads and caches of earlier tests) would count as the scheduler's.
    """
    command = [sys.executable, __file__, "churn", redis_url, str(CHURN_WARMUP), str(CHURN_CYCLES)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    print(
        f"\n{CHURN_CYCLES} create/cancel cycles after {CHURN_WARMUP} warm-up: "
        f"DBSIZE {result['dbsize_before']} -> {result['dbsize_after']}, "
        f"py blocks {result['growth']:+d}"
    )
    assert result["dbsize_before"] == result["dbsize_after"] == 1  # the unrelated key only
    assert result["keys_before"] == result["keys_after"] == []
    # One leaked object per cycle would be >= 2,000 blocks. Measured: +44..+168 (11 runs, 8 of
    # them with a busy loop on one of the 2 cores).
    assert result["growth"] < 500


async def churn(url: str, warmup: int, cycles: int) -> dict[str, Any]:
    """Run ``warmup`` then ``cycles`` create/cancel cycles; the keys and the blocks growth."""
    r = open_redis(url, socket_timeout=30)
    s = Scheduler(r, Outbox(), namespace=NS)
    await r.set("unrelated", "1")

    async def cycle(i: int) -> None:
        if i % 2:
            job = await s.create_cron("c", f"text {i}", "*/10 * * * *", now=T0)
        else:
            job = await s.create_once("c", f"text {i}", T0 + timedelta(hours=1), now=T0)
        assert await s.cancel(job.id)

    for i in range(warmup):
        await cycle(i)
    gc.collect()
    before = {"dbsize_before": await r.dbsize(), "keys_before": await churn_keys(r)}
    blocks = sys.getallocatedblocks()
    for i in range(cycles):
        await cycle(i)
    gc.collect()
    growth = sys.getallocatedblocks() - blocks
    after = {"dbsize_after": await r.dbsize(), "keys_after": await churn_keys(r)}
    await r.aclose()
    return {**before, **after, "growth": growth}


async def churn_keys(redis: Redis) -> list[str]:
    return [k.decode() for k in await ns_keys(redis)]


# -- validation ----------------------------------------------------------------------------------


async def test_clear_errors(r: Redis) -> None:
    s = Scheduler(r, Outbox(), namespace=NS, max_text_length=100)
    cases = [
        (InvalidCronError, s.create_cron("c", "t", "not a cron", now=T0)),
        (InvalidCronError, s.create_cron("c", "t", "*/5 * * * * *", now=T0)),  # seconds field
        (InvalidCronError, s.create_cron("c", "t", "0 0 30 2 *", now=T0)),  # never fires
        (InvalidTimezoneError, s.create_cron("c", "t", "* * * * *", tz="Mars/Olympus", now=T0)),
        (DateInPastError, s.create_once("c", "t", T0 - timedelta(seconds=1), now=T0)),
        (DateInPastError, s.create_once("c", "t", T0, now=T0)),
        (NaiveDateTimeError, s.create_once("c", "t", datetime(2031, 1, 1), now=T0)),
        (EmptyTextError, s.create_once("c", "", T0 + timedelta(days=1), now=T0)),
        (EmptyTextError, s.create_cron("c", "  \n", "* * * * *", now=T0)),
        (TextTooLongError, s.create_once("c", "x" * 101, T0 + timedelta(days=1), now=T0)),
        (InvalidChatError, s.create_once(" ", "t", T0 + timedelta(days=1), now=T0)),
    ]
    for error, coro in cases:
        with pytest.raises(error) as info:
            await coro
        assert isinstance(info.value, SchedulerError) and isinstance(info.value, ValueError)
        message = str(info.value)
        assert message and "\n" not in message
    assert await ns_keys(r) == []
    with pytest.raises(TooManyJobsError):
        small = Scheduler(r, Outbox(), namespace=NS, max_jobs_per_session=1)
        await small.create_once("c", "t", T0 + timedelta(days=1), now=T0)
        await small.create_once("c", "t", T0 + timedelta(days=1), now=T0)


def test_bad_scheduler_settings() -> None:
    redis = open_redis("redis://127.0.0.1:1/0")

    async def send(chat: str, text: str) -> object:
        return None

    cases: list[dict[str, Any]] = [
        {"namespace": ""},
        {"max_jobs_per_session": 0},
        {"poll_interval": 0},
        {"lease": 10, "send_timeout": 10},
        {"claim_batch": 0},
    ]
    for kwargs in cases:
        with pytest.raises(ValueError):
            Scheduler(redis, send, **kwargs)


async def test_failed_sends_retry_then_give_up(r: Redis) -> None:
    out = Outbox(fail=True)
    s = Scheduler(r, out, namespace=NS, max_failures=3, retry_delay=10)
    once = await s.create_once("c", "t", T0 + timedelta(minutes=1), now=T0)
    cron = await s.create_cron("c", "t", "0 * * * *", now=T0)
    now = T0 + timedelta(hours=1)
    assert await s.tick(now) == []
    got = await s.get(once.id)
    assert got is not None and got.failures == 1 and got.next_run == now + timedelta(seconds=10)
    assert await s.tick(now + timedelta(seconds=10)) == []  # second failure; next in 20 s
    assert await s.tick(now + timedelta(seconds=30)) == []  # third: give up
    assert await s.get(once.id) is None
    skipped = await s.get(cron.id)
    assert skipped is not None and skipped.failures == 0
    assert skipped.next_run == T0 + timedelta(hours=2)  # the cron job moves to its next time
    assert s.statistics().send_failures == 6 and s.statistics().last_error


# -- hypothesis: cron and date validation -------------------------------------------------------

_FIELDS = [(0, 59), (0, 23), (1, 28), (1, 12), (0, 6)]


@st.composite
def cron_field(draw: st.DrawFn, index: int) -> str:
    lo, hi = _FIELDS[index]
    kind = draw(st.sampled_from(["star", "value", "step", "range", "list"]))
    if kind == "star":
        return "*"
    if kind == "value":
        return str(draw(st.integers(lo, hi)))
    if kind == "step":
        return f"*/{draw(st.integers(1, hi - lo + 1))}"
    if kind == "range":
        a = draw(st.integers(lo, hi))
        b = draw(st.integers(a, hi))
        return f"{a}-{b}"
    values = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=4, unique=True))
    return ",".join(str(v) for v in sorted(values))


@st.composite
def valid_cron(draw: st.DrawFn) -> str:
    return " ".join(draw(cron_field(i)) for i in range(5))


aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2090, 1, 1),
    timezones=st.sampled_from([timezone(timedelta(hours=h)) for h in (-11, -5, 0, 3, 14)]),
)


@settings(max_examples=300, deadline=None)
@given(expr=valid_cron(), after=aware_datetimes)
def test_valid_cron_expressions_are_accepted_and_fire_after(expr: str, after: datetime) -> None:
    assert validate_cron(f"  {expr} ") == expr
    nxt = next_cron_time(expr, UTC, after)
    assert nxt > after and nxt.tzinfo is UTC
    assert croniter.match(expr, nxt)
    assert nxt - after <= timedelta(
        days=366 * 8
    )  # day-of-month <= 28: within 8 years (Feb 29 aside)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=40) | st.from_regex(r"[0-9*/,\- ]{1,30}", fullmatch=True))
def test_any_text_is_accepted_or_rejected_with_invalid_cron_error(text: str) -> None:
    try:
        expr = validate_cron(text)
    except InvalidCronError as exc:
        assert "\n" not in str(exc).replace(repr(text), "")
        return
    assert croniter.is_valid(expr)
    assert expr.startswith("@") or len(expr.split()) == 5


@settings(max_examples=100, deadline=None)
@given(extra=st.lists(st.integers(0, 59).map(str) | st.just("*"), min_size=1, max_size=3))
def test_more_than_five_fields_is_rejected(extra: list[str]) -> None:
    with pytest.raises(InvalidCronError, match="5 fields"):
        validate_cron(" ".join(["*"] * 5 + extra))


@settings(max_examples=500, deadline=None)
@given(when=aware_datetimes, now=aware_datetimes)
def test_dates_in_the_past_are_rejected_future_accepted(when: datetime, now: datetime) -> None:
    if when <= now:
        with pytest.raises(DateInPastError):
            validate_when(when, now)
    else:
        got = validate_when(when, now)
        assert got == when and got.tzinfo is UTC


@settings(max_examples=200, deadline=None)
@given(when=st.datetimes(), now=aware_datetimes)
def test_naive_dates_are_rejected(when: datetime, now: datetime) -> None:
    with pytest.raises(NaiveDateTimeError, match="timezone-aware"):
        validate_when(when, now)


def test_non_datetimes_are_rejected() -> None:
    with pytest.raises(SchedulerError):
        validate_when("2030-01-01", T0)
    with pytest.raises(InvalidCronError):
        validate_cron(None)


if __name__ == "__main__":
    # python tests/test_scheduler.py churn REDIS_URL WARMUP CYCLES: one JSON line on stdout.
    _, _, url, warmup, cycles = sys.argv
    print(json.dumps(asyncio.run(churn(url, int(warmup), int(cycles)))))
