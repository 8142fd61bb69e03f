"""``python -m waclient.host`` as a real process: configuration errors, serving, SIGTERM, and a
SIGKILL in the middle of a Redis outage followed by a restart (scheduled messages intact,
spooled records drained, nothing lost or duplicated)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from harness.faults import FaultProxy, Socks5Refuser

KEY = "process-key-0123456789abcdef"
PHONE = "+15551234567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACLIENT_")}
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def serving_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a host serving on 127.0.0.1:``port`` with the simulated transport
    and its session in ``tmp_path``; ``extra`` adds or overrides variables."""
    env = {
        "WACLIENT_API_KEY": KEY,
        "WACLIENT_TRANSPORT": "simulated",
        "WACLIENT_SESSION_DIR": str(tmp_path / "session"),
        "WACLIENT_BIND": "127.0.0.1",
        "PORT": str(port),
    }
    return host_env(**(env | extra))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@contextmanager
def host_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "waclient.host"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "WACLIENT_API_KEY: is not set"),
        ({"WACLIENT_API_KEY": "short"}, "at least 16"),
        ({"WACLIENT_API_KEY": KEY, "WACLIENT_TRANSPORT": "carrier-pigeon"}, "WACLIENT_TRANSPORT"),
        ({"WACLIENT_API_KEY": KEY, "REDIS_URL": "http://x"}, "REDIS_URL must start with"),
        ({"WACLIENT_API_KEY": KEY, "WACLIENT_MEMORY_SOFT_LIMIT": "lots"}, "bad size"),
        ({"WACLIENT_API_KEY": KEY, "PORT": "99999"}, "PORT"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "waclient.host"],
        env=host_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in lines[0], lines[0]
    if "WACLIENT_API_KEY" in env and env["WACLIENT_API_KEY"] != KEY:
        assert env["WACLIENT_API_KEY"] not in proc.stderr


def test_serves_on_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serving_env(tmp_path, port)
    log = tmp_path / "host.log"
    with host_process(env, log) as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the host to answer")
        assert proc.poll() is None, log.read_text()
        r = httpx.get(f"{url}/session", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["transport"] == "simulated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM  # after a graceful shutdown: uvicorn re-raises
    text = log.read_text()
    assert "host closed" in text and KEY not in text
    assert (tmp_path / "session").is_dir()


def test_sigkill_during_an_outage_then_restart(tmp_path: Path, fault_proxy: FaultProxy) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serving_env(
        tmp_path,
        port,
        REDIS_URL=fault_proxy.url,
        WACLIENT_SEND_BURST="1000",
    )
    log = tmp_path / "host.log"
    api = httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30)

    def recorder(direction: str) -> dict[str, Any]:
        stats: dict[str, Any] = api.get("/health/redis").json()["recorders"][direction]
        return stats

    sent: list[str] = []
    with host_process(env, log) as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the host to answer")
        wait_until(lambda: api.get("/health/ready").status_code == 200, "readiness")
        jobs = [
            api.post("/scheduled", json={"to": PHONE, "text": "cron", "cron": "0 9 * * *"}),
            api.post(
                "/scheduled", json={"to": PHONE, "text": "once", "at": "2099-01-01T09:00:00+00:00"}
            ),
        ]
        assert [j.status_code for j in jobs] == [201, 201]
        before = {j.json()["id"]: j.json() for j in jobs}
        for i in range(5):
            sent.append(
                api.post("/messages/text", json={"to": PHONE, "text": f"a{i}"}).json()["id"]
            )
        wait_until(lambda: recorder("out")["written"] == 5, "the first records to be written")
        fault_proxy.refuse(True)
        fault_proxy.reset()
        for i in range(30):
            r = api.post("/messages/text", json={"to": PHONE, "text": f"b{i}"})
            assert r.status_code == 200
            sent.append(r.json()["id"])
        wait_until(lambda: recorder("out")["spooled"] == 30, "the outage's records on disk")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    fault_proxy.heal()
    assert (tmp_path / "session" / "spool-out.sqlite").exists()
    with host_process(env, log) as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the restarted host")
        wait_until(
            lambda: recorder("out")["spooled"] == 0 and recorder("out")["replayed"] == 30,
            "the spool to drain",
        )
        after = {j["id"]: j for j in api.get("/scheduled").json()["jobs"]}
        assert after == before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM  # after a graceful shutdown: uvicorn re-raises
    with redis_sync.Redis.from_url(fault_proxy.url) as r:
        stored = [f[b"id"].decode() for _, f in r.xrange("waclient:messages:out")]
    assert stored == sent  # every message, in order, exactly once
    api.close()


def test_hard_memory_limit_exits_3(tmp_path: Path) -> None:
    """Past the hard limit the host shuts down gracefully and exits with status 3, for the
    platform to restart it."""
    env = serving_env(
        tmp_path,
        free_port(),
        WACLIENT_MEMORY_SOFT_LIMIT="1KiB",
        WACLIENT_MEMORY_HARD_LIMIT="2KiB",
        WACLIENT_MEMORY_CHECK_INTERVAL="0.1",
    )
    log = tmp_path / "host.log"
    with host_process(env, log) as proc:
        assert proc.wait(120) == 3, log.read_text()
    text = log.read_text()
    assert "hard" in text and "host closed" in text


def test_proxy_setting_reaches_the_worker(tmp_path: Path, socks5_refuser: Socks5Refuser) -> None:
    """WACLIENT_PROXY: the isolated transport's real neonize worker dials WhatsApp through it."""
    port = free_port()
    env = serving_env(
        tmp_path,
        port,
        WACLIENT_TRANSPORT="isolated",
        WACLIENT_PROXY=socks5_refuser.address,
    )
    log = tmp_path / "host.log"
    with host_process(env, log) as proc:
        wait_until(lambda: socks5_refuser.attempts > 0 or proc.poll() is not None, "a CONNECT", 120)
        assert proc.poll() is None, log.read_text()
        assert socks5_refuser.last_target is not None
        assert socks5_refuser.last_target[1] == 443  # WhatsApp's web socket, refused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM


def test_a_key_in_the_url_never_reaches_the_log(tmp_path: Path) -> None:
    """`python -m waclient.host` at debug level, its access log on: a key sent in the query
    string is refused, and the log shows the request with the key redacted."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "host.log"
    with host_process(serving_env(tmp_path, port, WACLIENT_LOG_LEVEL="debug"), log) as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the host to answer")
        r = httpx.get(f"{url}/session", params={"api_key": KEY}, headers={"X-API-Key": KEY})
        assert r.status_code == 400 and r.json()["error"] == "key_in_query"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert "GET /session?api_key=REDACTED HTTP/1.1" in text and "DEBUG" in text
    assert KEY not in text
