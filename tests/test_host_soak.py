"""The host soak: the real app under uvicorn, a real Redis server behind a fault proxy, HTTP load
from a second process, the isolated transport (with a simulated Go side in its worker process)
disconnected and reconnected once per cycle, and Redis cut every ``outage_every`` cycles.

The host runs in THIS process, so the harness's verdict is the host process's: rss, python
blocks, gc objects, listeners, fds, threads, asyncio tasks, plus the worker's RSS and host +
worker RSS. Afterwards every message sent (by HTTP and by the scheduler) must be in Redis, and
no 5xx other than the documented 503s may have been answered.

    pytest tests/test_host_soak.py                        # short: 800 cycles, coarser thresholds
    WACLIENT_HOST_SOAK_CYCLES=2000 pytest tests/test_host_soak.py
    python tests/test_host_soak.py soak --cycles 2000 --json host-soak.json   # the full run

One cycle = one reconnect + at least ``requests_per_cycle`` HTTP requests served; so 2,000
cycles = 2,000 reconnects, >= 20,000 requests and 20 Redis outages (at one reconnect a second,
33 minutes of a bad network compressed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ALLOWED_503 = {"redis_unavailable", "not_connected"}
"""503s the host documents for what the soak does: Redis cut, WhatsApp reconnecting."""

KEY = "soak-key-0123456789abcdef"

FULL_CYCLES = 2000
SHORT_THRESHOLDS = {"py_blocks": 3.0, "rss": 4096.0, "heap": 4096.0, "total_rss": 4096.0}
"""Per-cycle thresholds of the short run. 400 measured cycles of a fresh web server cannot tell
caches that fill slowly (statement caches, metric label sets, pooled Redis connections holding
their last error) from a slow leak: measured here, +1.3 python blocks and +1.1 KiB of RSS per
cycle over 400 cycles, +0.15 blocks and a plateau over 1,800. The short run still catches a leak
of one object per request (10 requests a cycle); the full run (2,000 cycles) uses the
harness's own thresholds (0.5 blocks, 1 KiB)."""


# -- the fault process: Redis and the proxy, outside the host process -----------------------------


