"""The ``host`` scenario's rig: the host in a process of its own, served as in production, and
the load (ordinary and hostile) from another.

Five processes:

- **the scenario process** (the harness's): it drives the cycles, reads the host's channels
  over a control pipe, cuts Redis every ``outage_every`` cycles, has the webhook receiver
  killed for the last ``receiver_cycles`` of every ``receiver_every``, and runs the analysis;
- **the fault process** (``python -P harness/host_soak.py faults IDS_FILE``): a real
  redis-server behind a :class:`~harness.faults.FaultProxy`, and the webhook receiver's
  control (its pump threads, subprocesses and Redis reads stay out of the processes measured);
- **the host process** (``python -P harness/host_soak.py host SETTINGS``): the app of
  ``waclient.host.create_app`` under ``uvicorn`` with ``waclient.host.http_guard.server_config``
  (what ``python -m waclient.host`` serves), the isolated transport with a simulated worker,
  and a control pipe; each cycle it disconnects the worker's session, waits for the client to
  reconnect and for ``requests_per_cycle`` more answers. It imports nothing of the harness
  (``-P``: this file's directory is not on ``sys.path``): no numpy, scipy, matplotlib, memray;
- **the load process** (``python -P harness/host_soak.py load URL OUT SEED``): an ordinary
  client (sends, schedules, cancels, lists, reads) from 127.0.0.1, and hostile traffic mixed
  in from other loopback addresses: slow connections holding unfinished headers, oversized
  headers, bad JSON and out-of-range dates, oversized bodies, wrong keys;
- **the webhook receiver** (:class:`~harness.webhook_receiver.ReceiverProcess`, a child of the
  fault process), the host's one configured endpoint (``WACLIENT_WEBHOOK_URLS``): it verifies
  every signature with ``standardwebhooks``; SIGKILLed, it leaves the host's dispatcher
  retrying and the backlog in Redis, drained when it is back.

The scenario's channels are the host process's (``host_*``, measured there after a
``gc.collect()``), its worker's RSS, and host + worker RSS; the harness's own channels are the
scenario process's. After the run every message the host accepted must be in Redis, once;
no answer may be a 5xx other than the documented 503s; every hostile request must be answered
4xx (or cut off); every job left in Redis (one-shots whose sends failed while the session
reconnected wait for their retry) must be one the ordinary client scheduled, and readable;
every event in the streams the dispatcher reads (``webhook-id`` ``<source>_<entry id>``) must
have reached the receiver with a valid signature (more than once only after a lost answer: at
least once), none dead-lettered.
"""

from __future__ import annotations

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
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the host and load processes cannot import the harness (``-P``)
    from redis import Redis

    from harness.webhook_receiver import ReceiverProcess

__all__ = [
    "ALLOWED_503", "HOSTILE_ANSWERS", "KEY", "RECEIVER_CYCLES", "RECEIVER_EVERY", "host_rig",
    "problems_of",
]  # fmt: skip

KEY = "soak-key-0123456789abcdef"
ALLOWED_503 = frozenset({"redis_unavailable", "not_connected", "busy"})
"""503s the host documents for what the soak does: Redis cut, WhatsApp reconnecting, busy."""
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
HOST_CHANNELS = ("rss", "heap", "py_blocks", "gc_objects", "listeners", "fds", "threads", "tasks")
RECEIVER_EVERY, RECEIVER_CYCLES = 30, 10
"""The webhook receiver is down for the last 10 cycles of every 30: a third of the run, in
outages of about a second at 10 cycles/s (the in-flight deliveries fail and wait for their
retry: 0.5-1 s, then 1-2 s with the host's default backoff), many of them within the warm-up
of a short run."""
BACKLOG_CAP = 10_000
SESSION = "waclient"
"""The host's session name: the prefix of its streams."""
DRAIN_SECONDS = 900.0
"""After the run, the longest wait for the receiver to have every event: a guard against a
hang. The backlog left can be large: the host delivers about 50 events/s here, while the load
records about as many and the receiver is down a third of the time (8,000 cycles left 20,000
events, delivered in 6 minutes)."""


# -- the scenario process's side -------------------------------------------------------------------


