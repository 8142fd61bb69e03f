"""The host under hostile input, over real uvicorn and a real Redis (issue 11): poison dates,
a corrupt stored job, scheduled sends against the number's send budget, cron jobs firing too
often, oversized and slow requests, too many connections, keys in URLs, failed-key floods."""

from __future__ import annotations

import contextlib
import inspect
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis as redis_sync
from fastapi.routing import APIRoute
from test_host_api import KEY, OTHER_KEY, PHONE, make_settings, wait_ready
from test_host_limits import HangingTransport, client_for, wait_until
from test_host_process import KEY as PROCESS_KEY
from test_host_process import answers, free_port, host_process, serving_env

from harness.host_soak.load_process import read_to_eof
from waclient.host import create_app
from waclient.host.http_guard import guard_stats
from waclient.host.limits import RateLimiter
from waclient.host.pagination import MAX_PAGE_BYTES
from waclient.host.testing import RunningServer, serve
from waclient.redis import open_redis
from waclient.scheduler import Scheduler
from waclient.transports.simulated import SimulatedTransport


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def scheduler_keys(url: str, prefix: str = "waclient") -> list[bytes]:
    with redis_sync.Redis.from_url(url) as r:
        return sorted(r.scan_iter(f"{prefix}:scheduler:*"))


