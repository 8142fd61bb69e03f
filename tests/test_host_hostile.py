"""The host under hostile input, over real uvicorn and a real Redis (issue 11): poison dates,
a corrupt stored job, scheduled sends against the number's send budget, cron jobs firing too
often, oversized and slow requests, too many connections, keys in URLs, failed-key floods."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from test_host_api import KEY, OTHER_KEY, PHONE, make_settings, wait_ready
from test_host_limits import client_for, wait_until

from harness.simulate import SimulatedTransport
from waclient.host import create_app
from waclient.host.testing import RunningServer, serve
from waclient.redis import open_redis
from waclient.scheduler import Scheduler
from waclient.transport import SentMessage


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def scheduler_keys(url: str, prefix: str = "waclient") -> list[bytes]:
    with redis_sync.Redis.from_url(url) as r:
        return sorted(r.scan_iter(f"{prefix}:scheduler:*"))


class TimedTransport(SimulatedTransport):
    """Records when each send happened (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.send_times: list[float] = []

    async def send_text(self, chat: str, text: str) -> SentMessage:
        sent = await super().send_text(chat, text)
        self.send_times.append(time.monotonic())
        return sent


@pytest.fixture
def host(tmp_path: Path, redis_url: str) -> Iterator[RunningServer]:
    with serve(create_app(make_settings(tmp_path, redis_url))) as srv:
        yield srv


@pytest.fixture
def api(host: RunningServer) -> Iterator[httpx.Client]:
    with client_for(host.url) as c:
        wait_ready(c)
        yield c


# -- dates that cannot be stored ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "fragment"),
    [
        ("9999-12-31T23:59:59.999999Z", "out of range"),
        ("9999-12-31T23:59:59-12:00", "out of range"),
        ("0001-01-01T00:00:00+14:00", "out of range"),
        ("0001-01-01T00:00:00-14:00", "in the past"),
        ("2200-01-01T00:00:00+00:00", "out of range"),
    ],
)
def test_out_of_range_dates_are_422_and_store_nothing(
    api: httpx.Client, redis_url: str, at: str, fragment: str
) -> None:
    r = api.post("/scheduled", json={"to": PHONE, "text": "x", "at": at})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and fragment in r.json()["message"]
    assert scheduler_keys(redis_url) == []
    listed = api.get("/scheduled")
    assert listed.status_code == 200 and listed.json()["jobs"] == []


def test_a_corrupt_stored_job_is_skipped_never_a_500(
    api: httpx.Client, redis_url: str, host: RunningServer
) -> None:
    good = api.post("/scheduled", json={"to": PHONE, "text": "good", "cron": "0 9 * * *"})
    assert good.status_code == 201
    bad_id = "f" * 32
    with redis_sync.Redis.from_url(redis_url) as r:
        r.hset(
            f"waclient:scheduler:job:{bad_id}",
            mapping={"id": bad_id, "chat": "c", "text": "t", "kind": "once", "due": "1e300"},
        )
        r.zadd("waclient:scheduler:due", {bad_id: time.time() + 3600})
    listed = api.get("/scheduled")
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["jobs"]] == [good.json()["id"]]
    assert api.get(f"/scheduled/{bad_id}").status_code == 404
    assert api.delete(f"/scheduled/{bad_id}").status_code == 204  # it can still be removed
    # when due, the scheduler drops it rather than failing every tick
    with redis_sync.Redis.from_url(redis_url) as r:
        r.hset(f"waclient:scheduler:job:{bad_id}", mapping={"id": bad_id, "due": "x"})
        r.zadd("waclient:scheduler:due", {bad_id: 0})
        wait_until(lambda: not r.exists(f"waclient:scheduler:job:{bad_id}"), "the drop")
        assert r.zscore("waclient:scheduler:due", bad_id) is None
    assert host.app.state.host.scheduler.stats()["unreadable"] >= 3
    assert api.get("/scheduled").status_code == 200


# -- one outbound budget -----------------------------------------------------------------------


def test_scheduled_sends_never_exceed_the_send_rate(tmp_path: Path, redis_url: str) -> None:
    rate, burst, jobs = 5.0, 4, 24
    transport = TimedTransport()
    settings = make_settings(
        tmp_path, redis_url, send_rate=rate, send_burst=burst, scheduler_poll=0.05
    )
    with serve(create_app(settings, transport=transport)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        at = soon(1.5)
        for i in range(jobs):
            r = api.post("/scheduled", json={"to": PHONE, "text": f"m{i}", "at": at})
            assert r.status_code == 201, r.text
        wait_until(lambda: len(transport.send_times) == jobs, "every scheduled send", 60)
        assert api.get("/scheduled").json()["jobs"] == []
        paced = api.get("/metrics").text
    times = transport.send_times
    # A token bucket allows at most burst + rate * T sends in any span of T seconds; a loaded
    # machine can only make the sends slower, never faster.
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6, (i, j)
    assert "waclient_scheduled_sends_paced_total" in paced


def test_scheduled_and_direct_sends_share_one_budget(tmp_path: Path, redis_url: str) -> None:
    transport = TimedTransport()
    settings = make_settings(
        tmp_path, redis_url, send_rate=0.01, send_burst=3, scheduler_poll=0.05
    )
    with serve(create_app(settings, transport=transport)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        at = soon(1)
        for i in range(2):
            assert api.post("/scheduled", json={"to": PHONE, "text": f"s{i}", "at": at}).is_success
        wait_until(lambda: len(transport.send_times) == 2, "the scheduled sends")
        assert api.post("/messages/text", json={"to": PHONE, "text": "direct"}).status_code == 200
        with client_for(srv.url, OTHER_KEY) as other:  # another key: the same number
            r = other.post("/messages/text", json={"to": PHONE, "text": "direct"})
        assert r.status_code == 429 and "outbound budget" in r.json()["message"]
        assert int(r.headers["Retry-After"]) >= 1


# -- cron jobs firing too often ----------------------------------------------------------------


def test_cron_minimum_interval_setting(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, cron_min_interval=300)
    with serve(create_app(settings)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        for cron in ("* * * * *", "*/4 * * * *", "0,1 9 * * *"):
            r = api.post("/scheduled", json={"to": PHONE, "text": "x", "cron": cron})
            assert r.status_code == 422 and "minimum interval is 300 s" in r.json()["message"]
        assert scheduler_keys(redis_url) == []
        r = api.post("/scheduled", json={"to": PHONE, "text": "x", "cron": "*/5 * * * *"})
        assert r.status_code == 201, r.text


def test_every_minute_is_allowed_by_default(api: httpx.Client) -> None:
    r = api.post("/scheduled", json={"to": PHONE, "text": "x", "cron": "* * * * *"})
    assert r.status_code == 201, r.text


async def test_a_cron_job_is_never_sent_twice_within_the_minimum_interval(redis_url: str) -> None:
    redis = open_redis(redis_url)
    sent: list[str] = []

    async def send(chat: str, text: str) -> object:
        sent.append(text)
        return None

    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    try:
        scheduler = Scheduler(redis, send, namespace="t:min", min_interval=60)
        job = await scheduler.create_cron("c", "t", "* * * * *", now=t0)
        scheduler.min_interval = 600  # e.g. raised by a restart with a new setting
        assert await scheduler.tick(job.next_run) == [job.id]
        after = await scheduler.get(job.id)
        assert after is not None and after.next_run == job.next_run + timedelta(minutes=10)
    finally:
        await redis.aclose()