@contextlib.contextmanager
def host_rig(
    *,
    requests_per_cycle: int = 10,
    outage_every: int = 100,
    outage_cycles: int | None = None,
    receiver_every: int = RECEIVER_EVERY,
    receiver_cycles: int = RECEIVER_CYCLES,
    seed: int = 1,
    summary_path: str | None = None,
) -> Iterator[Any]:
    """The fault, host, load and receiver processes; yields the
    :class:`~harness.model.Workload` that drives them. The webhook receiver is down for the
    last ``receiver_cycles`` of every ``receiver_every``. After the cycles: the checks
    (:func:`problems_of`); problems raise ``RuntimeError`` (after the summary went to
    ``summary_path`` as JSON, when given)."""
    import redis as redis_sync

    from harness.model import Workload

    outage_cycles = max(1, outage_every // 10) if outage_cycles is None else outage_cycles
    if outage_every // 2 + outage_cycles >= outage_every:
        raise ValueError("an outage must end within its period")
    if not 0 < receiver_cycles < receiver_every:
        raise ValueError("the receiver must be up for part of its period")
    with tempfile.TemporaryDirectory(prefix="soak-host-") as tmp:
        faults = _Controlled(["faults", str(Path(tmp) / "webhook-ids")], Path(tmp) / "faults.log")
        host: _Controlled | None = None
        drive: _Driver | None = None
        try:
            settings = _host_settings(tmp, faults.ready)
            host = _Controlled(["host", json.dumps(settings)], Path(tmp) / "host.log")
            url = host.ready["url"]
            loader = _start(["load", url, str(Path(tmp) / "load.json"), str(seed)],
                            Path(tmp) / "load.log")  # fmt: skip
            drive = _Driver(host, faults, loader, requests_per_cycle, (outage_every,
                            outage_cycles), (receiver_every, receiver_cycles))  # fmt: skip
            notes: list[str] = []
            yield Workload(drive.cycle, probes=drive.probes(), notes=notes)
            drive.stop()
            load = json.loads((Path(tmp) / "load.json").read_text())
            final = host.call("final")
            delivery = _delivery(faults, host, drive.ended)
            with redis_sync.Redis.from_url(faults.ready["direct"]) as r:
                stored = [(f[b"id"].decode(), f[b"text"].decode())
                          for _, f in r.xrange(f"{SESSION}:messages:out")]  # fmt: skip
        finally:
            if drive is not None:
                drive.stop()
            if host is not None:
                host.close()
            faults.close()  # it stops the receiver too
        summary = _summary(drive, load, final, stored) | delivery
        notes.extend(_notes(summary))
        if summary_path:
            Path(summary_path).write_text(json.dumps(summary, indent=1, default=str))
        problems = problems_of(summary)
        if problems:
            raise RuntimeError("; ".join(problems))


def problems_of(summary: dict[str, Any]) -> list[str]:
    """What the run must show, from its summary; empty when it did."""
    problems = []
    bad = {k: v for k, v in summary["errors_5xx"].items() if k.split(":", 1)[1] not in ALLOWED_503}
    if bad:
        problems.append(f"undocumented 5xx: {bad}")
    if summary["transport_errors"]:
        problems.append(f"{summary['transport_errors']} ordinary requests failed in transport")
    if summary["hostile_unexpected"]:
        problems.append(f"hostile requests answered unexpectedly: {summary['hostile_unexpected']}")
    if summary["hostile"].get("big_header:431", 0) == 0:
        problems.append("no oversized header was answered 431")
    if summary["missing_in_redis"] or not summary["flushed"]:
        problems.append(f"{summary['missing_in_redis']} accepted messages are not in Redis")
    expected = summary["http_sends_ok"] + summary["scheduled_sent"]
    if summary["records_in_redis"] != expected or summary["duplicates_in_redis"]:
        problems.append(f"{summary['records_in_redis']} records in Redis, expected {expected}")
    if summary["recorder_dropped"]:
        problems.append(f"{summary['recorder_dropped']} records dropped")
    if summary["foreign_jobs"] or summary["unreadable_jobs"]:
        problems.append(
            f"jobs the ordinary client never scheduled: {summary['foreign_jobs']}, "
            f"unreadable: {summary['unreadable_jobs']}"
        )
    if summary["webhook_missing"]:
        problems.append(
            f"{summary['webhook_missing']} of {summary['webhook_events']} recorded events never "
            f"reached the webhook receiver"
        )
    if summary["webhook_bad_signatures"] or summary["webhook_dead_lettered"]:
        problems.append(
            f"webhooks: {summary['webhook_bad_signatures']} bad signatures, "
            f"{summary['webhook_dead_lettered']} dead-lettered"
        )
    if summary["host_heavy_modules"]:
        problems.append(f"the host process imported {summary['host_heavy_modules']}")
    return problems


def _host_settings(tmp: str, faults: dict[str, Any]) -> dict[str, Any]:
    """``waclient.host.load_settings`` overrides: Redis through the fault proxy, fast
    reconnects, no rate limits in the way, the receiver as the one webhook endpoint (on
    loopback). The delivery settings are the host's defaults but for the attempts before the
    dead letters: with the receiver down a third of the time, about 1 event in 3**10 fails 10 times
    in a row (one in a run of 8,000 cycles); the dead letters have tests of their own
    (tests/test_webhooks_delivery.py), here every event must reach the receiver."""
    return {
        "api_key": KEY, "session_name": SESSION, "webhook_urls": faults["webhook_url"],
        "webhook_secret": faults["webhook_secret"], "webhook_allow_private": True,
        "webhook_max_attempts": 10**6,
        "transport": "isolated", "worker": "simulated", "redis_url": faults["url"],
        "session_dir": str(Path(tmp) / "session"), "bind": "127.0.0.1", "log_level": "warning",
        "backoff_initial": 0.01, "backoff_max": 0.05, "max_failures": 10**6,
        "send_rate": 10**6, "send_burst": 10**6, "schedule_rate": 10**6,
        "schedule_burst": 10**6, "scheduler_poll": 0.2, "memory_log_interval": 60,
        "memory_check_interval": 1.0,
    }  # fmt: skip


class _Controlled:
    """A process of this file with a control pipe: one JSON line each way per command; its
    first line says it is ready."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = _start(args, log, control=True)
        self.ready = self._read()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.log.stem} process exited; {self._tail()}") from None
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            raise RuntimeError(f"{self.log.stem} process exited ({code}); {self._tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.log.stem} process: {reply['error']}")
        return reply

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "its log ends:\n" + "\n".join(self.log.read_text().splitlines()[-30:])
        return "no log"

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)  # a graceful shutdown: the lifespan closes the host
        _stop(self.proc, signal.SIGTERM)


class _Driver:
    """The cycle, the host's channels, the outages (Redis, receiver), the peaks of host + worker
    RSS and of the webhook backlog."""

    def __init__(
        self,
        host: _Controlled,
        faults: _Controlled,
        loader: subprocess.Popen[str],
        requests_per_cycle: int,
        outages: tuple[int, int],
        receiver_outages: tuple[int, int],
    ) -> None:
        self.host, self.faults, self.loader = host, faults, loader
        self.per_cycle = requests_per_cycle
        self.every, self.lasts = outages
        self.receiver_every, self.receiver_lasts = receiver_outages
        self.done = 0
        self.cut = False
        self.outages = 0
        self.receiver_down = False
        self.receiver_outages = 0
        self.peak_backlog = 0
        self.peak_residue = 0
        self.peak_total = 0
        self.started = time.monotonic()
        self.seconds = 0.0
        self.ended = 0.0
        self._stats: dict[str, float] = {}
        self._stats_at = -1

    def cycle(self, i: int) -> None:
        reply = self.host.call("cycle", target=(i + 1) * self.per_cycle)
        self.peak_total = max(self.peak_total, reply["total_rss"])
        if self.loader.poll() is not None:
            raise RuntimeError(f"the load process exited ({self.loader.returncode})")
        phase = i % self.every
        if phase == self.every // 2 and not self.cut:
            self.faults.call("cut")
            self.cut, self.outages = True, self.outages + 1
        elif phase == self.every // 2 + self.lasts and self.cut:
            self.heal()
        down = i % self.receiver_every >= self.receiver_every - self.receiver_lasts
        if down != self.receiver_down:
            self.receiver(up=not down)
        self.done = i + 1

    def heal(self) -> None:
        if self.cut:
            self.faults.call("heal")
            self.cut = False

    def receiver(self, *, up: bool) -> None:
        """Kill the receiver (noting the backlog left from before), or start it again (noting
        the backlog its outage left)."""
        if up:
            reply = self.faults.call("receiver_up")
            self.peak_backlog = max(self.peak_backlog, reply["backlog"])
        else:
            reply = self.faults.call("receiver_down")
            self.peak_residue = max(self.peak_residue, reply["backlog"])
            self.receiver_outages += 1
        self.receiver_down = not up

    def probes(self) -> list[Any]:
        from harness.probes import FLOORS, RESOLUTIONS, Probe

        units = {"rss": "bytes", "heap": "bytes", "py_blocks": "blocks", "gc_objects": "objects"}
        out = []
        for name in HOST_CHANNELS:
            memory = name in units
            out.append(Probe(
                f"host_{name}", self._reader(name), units.get(name, name),
                None if memory else 0.0, 0.0 if memory else 1.0,
                f"the host process's {name}", FLOORS.get(name, 0.0), RESOLUTIONS.get(name, 0.0),
            ))  # fmt: skip
        rss = FLOORS["rss"], RESOLUTIONS["rss"]
        out.append(Probe("worker_rss", self._reader("worker_rss"), "bytes", None, 0.0,
                         "the isolated worker's RSS", *rss))  # fmt: skip
        out.append(Probe("total_rss", self._reader("total_rss"), "bytes", None, 0.0,
                         "host + worker RSS", *rss))  # fmt: skip
        return out

    def _reader(self, name: str) -> Callable[[], float]:
        def read() -> float:
            if self._stats_at != self.done:  # one round trip per sample, for every channel
                self._stats = self.host.call("stats")
                self._stats_at = self.done
            return float(self._stats[name])

        return read

    def stop(self) -> None:
        """Stop the load (it writes its tally), end the outages (Redis, receiver); once."""
        if not self.seconds:
            self.seconds = time.monotonic() - self.started
            _stop(self.loader, signal.SIGTERM)
        self.heal()
        if self.receiver_down:
            self.receiver(up=True)
        self.ended = self.ended or time.monotonic()


def _delivery(faults: _Controlled, host: _Controlled, ended: float) -> dict[str, Any]:
    """After the load ended (at ``ended``): wait until every event in the source streams reached
    the receiver (at most :data:`DRAIN_SECONDS`); the figures."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while (tally := faults.call("tally"))["webhook_missing"] and time.monotonic() < deadline:
        time.sleep(0.5)
    delivered = time.monotonic() - ended
    dispatcher = host.call("webhooks")
    return tally | {
        "webhook_failed_attempts": dispatcher["failed"],
        "webhook_dead_lettered": dispatcher["dead_lettered"],
        "webhook_redis_errors": dispatcher["redis_errors"],
        "webhook_delivered_seconds_after_load": round(delivered, 1),
    }


def _summary(
    drive: _Driver, load: dict[str, Any], final: dict[str, Any], stored: list[tuple[str, str]]
) -> dict[str, Any]:
    stored_set = {i for i, _ in stored}
    accepted = load["sent_ids"]
    answered = set(accepted)
    return {
        "cycles": drive.done,
        "seconds": round(drive.seconds, 1),
        "outages": drive.outages,
        "requests": load["requests"],
        "codes": load["codes"],
        "errors_5xx": load["errors_5xx"],
        "transport_errors": load["transport_errors"],
        "hostile": load["hostile"],
        "hostile_unexpected": load["hostile_unexpected"],
        "http_sends_ok": len(accepted),
        "records_in_redis": len(stored),
        "duplicates_in_redis": len(stored) - len(stored_set),
        "missing_in_redis": sum(1 for i in accepted if i not in stored_set),
        # Sends in Redis that no 200 answered (their texts), and the scheduler's sends stored.
        "unanswered_in_redis": [
            f"{t} ({load['refused_sends'].get(t, 'answered 200')})"
            for i, t in stored
            if t != ORDINARY_JOB[1] and i not in answered
        ][:20],
        "scheduled_in_redis": sum(1 for _, t in stored if t == ORDINARY_JOB[1]),
        "peak_total_rss_mib": round(drive.peak_total / 2**20, 1),
        "receiver_outages": drive.receiver_outages,
        "webhook_peak_backlog": drive.peak_backlog,
        "webhook_peak_backlog_at_outage": drive.peak_residue,
        **final,
    }


def _notes(s: dict[str, Any]) -> list[str]:
    hostile = sum(s["hostile"].values())
    return [
        f"host + worker RSS peak {s['peak_total_rss_mib']} MiB (after every cycle); high-water "
        f"marks: host {s['host_hwm_mib']} MiB, worker {s['worker_max_rss_mib']} MiB",
        f"{s['reconnects']} worker reconnects, {s['outages']} Redis outages, {s['requests']} "
        f"ordinary requests ({s['http_sends_ok']} sends accepted, {s['scheduled_sent']} "
        f"scheduled sent), {hostile} hostile ({s['hostile']})",
        f"Redis: {s['records_in_redis']} records, {s['missing_in_redis']} missing, "
        f"{s['duplicates_in_redis']} duplicates; HTTP guard: {s['http_guard']}",
        f"webhooks: receiver down {s['receiver_outages']} times; backlog in Redis as it came "
        f"back up to {s['webhook_peak_backlog']} events, left as it went down up to "
        f"{s['webhook_peak_backlog_at_outage']}; {s['webhook_events']} events recorded, "
        f"{s['webhook_distinct']} distinct webhook-ids received "
        f"({s['webhook_deliveries'] - s['webhook_distinct']} duplicates), "
        f"{s['webhook_missing']} missing, {s['webhook_bad_signatures']} bad signatures, "
        f"{s['webhook_failed_attempts']} failed attempts, {s['webhook_dead_lettered']} "
        f"dead-lettered; all delivered {s['webhook_delivered_seconds_after_load']} s after "
        f"the load stopped",
    ]


# -- processes -------------------------------------------------------------------------------------


def _start(args: list[str], log: Path, *, control: bool = False) -> subprocess.Popen[str]:
    """``python -P`` this file: the harness package is not importable from this directory."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE if control else subprocess.DEVNULL,
            stdout=subprocess.PIPE if control else out,
            stderr=out,
            text=True,
        )


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- the fault process -----------------------------------------------------------------------------


def faults_main(ids_file: str) -> int:
    """A real redis-server behind a FaultProxy (``cut`` refuses and resets, ``heal`` heals) and
    the webhook receiver, recording to ``ids_file`` (``receiver_down`` kills it,
    ``receiver_up`` starts it again; both answer the backlog in Redis just before; ``tally``
    counts what reached it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import redis

    from harness.faults import FaultProxy, RedisServer
    from harness.webhook_receiver import ReceiverProcess
    from waclient.webhooks.signing import generate_secret

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the receiver is stopped on the way
    receiver = ReceiverProcess(generate_secret(), ids_file)
    with RedisServer() as server, FaultProxy((server.host, server.port)) as proxy:
        server.start()
        direct = redis.Redis.from_url(server.url)
        try:
            receiver.start()
            print(json.dumps({"url": proxy.url, "direct": server.url, "webhook_url": receiver.url,
                              "webhook_secret": receiver.secret}), flush=True)  # fmt: skip
            for line in sys.stdin:
                cmd = json.loads(line)["cmd"]
                reply: dict[str, Any] = {"done": cmd}
                if cmd == "cut":
                    proxy.refuse(True)
                    proxy.reset()
                elif cmd == "heal":
                    proxy.heal()
                elif cmd == "receiver_down":
                    reply["backlog"] = _backlog(direct)
                    receiver.stop()
                elif cmd == "receiver_up":
                    reply["backlog"] = _backlog(direct)
                    receiver.start()
                elif cmd == "tally":
                    reply |= _tally(direct, receiver)
                elif cmd == "quit":
                    break
                print(json.dumps(reply), flush=True)
        finally:
            receiver.stop()
            direct.close()
    return 0


def _source_streams() -> dict[str, str]:
    """The streams the host's dispatcher delivers, by source name (``webhook-id`` prefix)."""
    from waclient.webhooks import default_sources

    return {source.name: source.stream for source in default_sources(SESSION)}


def _backlog(r: Redis) -> int:
    """Entries of the source streams that the webhook groups have pending or not read yet
    (counted, as Redis < 7 reports no ``lag``; up to :data:`BACKLOG_CAP` per stream)."""
    from redis.exceptions import ResponseError

    total = 0
    for stream in _source_streams().values():
        try:
            groups: Any = r.xinfo_groups(stream)
        except ResponseError:  # the stream does not exist yet
            continue
        for group in groups:
            if group["name"].startswith(b"webhook:"):
                after = b"(" + group["last-delivered-id"]
                unread: Any = r.xrange(stream, after, "+", count=BACKLOG_CAP)
                total += group["pending"] + len(unread)
    return int(total)


def _tally(r: Redis, receiver: ReceiverProcess) -> dict[str, Any]:
    """Every event now in the source streams (its ``webhook-id``) against what the receiver
    answered 2xx."""
    expected: set[str] = set()
    for name, stream in _source_streams().items():
        entries: Any = r.xrange(stream)
        expected.update(f"{name}_{entry_id.decode()}" for entry_id, _ in entries)
    received = receiver.ids()
    counts = receiver.counts()
    return {
        "webhook_events": len(expected),
        "webhook_missing": len(expected - received.keys()),
        "webhook_deliveries": counts.deliveries,
        "webhook_distinct": counts.distinct,
        "webhook_bad_signatures": counts.bad_signatures,
    }


# -- the host process ------------------------------------------------------------------------------


def host_main(settings_json: str) -> int:
    """Serve the host as ``python -m waclient.host`` does, with a control pipe on stdin/stdout."""
    import logging

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to the log, not into the protocol
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", force=True)  # fmt: skip
    # The scheduler logs every failed tick; an outage every few seconds would flood the log.
    logging.getLogger("waclient.scheduler").setLevel(logging.ERROR)
    asyncio.run(_HostControl(json.loads(settings_json), replies).run())
    return 0


class _HostControl:
    """The host process: the served app, and the commands of the control pipe."""

    def __init__(self, settings: dict[str, Any], replies: Any) -> None:
        self.settings = settings
        self.replies = replies
        self.served = 0
        self.changed = asyncio.Event()
        """Set at every answer started."""
        self.connected = asyncio.Event()

    async def run(self) -> None:
        import uvicorn

        from waclient import ClientState, StateChange
        from waclient.host import create_app, load_settings
        from waclient.host.http_guard import server_config

        settings = load_settings(**self.settings)
        server: uvicorn.Server | None = None

        def shutdown() -> None:
            if server is not None:
                server.should_exit = True

        app = create_app(settings, request_shutdown=shutdown)
        app.add_middleware(_Counting, control=self)
        self.config = server_config(app, settings, log_config=None)
        server = uvicorn.Server(self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        self.host = app.state.host
        client = self.host.client
        await client.wait_for(ClientState.CONNECTED, timeout=60)

        def on_state(change: StateChange) -> None:
            if change.new is ClientState.CONNECTED:
                self.connected.set()

        client.on(StateChange, on_state)
        self.reply({"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "pid": os.getpid()})
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if msg["cmd"] == "quit":
                    break
                try:
                    self.reply(await self.command(msg))
                except Exception as exc:
                    self.reply({"error": f"{msg['cmd']}: {type(exc).__name__}: {exc}"})
        finally:
            server.should_exit = True
            await serving

    def reply(self, msg: dict[str, Any]) -> None:
        self.replies.write(json.dumps(msg) + "\n")

    async def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["cmd"] == "cycle":
            return await self.cycle(int(msg["target"]))
        if msg["cmd"] == "stats":
            return self.stats()
        if msg["cmd"] == "final":
            return await self.final()
        if msg["cmd"] == "webhooks":
            return self.webhooks()
        raise ValueError(f"unknown command {msg['cmd']!r}")

    async def cycle(self, target: int) -> dict[str, Any]:
        """One worker reconnect, then at least ``target`` answers served in all."""
        from waclient import ClientState

        client = self.host.client
        generation = client.generation
        await self.host.transport.disconnect()
        async with asyncio.timeout(60):
            while not (client.generation > generation and client.state is ClientState.CONNECTED):
                self.connected.clear()
                await self.connected.wait()
            while self.served < target:
                self.changed.clear()
                await self.changed.wait()
        return {"total_rss": _rss() + self.host.transport.worker_rss}

    def stats(self) -> dict[str, float]:
        """The host process's channels, after a collection (as the harness samples its own)."""
        import gc

        from waclient.memory import c_heap_in_use

        gc.collect()
        rss, worker = _rss(), self.host.transport.worker_rss
        return {
            "rss": rss, "heap": c_heap_in_use() or 0, "py_blocks": sys.getallocatedblocks(),
            "gc_objects": len(gc.get_objects()),
            "listeners": self.host.client.listener_count(), "fds": len(os.listdir("/proc/self/fd")),
            "threads": _os_threads(), "tasks": len(asyncio.all_tasks()),
            "worker_rss": worker, "total_rss": rss + worker,
        }  # fmt: skip

    def webhooks(self) -> dict[str, Any]:
        """The dispatcher's counters."""
        dispatcher = self.host.webhooks
        assert dispatcher is not None, "the host runs no webhook dispatcher"
        st = dispatcher.statistics()
        names = ("delivered", "failed", "retried", "dead_lettered", "in_flight", "redis_errors")
        return {name: getattr(st, name) for name in names}

    async def final(self) -> dict[str, Any]:
        """After the load stopped: the last jobs fired, everything in Redis; the figures."""
        from waclient.host.http_guard import guard_stats

        host = self.host
        deadline = time.monotonic() + 60
        while await host.scheduler.count() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        # Jobs left wait for a retry: stop the scheduler, or one of them could be sent (and
        # recorded) after its count below is read (3 records in Redis that no count had).
        await host.scheduler.close()
        flushed = await host.outbound.flush(120) and await host.inbound.flush(120)
        left = await host.scheduler.count()
        worker = host.transport.statistics()
        scheduler = host.scheduler.statistics()
        guard = guard_stats(self.config)
        return {
            "reconnects": host.client.generation - 1,
            "requests_served": self.served,
            "scheduled_sent": scheduler.sent,
            "jobs_left": left,
            "foreign_jobs": sum(
                1 for j in await host.scheduler.list() if not _ordinary_job(j.chat, j.text)
            ),
            "unreadable_jobs": scheduler.unreadable,
            "flushed": flushed,
            "recorder_dropped": (
                host.outbound.statistics().dropped + host.inbound.statistics().dropped
            ),
            "worker_max_rss_mib": round(worker.max_rss / 2**20, 1),
            "worker_starts": worker.starts,
            "host_hwm_mib": round(_hwm() / 2**20, 1),
            "guard_peak_mib": round(host.guard.statistics().peak / 2**20, 1),
            "http_guard": guard.statistics().to_dict() if guard is not None else {},
            "host_heavy_modules": sorted(
                m for m in ("harness", "numpy", "scipy", "matplotlib", "memray") if m in sys.modules
            ),
        }


class _Counting:
    """ASGI middleware: counts answers started, and wakes the cycle waiting for them."""

    def __init__(self, app: Any, control: _HostControl) -> None:
        self.app, self.control = app, control

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        control = self.control

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                control.served += 1
                control.changed.set()
            await send(message)

        await self.app(scope, receive, counted)


def _ordinary_job(chat: str, text: str) -> bool:
    number = "".join(ch for ch in chat.partition("@")[0] if ch.isdigit())
    return (f"+{number}", text) == ORDINARY_JOB


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _os_threads() -> int:
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rindex(b")") + 2 :].split()[17])


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the load process ------------------------------------------------------------------------------


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


def load_main(url: str, out: str, seed: int) -> int:
    """Ordinary requests from 127.0.0.1 and hostile ones from other addresses until SIGTERM."""
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
        return _status(_read_to_eof(sock))


def _keep_slow(port: int, slow: list[socket.socket], tally: _Tally) -> None:
    """Keep :data:`SLOW_CONNECTIONS` connections holding an unfinished header; tally the
    answers of those the server closed (408 at its header timeout)."""
    import select

    if slow:
        readable, _, _ = select.select(slow, [], [], 0)
        for sock in readable:
            sock.settimeout(5)
            tally.answered_hostile("slow_header", _status(_read_to_eof(sock)))
            slow.remove(sock)
            sock.close()
    while len(slow) < SLOW_CONNECTIONS:
        sock = socket.socket()
        sock.bind((HOSTILE_ADDRESSES["slow_header"], 0))
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):
            sock.sendall(HEAD + b"X-Slow: ")
        slow.append(sock)


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def main(argv: list[str]) -> int:
    if argv[:1] == ["host"] and len(argv) == 2:
        return host_main(argv[1])
    if argv[:1] == ["faults"] and len(argv) == 2:
        return faults_main(argv[1])
    if argv[:1] == ["load"] and len(argv) == 4:
        return load_main(argv[1], argv[2], int(argv[3]))
    print("usage: host_soak.py faults IDS_FILE | host SETTINGS_JSON | load URL OUT SEED",
          file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
