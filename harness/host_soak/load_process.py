"""The host soak's load process: ``python -P harness/host_soak/load_process.py URL OUT SEED``.

An ordinary client (sends, schedules, cancels, lists, reads) from 127.0.0.1, and hostile
traffic mixed in from other loopback addresses: slow connections holding unfinished headers,
oversized headers, bad JSON and out-of-range dates, oversized bodies, wrong keys. At SIGTERM it
writes what it saw: every answer's status, the ids of the accepted sends, the 5xx, the hostile
answers and those a hostile request may not get (:data:`HOSTILE_ANSWERS`).

It imports nothing of the harness (``-P``); the rig imports its constants.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KEY = "soak-key-0123456789abcdef"
"""The host's API key in the soak: the rig configures the host with it."""
HOSTILE_ANSWERS: dict[str, frozenset[int | None]] = {
    "wrong_key": frozenset({401, 429}),  # 429 once the address's failed checks are throttled
    "bad_json": frozenset({422}),
    "poison_date": frozenset({422}),
    "big_body": frozenset({413}),
    "big_header": frozenset({431, None}),  # None: cut off before the answer could be read
    "slow_header": frozenset({408, None}),  # None: closed on arrival past the per-client cap
}
"""What each kind of hostile request may be answered (status, or None for no answer)."""
HOSTILE_ADDRESSES = {
    "wrong_key": "127.0.0.2",
    "bad_json": "127.0.0.3",
    "poison_date": "127.0.0.3",
    "big_body": "127.0.0.3",
    "big_header": "127.0.0.4",
    "slow_header": "127.0.0.5",
}
"""Each attack from its own loopback address: the failed-key throttle and the per-client
connection cap apply per address, so the ordinary client (127.0.0.1) is never caught by them."""
ORDINARY_JOB = ("+15550000000", "scheduled")
"""The number and text of every job the ordinary client schedules."""
SLOW_CONNECTIONS = 8
BIG_HEADER_BYTES = 2**20
HEAD = b"GET /health HTTP/1.1\r\nHost: soak\r\n"