def faults_main() -> None:
    from harness.faults import FaultProxy, RedisServer

    with RedisServer() as server, FaultProxy((server.host, server.port)) as proxy:
        print(json.dumps({"url": proxy.url, "direct": server.url}), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "cut":
                proxy.refuse(True)
                proxy.reset()
            elif cmd == "heal":
                proxy.heal()
            elif cmd == "quit":
                break
            print("ok", flush=True)


# -- the load generator: a second process --------------------------------------------------------


def loadgen_main(url: str, out: str, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    codes: Counter[str] = Counter()
    errors_5xx: Counter[str] = Counter()
    sent_ids: list[str] = []
    jobs: list[str] = []
    requests = transport_errors = 0
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no 40 ms Nagle/delayed-ACK stalls
    transport = httpx.HTTPTransport(socket_options=nodelay)
    with httpx.Client(
        base_url=url, headers={"X-API-Key": KEY}, timeout=30, transport=transport
    ) as c:
        while not stop:
            roll = rng.random()
            try:
                if roll < 0.45:
                    name = "send"
                    r = c.post(
                        "/messages/text",
                        json={"to": f"+1555{rng.randrange(10**7):07d}", "text": f"soak {requests}"},
                    )
                    if r.status_code == 200:
                        sent_ids.append(r.json()["id"])
                elif roll < 0.55:
                    name = "schedule"
                    at = datetime.now(UTC) + timedelta(seconds=rng.uniform(0.5, 2.0))
                    r = c.post(
                        "/scheduled",
                        json={"to": "+15550000000", "text": "scheduled", "at": at.isoformat()},
                    )
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
                    path = rng.choice(
                        [
                            "/health",
                            "/health/ready",
                            "/health/memory",
                            "/health/redis",
                            "/metrics",
                            "/session",
                        ]
                    )
                    r = c.get(path)
            except httpx.TransportError as exc:
                transport_errors += 1
                codes[f"transport:{type(exc).__name__}"] += 1
                continue
            requests += 1
            codes[f"{name}:{r.status_code}"] += 1
            if r.status_code >= 500 and not (name == "read" and "/ready" in str(r.url)):
                try:
                    code = r.json().get("error", "?")
                except ValueError:
                    code = "not-json"
                errors_5xx[f"{r.status_code}:{code}"] += 1
    Path(out).write_text(
        json.dumps(
            {
                "requests": requests,
                "codes": dict(codes),
                "errors_5xx": dict(errors_5xx),
                "sent_ids": sent_ids,
                "transport_errors": transport_errors,
            }
        )
    )


# -- the host side -------------------------------------------------------------------------------


async def run_host_soak(
    cycles: int,
    workdir: Path,
    *,
    requests_per_cycle: int = 10,
    outage_every: int = 100,
    outage_cycles: int | None = None,
    memray: bool = True,
    trace_python: bool = False,
    thresholds: dict[str, float] | None = None,
    seed: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    import logging

    import psutil
    import redis as redis_sync
    import uvicorn

    from harness import soak_async
    from harness.probes import Probe
    from waclient.client import ClientState, StateChange
    from waclient.host import create_app, load_settings

    if outage_cycles is None:
        outage_cycles = max(1, outage_every // 10)
    if outage_every // 2 + outage_cycles >= outage_every:
        raise ValueError("an outage must end within its period")
    # The scheduler logs every failed tick; an outage every few seconds would flood the output.
    logging.getLogger("waclient.scheduler").setLevel(logging.ERROR)
    faults = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "faults"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert faults.stdout is not None and faults.stdin is not None
    info = json.loads(faults.stdout.readline())

    def fault(cmd: str) -> None:
        assert faults.stdin is not None and faults.stdout is not None
        faults.stdin.write(cmd + "\n")
        faults.stdin.flush()
        if cmd != "quit":
            assert faults.stdout.readline().strip() == "ok"

    settings = load_settings(
        api_key=KEY,
        transport="isolated",
        worker="simulated",
        redis_url=info["url"],
        session_dir=workdir / "session",
        backoff_initial=0.01,
        backoff_max=0.05,
        max_failures=10**6,
        send_rate=10**6,
        send_burst=10**6,
        schedule_rate=10**6,
        schedule_burst=10**6,
        scheduler_poll=0.2,
        memory_log_interval=60,
        memory_check_interval=1.0,
    )
    app = create_app(settings)
    host = app.state.host
    served = 0
    progressed = asyncio.Event()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        nonlocal served

        async def counted(message: Any) -> None:
            nonlocal served
            if message["type"] == "http.response.start":
                served += 1
                progressed.set()
            await send(message)

        await app(scope, receive, counted if scope["type"] == "http" else send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(counting, log_level="warning", lifespan="on", timeout_keep_alive=30)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    client = host.client
    transport = host.transport
    await client.wait_for(ClientState.CONNECTED, timeout=60)
    reconnected = asyncio.Event()

    def on_state(change: StateChange) -> None:
        if change.new is ClientState.CONNECTED:
            reconnected.set()

    client.on(StateChange, on_state)

    out = workdir / "load.json"
    loader = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "loadgen", url, str(out), str(seed)]
    )
    me = psutil.Process()
    max_total_rss = 0
    outages = 0
    cut = False

    def total_rss() -> float:
        nonlocal max_total_rss
        total = me.memory_info().rss + transport.worker_rss
        max_total_rss = max(max_total_rss, total)
        return float(total)

    async def cycle(i: int) -> None:
        nonlocal cut, outages
        generation = client.generation
        reconnected.clear()
        await transport.disconnect()
        while not (client.generation > generation and client.state is ClientState.CONNECTED):
            reconnected.clear()
            await asyncio.wait_for(reconnected.wait(), 60)
        target = (i + 1) * requests_per_cycle
        while served < target:
            if loader.poll() is not None:
                raise RuntimeError(f"the load generator exited ({loader.returncode})")
            progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progressed.wait(), 1.0)
        phase = i % outage_every
        if phase == outage_every // 2 and not cut:
            await asyncio.to_thread(fault, "cut")
            cut, outages = True, outages + 1
        elif phase == outage_every // 2 + outage_cycles and cut:
            await asyncio.to_thread(fault, "heal")
            cut = False
        total_rss()

    started = time.monotonic()
    try:
        verdict = await soak_async(
            cycle,
            cycles=cycles,
            registry=client.registry,
            probes=[
                Probe(
                    "worker_rss",
                    lambda: float(transport.worker_rss),
                    "bytes",
                    1024.0,
                    0.0,
                    "the isolated worker's RSS",
                ),
                Probe("total_rss", total_rss, "bytes", 2048.0, 0.0, "host + worker RSS"),
            ],
            # A fresh host fills its allocator arenas, caches and pools for a few hundred
            # requests (and its first outages): that is not a trend, so warm up long enough.
            warmup=max(400, cycles // 10),
            thresholds=thresholds,
            memray=memray,
            trace_python_allocators=trace_python,
            progress=progress,
            name="host-soak",
            timeout=7200,
        )
    finally:
        if loader.poll() is None:
            loader.send_signal(signal.SIGTERM)
        await asyncio.to_thread(loader.wait, 60)
        if cut:
            await asyncio.to_thread(fault, "heal")
    elapsed = time.monotonic() - started
    load = json.loads(out.read_text())
    # Let the last scheduled jobs fire, then everything reach Redis.
    deadline = time.monotonic() + 60
    while await host.scheduler.count() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    flushed = await host.outbound.flush(120) and await host.inbound.flush(120)
    stats = host.statistics()
    scheduled_sent = host.scheduler.sent
    server.should_exit = True
    await serving
    with redis_sync.Redis.from_url(info["direct"]) as r:
        stored = [f[b"id"].decode() for _, f in r.xrange("waclient:messages:out")]
    fault("quit")
    faults.wait(30)
    stored_set = set(stored)
    missing = [i for i in load["sent_ids"] if i not in stored_set]
    return {
        "cycles": cycles,
        "seconds": round(elapsed, 1),
        "reconnects": client.generation - 1,
        "requests": load["requests"],
        "requests_served": served,
        "outages": outages,
        "codes": load["codes"],
        "errors_5xx": load["errors_5xx"],
        "transport_errors": load["transport_errors"],
        "http_sends_ok": len(load["sent_ids"]),
        "scheduled_sent": scheduled_sent,
        "records_in_redis": len(stored),
        "duplicates_in_redis": len(stored) - len(stored_set),
        "missing_in_redis": len(missing),
        "flushed": flushed,
        "recorder_out": stats.outbound.to_dict() if stats.outbound else None,
        "max_total_rss_mib": round(max_total_rss / 2**20, 1),
        "worker": stats.worker.to_dict() if stats.worker else None,
        "guard_peak_mib": round(host.guard.peak / 2**20, 1),
        "guard_soft_events": host.guard.soft_events,
        "limits": host.limits.to_dict(),
        "verdict": verdict.to_dict(),
        "bounded": verdict.bounded,
        "summary": verdict.summary(),
    }


def check(result: dict[str, Any], *, budget_mib: float = 256.0) -> list[str]:
    """What the soak must show; an empty list when it passed."""
    problems = []
    if not result["bounded"]:
        problems.append("the harness verdict is not bounded:\n" + result["summary"])
    if result["max_total_rss_mib"] >= budget_mib:
        problems.append(f"host + worker RSS reached {result['max_total_rss_mib']} MiB")
    bad = {k: v for k, v in result["errors_5xx"].items() if k.split(":", 1)[1] not in ALLOWED_503}
    if bad:
        problems.append(f"undocumented 5xx: {bad}")
    if result["transport_errors"]:
        problems.append(f"{result['transport_errors']} requests failed at the transport level")
    if result["missing_in_redis"] or not result["flushed"]:
        problems.append(f"{result['missing_in_redis']} sent messages are not in Redis")
    expected = result["http_sends_ok"] + result["scheduled_sent"]
    if result["records_in_redis"] != expected or result["duplicates_in_redis"]:
        problems.append(f"{result['records_in_redis']} records in Redis, expected {expected}")
    if result["recorder_out"]["dropped"]:
        problems.append(f"{result['recorder_out']['dropped']} records dropped")
    return problems


def test_host_soak(tmp_path: Path) -> None:
    """The soak runs in a fresh process: its RSS is the host's, not that of a pytest process
    that has run hundreds of other tests before this one (measured: 420 MiB that way)."""
    cycles = int(os.environ.get("WACLIENT_HOST_SOAK_CYCLES", "800"))
    out = tmp_path / "host-soak.json"
    command = [sys.executable, __file__, "soak", "--cycles", str(cycles)]
    command += ["--outage-every", str(max(20, min(100, cycles // 8))), "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert out.exists(), f"the host soak did not finish ({run.returncode}):\n{run.stderr[-3000:]}"
    result = json.loads(out.read_text())
    summary = {k: v for k, v in result.items() if k not in ("verdict",)}
    problems = check(result)
    assert not problems, "\n".join(problems) + "\n" + json.dumps(summary, indent=1, default=str)
    assert result["reconnects"] >= cycles and result["requests_served"] >= 10 * cycles
    assert result["outages"] >= 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("soak")
    p.add_argument("--cycles", type=int, default=2000)
    p.add_argument("--requests-per-cycle", type=int, default=10)
    p.add_argument("--outage-every", type=int, default=100)
    p.add_argument("--no-memray", action="store_true")
    p.add_argument(
        "--trace-python", action="store_true", help="memray: attribute each object to its line"
    )
    p.add_argument("--json", type=Path)
    sub.add_parser("faults")
    g = sub.add_parser("loadgen")
    g.add_argument("url")
    g.add_argument("out")
    g.add_argument("seed", type=int)
    a = parser.parse_args()
    if a.cmd == "faults":
        faults_main()
        return 0
    if a.cmd == "loadgen":
        loadgen_main(a.url, a.out, a.seed)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(
            run_host_soak(
                a.cycles,
                Path(tmp),
                requests_per_cycle=a.requests_per_cycle,
                outage_every=a.outage_every,
                memray=not a.no_memray,
                thresholds=None if a.cycles >= FULL_CYCLES else SHORT_THRESHOLDS,
                progress=True,
            )
        )
    problems = check(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str))
    shown = {k: v for k, v in result.items() if k not in ("verdict", "summary")}
    print(json.dumps(shown, indent=1, default=str))
    print(result["summary"])
    print("PASS" if not problems else "FAIL:\n" + "\n".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
