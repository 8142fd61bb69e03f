"""Shutdown within its deadline (issue 19): with hostile webhook receivers holding every
delivery open, SIGTERM ends a real host process gracefully (uvicorn re-raises the signal, so
the deadline's forced exit, status 4, did not fire) and every message sent just before it is
in Redis (the recorders flush before the webhook workers are stopped)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from test_host_process import KEY, answers, free_port, host_process, serving_env, wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PHONE = "+15551234567"
SENDS = 40


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n" * 64


def flood(conn: socket.socket, stop: threading.Event) -> None:
    """Endless interim responses, as fast as the host reads them."""
    with contextlib.suppress(OSError):
        while not stop.is_set():
            conn.sendall(CONTINUE)


@contextmanager
def hostile_receiver(kind: str) -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback server that accepts every connection and never gives a final answer:
    ``silent`` says nothing, ``continue`` sends ``100 Continue`` without end (a delivery to it
    ends only at its timeout)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if kind == "continue":
                threading.Thread(target=flood, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], held
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for conn in held:
            conn.close()


def recorded_ids(redis_url: str) -> set[bytes]:
    with redis_sync.Redis.from_url(redis_url) as r:
        return {fields[b"id"] for _, fields in r.xrange("waclient:messages:out")}


@pytest.mark.parametrize("kind", ["silent"])
# "continue" (endless 100 Continue) starves the whole host until the webhook parsing is
# bounded (issue 19, item 4; not done): it then exits at the deadline with status 4.
def test_sigterm_with_hostile_receivers_exits_gracefully_and_flushes(
    tmp_path: Path, redis_url: str, kind: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with hostile_receiver(kind) as (receiver_port, held):
        hooks = ",".join(f"http://127.0.0.1:{receiver_port}/hook{i}" for i in range(4))
        env = serving_env(
            tmp_path,
            port,
            REDIS_URL=redis_url,
            WACLIENT_WEBHOOK_URLS=hooks,
            WACLIENT_WEBHOOK_SECRET=SECRET,
            WACLIENT_WEBHOOK_ALLOW_PRIVATE="true",
            WACLIENT_WEBHOOK_TIMEOUT="120",  # deliveries outlive the shutdown by far
            WACLIENT_SHUTDOWN_TIMEOUT="5",
            WACLIENT_SEND_RATE="1000",
            WACLIENT_SEND_BURST="1000",
        )
        log = tmp_path / "host.log"
        with host_process(env, log) as proc, httpx.Client(base_url=url, timeout=60) as api:
            wait_until(lambda: answers(url) or proc.poll() is not None, "the host to answer")
            assert proc.poll() is None, log.read_text()
            wait_until(lambda: api.get("/health/ready").status_code == 200, "the host to be ready")
            ids = set()
            for i in range(SENDS):
                r = api.post(
                    "/messages/text",
                    headers={"X-API-Key": KEY},
                    json={"to": PHONE, "text": f"before the end {i}"},
                )
                assert r.status_code == 200, r.text
                ids.add(r.json()["id"].encode())
            wait_until(lambda: len(held) >= 4, "every receiver to hold a delivery")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        text = log.read_text()
        assert code == -signal.SIGTERM, text[-3000:]  # graceful: not the deadline's exit 4
        assert "host closed" in text
    assert ids <= recorded_ids(redis_url)