def main(argv: list[str]) -> int:
    """``load_process.py URL OUT SEED``: ordinary requests from 127.0.0.1 and hostile ones from
    other addresses until SIGTERM; then the tally, as JSON, to ``OUT``."""
    if len(argv) != 3:
        print("usage: load_process.py URL OUT SEED", file=sys.stderr)
        return 2
    url, out, seed = argv[0], argv[1], int(argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tally = _Tally()
    port = int(url.rsplit(":", 1)[1])
    hostile = threading.Thread(target=_hostile, args=(url, port, tally, stop, seed), daemon=True)
    hostile.start()
    _ordinary(url, tally, stop, random.Random(seed))
    hostile.join(60)
    result = {
        "requests": tally.requests, "codes": dict(tally.codes),
        "errors_5xx": dict(tally.errors_5xx), "sent_ids": tally.sent_ids,
        "refused_sends": tally.refused_sends,
        "transport_errors": tally.transport_errors, "hostile": dict(tally.hostile),
        "hostile_unexpected": dict(tally.hostile_unexpected),
    }  # fmt: skip
    Path(out).write_text(json.dumps(result))
    return 0


@dataclass
class _Tally:
    codes: Counter[str] = field(default_factory=Counter)
    errors_5xx: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_unexpected: Counter[str] = field(default_factory=Counter)
    sent_ids: list[str] = field(default_factory=list)
    refused_sends: dict[str, str] = field(default_factory=dict)
    """Text of each send not answered 200 -> what answered it (status and error, or the
    transport error)."""
    requests: int = 0
    transport_errors: int = 0

    def answered_hostile(self, kind: str, status: int | None) -> None:
        self.hostile[f"{kind}:{status}"] += 1
        if status not in HOSTILE_ANSWERS[kind]:
            self.hostile_unexpected[f"{kind}:{status}"] += 1


def _ordinary(url: str, tally: _Tally, stop: threading.Event, rng: random.Random) -> None:
    from datetime import UTC, datetime, timedelta

    import httpx

    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no 40 ms Nagle/delayed-ACK stalls
    transport = httpx.HTTPTransport(socket_options=nodelay, local_address="127.0.0.1")
    jobs: list[str] = []
    reads = ["/health", "/health/ready", "/health/memory", "/health/redis", "/metrics", "/session"]
    with httpx.Client(
        base_url=url, headers={"X-API-Key": KEY}, timeout=30, transport=transport
    ) as c:
        while not stop.is_set():
            roll = rng.random()
            text = f"soak {tally.requests}.{tally.transport_errors}"
            try:
                if roll < 0.45:
                    name = "send"
                    to = f"+1555{rng.randrange(10**7):07d}"
                    r = c.post("/messages/text", json={"to": to, "text": text})
                    if r.status_code == 200:
                        tally.sent_ids.append(r.json()["id"])
                    else:
                        tally.refused_sends[text] = f"{r.status_code}:{r.text[:80]}"
                elif roll < 0.55:
                    name = "schedule"
                    at = datetime.now(UTC) + timedelta(seconds=rng.uniform(0.5, 2.0))
                    r = c.post("/scheduled", json={"to": ORDINARY_JOB[0], "text": ORDINARY_JOB[1],
                                                   "at": at.isoformat()})  # fmt: skip
                    if r.status_code == 201:
                        jobs.append(r.json()["id"])
                elif roll < 0.60 and jobs:
                    name = "cancel"
                    r = c.delete(f"/scheduled/{jobs.pop(rng.randrange(len(jobs)))}")
                elif roll < 0.65:
                    name = "list"
                    r = c.get("/scheduled")
                else:
                    name = "read"
                    r = c.get(rng.choice(reads))
            except httpx.TransportError as exc:
                if name == "send":
                    tally.refused_sends[text] = f"transport:{type(exc).__name__}"
                tally.transport_errors += 1
                tally.codes[f"transport:{type(exc).__name__}"] += 1
                continue
            tally.requests += 1
            tally.codes[f"{name}:{r.status_code}"] += 1
            if r.status_code >= 500 and r.url.path != "/health/ready":
                try:
                    code = r.json().get("error", "?")
                except ValueError:
                    code = "not-json"
                tally.errors_5xx[f"{r.status_code}:{code}"] += 1


def _hostile(url: str, port: int, tally: _Tally, stop: threading.Event, seed: int) -> None:
    """One attack every 50 ms or so, in turn; a pool of slow connections held throughout."""
    import httpx

    rng = random.Random(seed + 1)
    clients = {
        kind: httpx.Client(base_url=url, timeout=30,
                           transport=httpx.HTTPTransport(local_address=HOSTILE_ADDRESSES[kind]))
        for kind in ("wrong_key", "bad_json")
    }  # fmt: skip
    attacks: list[tuple[str, Callable[[], int | None]]] = [
        ("wrong_key", lambda: clients["wrong_key"].get(
            "/session", headers={"X-API-Key": f"wrong-{rng.randrange(10**9):09d}-padding"}
        ).status_code),
        ("bad_json", lambda: clients["bad_json"].post(
            "/messages/text", content=b'{"to": "+15550000000", "text": ', headers={
                "X-API-Key": KEY, "Content-Type": "application/json"}).status_code),
        ("poison_date", lambda: clients["bad_json"].post("/scheduled", headers={"X-API-Key": KEY},
            json={"to": "+15550000000", "text": "x", "at": "9999-12-31T23:59:59.999999Z"}
        ).status_code),
        ("big_body", lambda: clients["bad_json"].post(
            "/messages/text", headers={"X-API-Key": KEY, "Content-Type": "application/json"},
            content=b'{"to": "+15550000000", "text": "' + b"x" * 100_000 + b'"}').status_code),
        ("big_header", lambda: _big_header(port)),
    ]  # fmt: skip
    slow: list[socket.socket] = []
    try:
        n = 0
        while not stop.wait(0.05):
            _keep_slow(port, slow, tally)
            kind, attack = attacks[n % len(attacks)]
            n += 1
            try:
                status = attack()
            except httpx.TransportError:
                status = None
            tally.answered_hostile(kind, status)
    finally:
        for c in clients.values():
            c.close()
        for sock in slow:
            sock.close()


def _big_header(port: int) -> int | None:
    """An unfinished header far past the limit: the answer's status (None: cut off first)."""
    with socket.socket() as sock:
        sock.bind((HOSTILE_ADDRESSES["big_header"], 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # the server closes after its answer
            sock.sendall(HEAD + b"X-Huge: " + b"a" * BIG_HEADER_BYTES)
        return _status(read_to_eof(sock))


def _keep_slow(port: int, slow: list[socket.socket], tally: _Tally) -> None:
    """Keep :data:`SLOW_CONNECTIONS` connections holding an unfinished header; tally the
    answers of those the server closed (408 at its header timeout)."""
    import select

    if slow:
        readable, _, _ = select.select(slow, [], [], 0)
        for sock in readable:
            sock.settimeout(5)
            tally.answered_hostile("slow_header", _status(read_to_eof(sock)))
            slow.remove(sock)
            sock.close()
    while len(slow) < SLOW_CONNECTIONS:
        sock = socket.socket()
        sock.bind((HOSTILE_ADDRESSES["slow_header"], 0))
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):
            sock.sendall(HEAD + b"X-Slow: ")
        slow.append(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (or the socket times out)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
