"""The ``host`` scenario's rig, on the scenario process's side: it starts the fault, host and load
processes (:mod:`harness.host_soak`), drives the cycles, reads the host's channels over a control
pipe, cuts Redis every ``outage_every`` cycles, has the webhook receiver killed for the last
``receiver_cycles`` of every ``receiver_every``, and checks the run (:func:`problems_of`)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.host_soak.control import Controlled, start, stop
from harness.host_soak.load_process import HOSTILE_ANSWERS, KEY, ORDINARY_JOB

__all__ = [
    "ALLOWED_503", "HOSTILE_ANSWERS", "KEY", "RECEIVER_CYCLES", "RECEIVER_EVERY", "host_rig",
    "problems_of",
]  # fmt: skip

ALLOWED_503 = frozenset({"redis_unavailable", "not_connected", "busy"})
"""503s the host documents for what the soak does: Redis cut, WhatsApp reconnecting, busy."""
HOST_CHANNELS = ("rss", "heap", "py_blocks", "gc_objects", "listeners", "fds", "threads", "tasks")
RECEIVER_EVERY, RECEIVER_CYCLES = 30, 10
"""The webhook receiver is down for the last 10 cycles of every 30: a third of the run, in
outages of about a second at 10 cycles/s (the in-flight deliveries fail and wait for their
retry: 0.5-1 s, then 1-2 s with the host's default backoff), many of them within the warm-up
of a short run."""
SESSION = "waclient"
"""The host's session name: the prefix of its streams."""
DRAIN_SECONDS = 900.0
"""After the run, the longest wait for the receiver to have every event: a guard against a
hang. The backlog left can be large: the host delivers about 50 events/s here, while the load
records about as many and the receiver is down a third of the time (8,000 cycles left 20,000
events, delivered in 6 minutes)."""


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
        ids = str(Path(tmp) / "webhook-ids")
        faults = Controlled("fault_process.py", [ids, SESSION], Path(tmp) / "faults.log")
        host: Controlled | None = None
        drive: _Driver | None = None
        try:
            settings = _host_settings(tmp, faults.ready)
            args = json.dumps({"settings": settings, "ordinary_job": ORDINARY_JOB})
            host = Controlled("host_process.py", [args], Path(tmp) / "host.log")
            url = host.ready["url"]
            loader = start("load_process.py", [url, str(Path(tmp) / "load.json"), str(seed)],
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


class _Driver:
    """The cycle, the host's channels, the outages (Redis, receiver), the peaks of host + worker
    RSS and of the webhook backlog."""

    def __init__(
        self,
        host: Controlled,
        faults: Controlled,
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
                None, 0.0 if memory else 1.0,
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
            stop(self.loader, signal.SIGTERM)
        self.heal()
        if self.receiver_down:
            self.receiver(up=True)
        self.ended = self.ended or time.monotonic()


def _delivery(faults: Controlled, host: Controlled, ended: float) -> dict[str, Any]:
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