class TimedTransport(SimulatedTransport):
    """Records when each send began and ended (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.send_times: list[tuple[float, float]] = []

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        result = await super().call(method, *args, **kwargs)
        if method == "send_message":
            self.send_times.append((began, time.monotonic()))
        return result


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
    assert host.app.state.host.scheduler.statistics().unreadable >= 3
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
    # The scheduler sends one job after the other, each after taking a token: the tokens of
    # sends i..j were all taken between the end of send i-1 and the start of send j, and a
    # token bucket gives at most burst + rate * T tokens in any T seconds. A loaded machine can
    # only make the sends slower, never faster.
    for i in range(1, len(times)):
        for j in range(i, len(times)):
            span = times[j][0] - times[i - 1][1]
            assert j - i + 1 <= burst + rate * span + 1e-6, (i, j, span)
    assert "waclient_scheduled_sends_paced_total" in paced


def test_scheduled_and_direct_sends_share_one_budget(tmp_path: Path, redis_url: str) -> None:
    transport = TimedTransport()
    settings = make_settings(tmp_path, redis_url, send_rate=0.01, send_burst=3, scheduler_poll=0.05)
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


# -- the HTTP server: header limits, read timeouts, connection caps -----------------------------

REQUEST_HEAD = b"GET /health HTTP/1.1\r\nHost: test\r\n"


def raw_exchange(port: int, data: bytes, *, source: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a fresh connection from ``source``; everything read until the server
    closes (or 30 s pass)."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # the server may refuse before reading it all
            sock.sendall(data)
        return read_to_eof(sock)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def json_of(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path,
        None,
        max_header_bytes="8KiB",
        max_headers=20,
        header_timeout=0.5,
        body_timeout=0.5,
        max_connections_per_client=8,
    )
    with serve(create_app(settings)) as srv:
        yield srv


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (REQUEST_HEAD + b"X-Big: " + b"a" * 10_000 + b"\r\n\r\n", "8192 bytes"),
        (REQUEST_HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(25)) + b"\r\n", "20 headers"),
        (REQUEST_HEAD + b"X-Endless: " + b"a" * 100_000, "8192 bytes"),  # never finished
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", "8192 bytes"),
    ],
)
def test_header_limits_are_431(guarded: RunningServer, head: bytes, why: str) -> None:
    answer = raw_exchange(guarded.port, head)
    assert status_of(answer) == 431
    body = json_of(answer)
    assert body["error"] == "headers_too_large" and why in body["message"]
    assert httpx.get(f"{guarded.url}/health").status_code == 200


def test_headers_within_limits_pass(guarded: RunningServer) -> None:
    head = REQUEST_HEAD + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300) for i in range(15))
    assert status_of(raw_exchange(guarded.port, head + b"Connection: close\r\n\r\n")) == 200


def test_slow_headers_and_slow_bodies_are_408(guarded: RunningServer) -> None:
    # headers never finished; nothing sent at all; a body that stops at 33 of 1,000 bytes
    for partial in (REQUEST_HEAD + b"X-Slow: 1", b""):
        answer = raw_exchange(guarded.port, partial)
        assert status_of(answer) == 408 and "headers took longer" in json_of(answer)["message"]
    body_start = (
        b"POST /messages/text HTTP/1.1\r\nHost: t\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b"{" * 33
    )
    answer = raw_exchange(guarded.port, body_start)
    assert status_of(answer) == 408 and "body took longer" in json_of(answer)["message"]
    stats = guard_stats(guarded.server.config)
    assert stats is not None and stats.header_timeouts == 2 and stats.body_timeouts == 1


def test_a_body_dripping_after_an_early_answer_is_cut_off(guarded: RunningServer) -> None:
    """A key in the URL is refused before the announced body is read; the rest of the body
    never comes: the connection is closed at the body timeout rather than held open."""
    head = b"POST /messages/text?api_key=x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(head + b"x" * 33)
        for _ in range(300):  # a byte every 0.1 s (the attack), for 30 s at most
            if select.select([sock], [], [], 0.1)[0]:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break  # closed by the server
                chunks.append(chunk)
            with contextlib.suppress(OSError):
                sock.send(b"x")
        else:
            raise AssertionError("the connection was held open for 30 s")
    assert status_of(b"".join(chunks)) == 400


def test_connections_per_client_are_capped(guarded: RunningServer) -> None:
    stats = guard_stats(guarded.server.config)
    assert stats is not None
    socks = []
    try:
        for _ in range(30):
            sock = socket.socket()
            sock.bind(("127.0.0.7", 0))
            sock.connect(("127.0.0.1", guarded.port))
            socks.append(sock)
        wait_until(lambda: stats.connections_refused == 22, "22 connections refused")
        assert stats.open_per_client["127.0.0.7"] == 8
        assert httpx.get(f"{guarded.url}/health").status_code == 200  # another address
        metrics = httpx.get(f"{guarded.url}/metrics", headers={"X-API-Key": KEY}).text
        assert 'waclient_http_refused_total{reason="connections_refused"} 22.0' in metrics
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: "127.0.0.7" not in stats.open_per_client, "the count to drop")


def test_head_answers_are_not_bigger_than_the_limit_for_ordinary_clients(
    guarded: RunningServer,
) -> None:
    with httpx.Client(base_url=guarded.url, headers={"X-API-Key": KEY}) as c:
        for _ in range(20):  # keep-alive: the counters restart with each request
            assert c.get("/session", headers={"X-Pad": "p" * 4000}).status_code == 200


# -- the same against a real `python -m waclient.host` process ----------------------------------


@pytest.fixture
def host_proc(tmp_path: Path) -> Iterator[tuple[int, psutil.Process]]:
    port = free_port()
    env = serving_env(tmp_path, port, WACLIENT_HEADER_TIMEOUT="3", WACLIENT_LOG_LEVEL="warning")
    with host_process(env, tmp_path / "host.log") as proc:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}") or proc.poll() is not None, "up")
        assert proc.poll() is None, (tmp_path / "host.log").read_text()
        yield port, psutil.Process(proc.pid)


def test_1000_slow_connections_leave_health_answering(
    host_proc: tuple[int, psutil.Process],
) -> None:
    """1,000 connections from 1,000 addresses, each holding an unfinished header: /health still
    answers (idle connections are not requests in progress), and every one of them is answered
    408 and closed when the header timeout passes."""
    port, _ = host_proc
    slow: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.socket()
            sock.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUEST_HEAD + b"X-Slow: ")
            slow.append(sock)
        began = time.perf_counter()
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
        took = time.perf_counter() - began
        assert r.status_code == 200
        print(f"/health through 1,000 slow connections: {took * 1000:.1f} ms")
        answers_408 = 0
        for sock in slow:
            sock.settimeout(60)
            answers_408 += status_of(read_to_eof(sock)) == 408
        assert answers_408 == 1000
    finally:
        for sock in slow:
            sock.close()


def test_1000_slow_connections_from_one_address_are_capped(
    host_proc: tuple[int, psutil.Process],
) -> None:
    port, _ = host_proc
    slow: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.socket()
            sock.bind(("127.0.0.9", 0))
            sock.connect(("127.0.0.1", port))
            with contextlib.suppress(OSError):  # refused ones may be closed already
                sock.sendall(REQUEST_HEAD + b"X-Slow: ")
            slow.append(sock)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        statuses = []
        for sock in slow:
            sock.settimeout(60)
            answer = read_to_eof(sock)
            statuses.append(status_of(answer) if answer else None)
        # 32 (WACLIENT_MAX_CONNECTIONS_PER_CLIENT) held their headers until the timeout; the
        # rest were closed on arrival
        assert statuses.count(408) == 32 and statuses.count(None) == 968
    finally:
        for sock in slow:
            sock.close()


def test_50_mib_headers_never_reach_memory(host_proc: tuple[int, psutil.Process]) -> None:
    port, proc = host_proc
    for _ in range(5):
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    before = proc.memory_info().rss
    chunk = b"a" * 2**20
    refused = 0
    for _ in range(20):
        with socket.socket() as sock:
            sock.settimeout(30)
            sock.connect(("127.0.0.1", port))
            # the server closes after its answer and a short linger: sending may fail
            with contextlib.suppress(OSError):
                sock.sendall(REQUEST_HEAD + b"X-Huge: ")
                for _ in range(50):
                    sock.sendall(chunk)
            answer = read_to_eof(sock)
            refused += answer.startswith(b"HTTP/1.1 431")
    after = proc.memory_info().rss
    growth = (after - before) / 2**20
    print(f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB (+{growth:.2f} MiB)")
    assert growth < 10, growth
    assert refused >= 1  # the clients that read before the server hung up saw the 431
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


# -- pagination --------------------------------------------------------------------------------


def all_pages(api: httpx.Client, limit: int) -> tuple[list[dict[str, Any]], int]:
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    pages = 0
    while True:
        r = api.get("/scheduled", params=params)
        assert r.status_code == 200, r.text
        assert len(r.content) <= MAX_PAGE_BYTES + 200  # the envelope
        body = r.json()
        assert body["count"] == len(body["jobs"]) <= limit
        jobs += body["jobs"]
        pages += 1
        if body["next_cursor"] is None:
            return jobs, pages
        params["cursor"] = body["next_cursor"]


def test_pages_walk_every_job_once_in_order(api: httpx.Client) -> None:
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    ids = [
        api.post("/scheduled", json={"to": PHONE, "text": f"t{i}", "at": at}).json()["id"]
        for i in range(23)  # all due at the same second: ties ordered by id
    ]
    ids += [
        api.post("/scheduled", json={"to": PHONE, "text": "c", "cron": "0 9 * * *"}).json()["id"]
        for _ in range(4)
    ]
    jobs, pages = all_pages(api, 5)
    assert pages == 6 and sorted(j["id"] for j in jobs) == sorted(ids)  # each once
    order = [(datetime.fromisoformat(j["next_run"]), j["id"]) for j in jobs]
    assert order == sorted(order)  # soonest first, ties by id
    first = api.get("/scheduled", params={"limit": 5}).json()
    assert first["count"] == 5 and first["next_cursor"]
    # the job the cursor points at is cancelled: the next page carries on after it
    assert api.delete(f"/scheduled/{first['jobs'][-1]['id']}").status_code == 204
    second = api.get("/scheduled", params={"limit": 5, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in second["jobs"]] == [j["id"] for j in jobs[5:10]]
    assert api.get("/scheduled").json()["count"] == 26  # default page size 50


def test_pages_are_bounded_in_bytes(api: httpx.Client) -> None:
    text = "é" * 4096  # 8 KiB of UTF-8 each
    for _ in range(60):
        r = api.post("/scheduled", json={"to": PHONE, "text": text, "cron": "0 9 * * *"})
        assert r.status_code == 201
    first = api.get("/scheduled", params={"limit": 100})
    assert len(first.content) <= MAX_PAGE_BYTES + 200
    assert 0 < first.json()["count"] < 60 and first.json()["next_cursor"]
    jobs, pages = all_pages(api, 100)
    assert len({j["id"] for j in jobs}) == 60 and pages >= 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"cursor": "not a cursor"},
        {"cursor": "W10"},  # [] : no position
        {"cursor": "WyIxIiwiMiJd"},  # ["1","2"]: not a job id
        {"cursor": "x" * 600},
    ],
)
def test_bad_page_parameters_are_422(api: httpx.Client, params: dict[str, Any]) -> None:
    r = api.get("/scheduled", params=params)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text


# -- health, keys in URLs, readiness, the failed-key throttle, docs -------------------------------


def test_head_on_health_routes(api: httpx.Client, host: RunningServer) -> None:
    assert api.head("/health").status_code == 200
    ready = api.head("/health/ready")
    assert ready.status_code == 200 and ready.content == b""


def test_head_on_readiness_says_not_ready(tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(auto_connect=False)
    with serve(create_app(make_settings(tmp_path, redis_url), transport=sim)) as srv:
        assert httpx.head(f"{srv.url}/health/ready").status_code == 503
        assert httpx.head(f"{srv.url}/health").status_code == 200


@pytest.mark.parametrize("name", ["api_key", "API_KEY", "apikey", "x-api-key", "key"])
def test_a_key_in_the_query_string_is_refused(api: httpx.Client, name: str) -> None:
    for path in ("/session", "/health", "/nope"):
        r = api.get(path, params={name: KEY, "other": "1"})  # even with the header's key
        assert r.status_code == 400 and r.json()["error"] == "key_in_query", r.text
        assert KEY not in r.text


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [("maxmemory", "1", "maxmemory"), ("min-replicas-to-write", "1", "replicas")],
)
def test_readiness_reflects_redis_refusing_writes(
    api: httpx.Client, redis_url: str, setting: str, value: str, error: str
) -> None:
    with redis_sync.Redis.from_url(redis_url) as r:
        before = r.config_get(setting)[setting]
        r.config_set(setting, value)
        try:
            wait_until(lambda: api.get("/health/ready").status_code == 503, "not ready")
            body = api.get("/health/ready").json()
            assert body["redis"]["up"] is True and body["redis"]["writable"] is False
            assert error in body["redis"]["write_error"]
            assert api.head("/health/ready").status_code == 503
        finally:
            r.config_set(setting, before)
    wait_until(lambda: api.get("/health/ready").status_code == 200, "ready again")
    assert api.get("/health/ready").json()["redis"]["writable"] is True


def test_failed_key_checks_are_throttled_per_address(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, auth_failures=3, auth_failure_window=3600)
    with serve(create_app(settings)) as srv:
        other_address = httpx.HTTPTransport(local_address="127.0.0.3")
        with (
            httpx.Client(base_url=srv.url) as attacker,
            httpx.Client(base_url=srv.url, transport=other_address) as other,
        ):
            wrong = {"X-API-Key": "wrong-key-0123456789abcdef"}
            codes = [attacker.get("/session", headers=wrong).status_code for _ in range(3)]
            assert codes == [401, 401, 401]
            r = attacker.get("/session", headers=wrong)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
            assert "failed API key checks" in r.json()["message"]
            # the right key is never refused (tests/test_host_door.py); another address is
            # not affected
            assert attacker.get("/session", headers={"X-API-Key": KEY}).status_code == 200
            assert other.get("/session", headers={"X-API-Key": KEY}).status_code == 200
            assert attacker.get("/health").status_code == 200  # open routes stay open


def test_rate_limiter_is_loop_only() -> None:
    limiter = RateLimiter(1.0, 1)
    assert limiter.acquire("a") == 0.0
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            limiter.acquire("a")
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "loop-only" in str(errors[0])


def test_docs_are_off_by_default(api: httpx.Client, tmp_path: Path) -> None:
    assert api.get("/docs").status_code == 404 and api.get("/redoc").status_code == 404
    assert api.get("/openapi.json").status_code == 200
    with serve(create_app(make_settings(tmp_path, None, docs=True))) as srv:
        assert httpx.get(f"{srv.url}/docs").status_code == 200


def test_every_dependency_runs_on_the_loop(tmp_path: Path) -> None:
    """FastAPI runs a sync dependency in its thread pool (a thread hop per request, and the
    limiters shared across threads): every dependency of every route is async."""
    app = create_app(make_settings(tmp_path, None, metrics_public=False))
    seen: list[str] = []

    def walk(dependant: Any) -> None:
        for dep in dependant.dependencies:
            call = dep.call
            is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
                getattr(call, "__call__", None)  # noqa: B004 (a Security class instance)
            )
            assert is_async, f"{getattr(call, '__name__', call)!r} is sync"
            seen.append(getattr(call, "__name__", type(call).__name__))
            walk(dep)

    def routes(items: list[Any]) -> Iterator[APIRoute]:
        for item in items:
            if isinstance(item, APIRoute):
                yield item
            included = getattr(item, "original_router", None)  # FastAPI's included routers
            if included is not None:
                yield from routes(included.routes)

    for route in routes(app.routes):
        walk(route.dependant)
    assert {"require_key", "send_limited", "schedule_limited", "get_host"} <= set(seen)


def test_listing_1000_long_jobs_8_at_once_stays_small(tmp_path: Path, redis_url: str) -> None:
    """The issue's case: 1,000 jobs with 4,096-character texts, listed by 8 clients at once
    (once a 16.6 MB answer each, +281 MiB RSS): now pages of at most ~256 KiB, and the host's
    RSS grows by a bounded amount through it (twice, to see it does not keep growing)."""
    port = free_port()
    env = serving_env(
        tmp_path,
        port,
        REDIS_URL=redis_url,
        WACLIENT_SCHEDULE_BURST="2000",
        WACLIENT_SCHEDULE_RATE="1000",
        WACLIENT_LOG_LEVEL="warning",
    )
    url = f"http://127.0.0.1:{port}"
    with host_process(env, tmp_path / "host.log") as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "up")
        with client_for(url, PROCESS_KEY) as api:
            job = {"to": PHONE, "text": "é" * 4096, "cron": "0 9 * * *"}
            for _ in range(1000):
                assert api.post("/scheduled", json=job).status_code == 201
            all_pages(api, 100)  # warm: code paths, pools, caches
        server = psutil.Process(proc.pid)
        growth = []
        for _ in range(2):
            before = server.memory_info().rss
            with ThreadPoolExecutor(8) as pool:
                for walked, largest in pool.map(lambda _: walk_sizes(url), range(8)):
                    assert walked == 1000 and largest <= MAX_PAGE_BYTES + 200
            growth.append((server.memory_info().rss - before) / 2**20)
        print(f"8 concurrent walks, twice: RSS +{growth[0]:.2f} MiB, then +{growth[1]:.2f} MiB")
        # 8 pages of <= 256 KiB in flight, each held as a handful of copies (Redis reply, str,
        # dict, model, JSON) while it is made: about 16 MiB at most, whatever the job count
        assert growth[0] < 16 and growth[1] < 16, growth


def walk_sizes(url: str) -> tuple[int, int]:
    """(jobs seen, largest answer in bytes) walking every page of /scheduled."""
    seen, largest, params = 0, 0, {"limit": 100}
    with client_for(url, PROCESS_KEY) as api:
        while True:
            r = api.get("/scheduled", params=params)
            body = r.json()
            seen += body["count"]
            largest = max(largest, len(r.content))
            if body["next_cursor"] is None:
                return seen, largest
            params["cursor"] = body["next_cursor"]


def test_requests_in_progress_are_capped(tmp_path: Path) -> None:
    """WACLIENT_MAX_REQUESTS=1: while a send hangs, the next request is 503 busy; once it
    ends (504 at the send timeout), requests are answered again."""
    transport = HangingTransport()
    settings = make_settings(tmp_path, None, max_requests=1, send_timeout=2)
    with serve(create_app(settings, transport=transport)) as srv, client_for(srv.url) as api:
        wait_ready(api)
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(api.post, "/messages/text", json={"to": PHONE, "text": "x"})
            wait_until(lambda: transport.sending == 1, "the send to start")
            busy = httpx.get(f"{srv.url}/health")
            assert busy.status_code == 503 and busy.json()["error"] == "busy"
            assert busy.headers["Retry-After"] == "1"
            assert stuck.result().status_code == 504
        assert api.get("/health").status_code == 200
        stats = guard_stats(srv.server.config)
        assert stats is not None and stats.busy == 1
