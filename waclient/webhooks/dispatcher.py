"""``WebhookDispatcher``: delivers recorded events to webhook endpoints, at least once.

Each endpoint has its own consumer group (``webhook:<endpoint id>``) on every source stream and
on its replay stream. Its worker reads new entries with XREADGROUP, at most ``max_in_flight``
at a time, and delivers each as a signed JSON POST; the entry is XACKed only after a 2xx. A
failed attempt is retried after a capped exponential backoff with jitter while the entry stays
pending; after ``max_attempts`` it goes to the endpoint's dead-letter stream (and is XACKed
there, in one transaction). So:

- the backlog of an endpoint whose receiver is down is the part of the streams its group has not
  read yet: it stays in Redis, and this process holds at most ``max_in_flight`` deliveries per
  endpoint;
- a slow or dead receiver holds only its own endpoint's slots; the others keep going;
- several dispatchers (processes or machines) on one Redis share each group's work. A dispatcher
  that dies leaves its deliveries pending; any dispatcher (itself after a restart included)
  takes them over with XAUTOCLAIM once they have been idle ``claim_idle`` seconds. A live
  dispatcher keeps its own in-flight entries fresh (XCLAIM ... JUSTID) so they are not taken.
- failed attempts are counted in Redis per pending entry, so a takeover continues the count.

The ``webhook-id`` of an event is ``<source name>_<stream entry id>``: the same on every retry,
after a takeover and after a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from waclient.client import Backoff
from waclient.lifetime import Lifetime

from .endpoints import Endpoint, EndpointStore
from .events import Source, matches
from .keys import WebhookKeys, replay_dead_letters

if TYPE_CHECKING:  # httpx loads on the first dispatcher: the app's import stays light
    import httpx
from .signing import signature_headers
from .urls import PinnedURL, WebhookURLError, pin_url

__all__ = ["DispatcherStats", "EndpointStats", "WebhookDispatcher"]

log = logging.getLogger(__name__)

USER_AGENT = "waclient-webhooks"
MAX_RESPONSE_BYTES = 64 * 1024
"""Bytes of a response read (then dropped) so the connection can be reused."""
MAX_ERROR_LENGTH = 200
BACKLOG_SCAN_CAP = 100
"""On Redis < 7 (no ``lag``), unread entries are counted up to this many per stream."""
NOTIFY_COUNT = 64
_REDIS_BACKOFF = Backoff(initial=0.1, maximum=5.0)
"""The wait between steps that failed on Redis."""


@dataclass(frozen=True, slots=True)
class EndpointStats:
    id: str
    url: str
    delivered: int
    """Deliveries answered with a 2xx (and XACKed)."""
    failed: int
    """Attempts that failed (non-2xx, timeout, connection error, refused URL)."""
    retried: int
    """Failed attempts followed by another attempt."""
    dead_lettered: int
    """Events moved to the dead-letter stream by this dispatcher."""
    skipped: int
    """Entries acknowledged without a delivery (not in the endpoint's event filter, or
    unreadable)."""
    in_flight: int
    backlog: int
    """Entries of its group pending or not read yet (last measured)."""
    dead_letters: int
    """Entries in the endpoint's dead-letter stream (last measured)."""
    last_success: float | None
    """``time.time()`` of the last 2xx."""
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    consumer: str
    running: bool
    endpoints: dict[str, EndpointStats]
    delivered: int
    failed: int
    retried: int
    dead_lettered: int
    in_flight: int
    redis_errors: int
    """Steps that failed on Redis (the dispatcher backs off and retries)."""


class WebhookDispatcher(Lifetime):
    """Delivers the ``sources`` streams to every endpoint (``static`` and those in ``store``).

    - ``consumer``: this dispatcher's name in the consumer groups (default
      ``<hostname>-<pid>``); unique per running dispatcher.
    - ``http``: an ``httpx.AsyncClient`` to use (default: one of its own, closed with it);
      redirects are never followed.
    - ``timeout``: seconds for one attempt, connect to last byte.
    - ``max_in_flight``: deliveries in progress per endpoint (retries waiting included).
    - ``max_attempts``: attempts before an event goes to the dead-letter stream.
    - ``backoff``: the wait before each retry (capped exponential, jittered).
    - ``claim_idle``: seconds a pending delivery must be idle before another consumer takes it.
    - ``poll_interval``: the longest a worker waits for news before looking again.
    - ``notify_block``: seconds of each blocking XREAD that wakes the workers on new entries;
      keep it below the Redis client's socket timeout.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        sources: Sequence[Source],
        static: Sequence[Endpoint] = (),
        store: EndpointStore | None = None,
        key_prefix: str = "waclient",
        consumer: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_in_flight: int = 8,
        max_attempts: int = 10,
        backoff: Backoff | None = None,
        claim_idle: float = 60.0,
        poll_interval: float = 1.0,
        notify_block: float = 1.0,
        refresh_interval: float = 5.0,
        stats_interval: float = 5.0,
        url_recheck: float = 60.0,
        dead_maxlen: int = 100_000,
        allow_private: bool = False,
        close_timeout: float = 5.0,
    ) -> None:
        if max_in_flight < 1 or max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be >= 1")
        if min(timeout, claim_idle, poll_interval, notify_block, refresh_interval) <= 0:
            raise ValueError("timeouts and intervals must be > 0")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError("source names must be unique")
        self.redis = redis
        self._r: Any = redis
        """For commands whose replies are parsed here (redis-py types them as RESP2|RESP3)."""
        self.sources = list(sources)
        self.static = list(static)
        self.store = store
        self.keys = WebhookKeys(key_prefix)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(initial=1.0, maximum=300.0)
        self.claim_idle = claim_idle
        self.poll_interval = poll_interval
        self.notify_block = notify_block
        self.refresh_interval = refresh_interval
        self.stats_interval = stats_interval
        self.url_recheck = url_recheck
        self.dead_maxlen = dead_maxlen
        self.allow_private = allow_private
        self._own_http = http is None
        import httpx

        self.http = http or httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self.redis_errors = 0
        self.close_timeout = close_timeout
        """Seconds :meth:`close` waits, in all, for the workers to stop (all at once)."""
        self.close_overran = False
        """Whether the last close gave up waiting for a worker after ``close_timeout``."""
        self._workers: dict[str, _EndpointWorker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        """The manager and the notifier; the workers' tasks are spawned into this lifetime
        too (each worker keeps its own, to stop them when its endpoint goes)."""
        self._reconciling = asyncio.Lock()

    # -- lifetime --------------------------------------------------------------------------

    async def _open(self) -> None:
        """``start()``: start the workers. Returns once the endpoints known now have their
        groups (or Redis failed; the workers then keep trying)."""
        with contextlib.suppress(RedisError, OSError):
            await self._reconcile()
        self._tasks = [
            self.spawn(self._manage(), name="webhooks-manager"),
            self.spawn(self._notify(), name="webhooks-notifier"),
        ]

    async def _close(self) -> None:
        """``close()``: stop every worker at once (their acknowledgements sent), waiting
        ``close_timeout`` seconds in all, so one hostile receiver cannot hold the shutdown;
        deliveries in progress stay pending in Redis (delivered again later); an own HTTP
        client is closed (also if never started)."""
        for task in self._tasks:
            task.cancel()
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                async with self._reconciling:  # a refresh under way ends first
                    workers = list(self._workers.values())
                    await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        except TimeoutError:
            self.close_overran = True
            log.warning("webhooks: workers still stopping after %g s; left", self.close_timeout)
        if self._own_http:
            await self.http.aclose()

    # -- public API ------------------------------------------------------------------------

    def statistics(self) -> DispatcherStats:
        per = {w.endpoint.id: w.stats() for w in self._workers.values()}
        total = per.values()
        return DispatcherStats(
            consumer=self.consumer,
            running=self.is_open,
            endpoints=per,
            delivered=sum(s.delivered for s in total),
            failed=sum(s.failed for s in total),
            retried=sum(s.retried for s in total),
            dead_lettered=sum(s.dead_lettered for s in total),
            in_flight=sum(s.in_flight for s in total),
            redis_errors=self.redis_errors + sum(w.redis_errors for w in self._workers.values()),
        )

    async def refresh(self) -> None:
        """Reload the stored endpoints now (after one was added or deleted); nothing unless
        the dispatcher is running."""
        await self._reconcile()

    async def replay(self, endpoint_id: str, *, limit: int | None = None) -> int:
        """Send the endpoint's dead letters back for delivery; returns how many."""
        moved = await replay_dead_letters(self.redis, self.keys, endpoint_id, limit=limit)
        worker = self._workers.get(endpoint_id)
        if worker is not None:
            worker.wake.set()
        return moved

    @property
    def streams(self) -> list[str]:
        return [s.stream for s in self.sources]

    # -- endpoints -------------------------------------------------------------------------

    async def _manage(self) -> None:
        failures = 0
        while await self.sleep(self.refresh_interval):
            try:
                await self._reconcile()
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                self.redis_errors += 1
                if failures == 1:
                    log.warning("webhooks: cannot load endpoints (%s); retrying", exc)

    async def _reconcile(self) -> None:
        async with self._reconciling:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        if not self.is_open:
            return
        wanted = {e.id: e for e in self.static}
        if self.store is not None:
            for endpoint in await self.store.list():
                wanted.setdefault(endpoint.id, endpoint)
        for endpoint_id in [i for i in self._workers if i not in wanted]:
            await self._workers.pop(endpoint_id).stop()
        for endpoint in wanted.values():
            worker = self._workers.get(endpoint.id)
            if worker is None:
                worker = _EndpointWorker(self, endpoint)
                await worker.prepare()
                if not self.is_open:
                    return
                self._workers[endpoint.id] = worker
                worker.start()
            else:
                worker.endpoint = endpoint

    # -- waking the workers ----------------------------------------------------------------

    async def _notify(self) -> None:
        """One blocking XREAD on the source streams for all workers: each new entry wakes
        them, so idle workers need no polling and hold no Redis connection."""
        last: dict[str, str] = {}
        failures = 0
        while self.is_open:
            try:
                if not last:
                    last = await self._stream_tips()
                reply = await self._r.xread(
                    last, count=NOTIFY_COUNT, block=int(self.notify_block * 1000)
                )
                failures = 0
            except (RedisError, OSError):
                failures += 1
                self.redis_errors += 1
                last = {}
                if not await self.sleep(_REDIS_BACKOFF.delay(failures)):
                    return
                continue
            if reply:
                for stream, entries in reply:
                    last[_text(stream)] = _text(entries[-1][0])
                for worker in self._workers.values():
                    worker.wake.set()

    async def _stream_tips(self) -> dict[str, str]:
        tips: dict[str, str] = {}
        for stream in self.streams:
            newest = await self._r.xrevrange(stream, count=1)
            tips[stream] = _text(newest[0][0]) if newest else "0-0"
        return tips


@dataclass(slots=True)
class _Delivery:
    stream: str
    entry_id: str
    webhook_id: str
    type: str
    body: bytes
    attempts: int = 0

    @property
    def key(self) -> str:
        return f"{self.stream}|{self.entry_id}"


@dataclass(slots=True)
class _Counters:
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    backlog: int = 0
    dead_letters: int = 0
    last_success: float | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _UrlCheck:
    url: str = ""
    checked: float = float("-inf")
    refused: str | None = None
    target: PinnedURL | None = None


class _EndpointWorker:
    """Reads one endpoint's group and runs its deliveries, in tasks of the dispatcher's
    lifetime (:meth:`stop` ends them when the endpoint goes, the dispatcher's close too)."""

    def __init__(self, dispatcher: WebhookDispatcher, endpoint: Endpoint) -> None:
        self.d = dispatcher
        self.r: Any = dispatcher.redis
        """See ``WebhookDispatcher._r``."""
        self.endpoint = endpoint
        self.group = dispatcher.keys.group(endpoint.id)
        self.replay_stream = dispatcher.keys.replay(endpoint.id)
        self.attempts_key = dispatcher.keys.attempts(endpoint.id)
        self.sources: dict[str, Source] = {s.stream: s for s in dispatcher.sources}
        self.streams = [*self.sources, self.replay_stream]
        self.wake = asyncio.Event()
        self.stopping = False
        self.counters = _Counters()
        self.redis_errors = 0
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._measurer: asyncio.Task[None] | None = None
        self._acks: list[_Delivery] = []
        self._url = _UrlCheck()
        self._turn = 0

    def start(self) -> None:
        self._task = self.d.spawn(self._run(), name=f"webhooks-{self.endpoint.id}")
        self._measurer = self.d.spawn(
            self._measure_every(), name=f"webhooks-{self.endpoint.id}-stats"
        )

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancellation swallowed inside a library call (seen
        # with redis-py on 3.11) must not keep a loop running.
        self.stopping = True
        self.wake.set()
        tasks = [
            t for t in (self._task, self._measurer, *self._in_flight.values()) if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._flush_acks()

    def stats(self) -> EndpointStats:
        c = self.counters
        return EndpointStats(
            id=self.endpoint.id,
            url=self.endpoint.url,
            delivered=c.delivered,
            failed=c.failed,
            retried=c.retried,
            dead_lettered=c.dead_lettered,
            skipped=c.skipped,
            in_flight=len(self._in_flight),
            backlog=c.backlog,
            dead_letters=c.dead_letters,
            last_success=c.last_success,
            last_error=c.last_error,
        )

    async def prepare(self) -> None:
        """Create the endpoint's groups: new entries only on the sources, everything on its
        replay stream. An existing group keeps its position."""
        for stream in self.streams:
            start = "0" if stream == self.replay_stream else "$"
            try:
                await self.r.xgroup_create(stream, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        next_claim = 0.0
        prepared = True
        while not self.stopping:
            try:
                if not prepared:
                    await self.prepare()
                    prepared = True
                now = time.monotonic()
                if now >= next_claim:
                    await self._heartbeat()
                    await self._claim()
                    next_claim = now + self.d.claim_idle / 3
                self.wake.clear()
                await self._flush_acks()
                read, asked = await self._read_new()
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                self.redis_errors += 1
                if "NOGROUP" in str(exc):
                    prepared = False  # the stream or the group is gone: create them again
                if failures == 1:
                    log.warning("webhooks %s: Redis failed (%s); retrying", self.endpoint.id, exc)
                if not await self.d.sleep(_REDIS_BACKOFF.delay(failures)):
                    return
                continue
            if asked == 0 or read < asked:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set, and the worker would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.d.poll_interval):
                        await self.wake.wait()

    def _free(self) -> int:
        return self.d.max_in_flight - len(self._in_flight)

    async def _read_new(self) -> tuple[int, int]:
        """Read up to the free slots of new entries, stream by stream (starting with a
        different stream each time). Returns (entries read, entries asked for)."""
        asked = read = 0
        n = len(self.streams)
        self._turn = (self._turn + 1) % n
        for i in range(n):
            free = self._free()
            if free <= 0:
                break
            stream = self.streams[(self._turn + i) % n]
            reply = await self.r.xreadgroup(self.group, self.d.consumer, {stream: ">"}, count=free)
            asked += free
            entries = reply[0][1] if reply else []
            read += len(entries)
            await self._take(stream, entries)
        return read, asked

    async def _claim(self) -> None:
        """Take over entries idle past ``claim_idle`` (a dead consumer's, or our own that
        were left behind), and forget long-idle empty consumers."""
        idle_ms = int(self.d.claim_idle * 1000)
        for stream in self.streams:
            cursor = "0-0"
            while self._free() > 0:
                reply = await self.r.xautoclaim(
                    stream,
                    self.group,
                    self.d.consumer,
                    idle_ms,
                    start_id=cursor,
                    count=self._free(),
                )
                cursor = _text(reply[0])
                claimed = [e for e in reply[1] if f"{stream}|{_text(e[0])}" not in self._in_flight]
                await self._take(stream, claimed, attempts=True)
                if cursor == "0-0":
                    break
            await self._forget_idle_consumers(stream, idle_ms * 10)

    async def _forget_idle_consumers(self, stream: str, idle_ms: int) -> None:
        consumers = await self.r.xinfo_consumers(stream, self.group)
        for c in consumers:
            name = _text(c["name"])
            if name != self.d.consumer and c["pending"] == 0 and c["idle"] > idle_ms:
                await self.r.xgroup_delconsumer(stream, self.group, name)

    async def _heartbeat(self) -> None:
        """Reset the idle time of our in-flight entries so no one takes them over."""
        by_stream: dict[str, list[str]] = {}
        for key in self._in_flight:
            stream, entry_id = key.rsplit("|", 1)
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            await self.r.xclaim(stream, self.group, self.d.consumer, 0, ids, justid=True)

    async def _measure_every(self) -> None:
        """Refresh the backlog and dead-letter figures every ``stats_interval`` s, off the
        delivery loop."""
        while not self.stopping:
            with contextlib.suppress(RedisError, OSError):
                await self._measure()
            if not await self.d.sleep(self.d.stats_interval):
                return

    async def _measure(self) -> None:
        backlog = 0
        for stream in self.streams:
            backlog += await self._group_backlog(stream)
        self.counters.backlog = backlog
        self.counters.dead_letters = int(await self.r.xlen(self.d.keys.dead(self.endpoint.id)))

    async def _group_backlog(self, stream: str) -> int:
        groups = await self.r.xinfo_groups(stream)
        for g in groups:
            if _text(g["name"]) != self.group:
                continue
            pending = int(g["pending"])
            lag = g.get("lag")
            if lag is not None:
                return pending + int(lag)
            after = "(" + _text(g["last-delivered-id"])
            unread = await self.r.xrange(stream, min=after, count=BACKLOG_SCAN_CAP)
            return pending + len(unread)
        return 0

    # -- entries -> deliveries -------------------------------------------------------------

    async def _take(self, stream: str, entries: Sequence[Any], *, attempts: bool = False) -> None:
        """Start a delivery for each entry this endpoint wants; acknowledge the others."""
        deliveries: list[_Delivery] = []
        skip: list[str] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            delivery = self._delivery(stream, entry_id, fields)
            if delivery is None or not matches(delivery.type, self.endpoint.events):
                skip.append(entry_id)
            else:
                deliveries.append(delivery)
        if skip:
            await self.r.xack(stream, self.group, *skip)
            if attempts:
                keys = [f"{stream}|{i}" for i in skip]
                await self.r.hdel(self.attempts_key, *keys)
            self.counters.skipped += len(skip)
        if attempts and deliveries:
            counts = await self.r.hmget(self.attempts_key, [d.key for d in deliveries])
            for d, count in zip(deliveries, counts, strict=True):
                d.attempts = int(count or 0)
        if self.stopping:
            return  # read but not started: pending in Redis, taken over after claim_idle
        for d in deliveries:
            self._in_flight[d.key] = self.d.spawn(
                self._deliver(d), name=f"webhook-{self.endpoint.id}-{d.entry_id}"
            )

    def _delivery(
        self, stream: str, entry_id: str, fields: Mapping[bytes, bytes] | None
    ) -> _Delivery | None:
        if not fields:
            return None  # trimmed from the stream (MAXLEN) while pending
        try:
            if stream == self.replay_stream:
                return _Delivery(
                    stream,
                    entry_id,
                    fields[b"webhook_id"].decode(),
                    fields[b"type"].decode(),
                    fields[b"body"],
                )
            source = self.sources[stream]
            event = source.decode(fields)
            return _Delivery(
                stream, entry_id, f"{source.name}_{entry_id}", event.type, event.body()
            )
        except Exception as exc:
            log.warning(
                "webhooks %s: unreadable entry %s %s skipped: %r",
                self.endpoint.id,
                stream,
                entry_id,
                exc,
            )
            return None

    # -- one delivery ----------------------------------------------------------------------

    async def _deliver(self, d: _Delivery) -> None:
        try:
            while not self.stopping:
                error = await self._attempt(d)
                if error is None:
                    self._acknowledge(d)
                    return
                d.attempts += 1
                self.counters.failed += 1
                self.counters.last_error = error
                if d.attempts >= self.d.max_attempts:
                    await self._dead_letter(d, error)
                    return
                self.counters.retried += 1
                with contextlib.suppress(RedisError, OSError):
                    await self.r.hset(self.attempts_key, d.key, d.attempts)
                if not await self.d.sleep(self.d.backoff.delay(d.attempts)):
                    return  # closing: still pending in Redis
        except (RedisError, OSError) as exc:
            # Still pending in Redis: taken over (by us or another dispatcher) after claim_idle.
            self.redis_errors += 1
            log.debug("webhooks %s: %s left pending: %s", self.endpoint.id, d.key, exc)
        finally:
            self._in_flight.pop(d.key, None)
            # Read again once half the slots are free (or all): one XREADGROUP per several
            # deliveries instead of one per delivery.
            if self._free() * 2 >= self.d.max_in_flight or not self._in_flight:
                self.wake.set()

    async def _attempt(self, d: _Delivery) -> str | None:
        """One signed POST; None after a 2xx, else what went wrong."""
        import httpx

        endpoint = self.endpoint
        check = await self._check_url(endpoint.url)
        if check.target is None:
            return check.refused
        target = check.target
        headers = signature_headers(d.webhook_id, d.body, endpoint.secrets)
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        headers.update(target.headers)
        try:
            async with asyncio.timeout(self.d.timeout):
                async with self.d.http.stream(
                    "POST", target.url, content=d.body, headers=headers,
                    timeout=self.d.timeout, extensions=target.extensions,
                ) as response:  # fmt: skip
                    status = response.status_code
                    await _drain(response)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return _describe(exc)
        except Exception as exc:  # a failed attempt all the same: retried, then dead-lettered
            log.warning("webhooks %s: unexpected error delivering %s", endpoint.id, d.key,
                        exc_info=True)  # fmt: skip
            return _describe(exc)
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _check_url(self, url: str) -> _UrlCheck:
        """Where to send to ``url`` now, or why not (re-checked every ``url_recheck`` s): the
        address checked then is the one connected to until the next check."""
        check = self._url
        now = time.monotonic()
        if check.url != url or now - check.checked >= self.d.url_recheck:
            try:
                target = await pin_url(url, allow_private=self.d.allow_private)
                self._url = _UrlCheck(url, now, None, target)
            except WebhookURLError as exc:
                self._url = _UrlCheck(url, now, f"refused URL: {exc}")
        return self._url

    def _acknowledge(self, d: _Delivery) -> None:
        """Queue the XACK of a delivered entry; the worker loop sends them in one round trip
        per wake-up (:meth:`_flush_acks`). Until then the entry is pending: a crash in between
        delivers it again (at least once)."""
        self._acks.append(d)
        self.counters.last_success = time.time()

    async def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if not acks:
            return
        by_stream: dict[str, list[str]] = {}
        for d in acks:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        retried = [d.key for d in acks if d.attempts]
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, self.group, *ids)
                if retried:
                    pipe.hdel(self.attempts_key, *retried)
                await pipe.execute()
        except BaseException:
            self._acks = acks + self._acks
            raise
        self.counters.delivered += len(acks)

    async def _dead_letter(self, d: _Delivery, error: str) -> None:
        fields: dict[Any, Any] = {
            "webhook_id": d.webhook_id,
            "type": d.type,
            "body": d.body,
            "stream": d.stream,
            "entry": d.entry_id,
            "attempts": d.attempts,
            "error": error,
            "at": repr(time.time()),
        }
        dead = self.d.keys.dead(self.endpoint.id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xadd(dead, fields, maxlen=self.d.dead_maxlen, approximate=True)
            pipe.xack(d.stream, self.group, d.entry_id)
            pipe.hdel(self.attempts_key, d.key)
            await pipe.execute()
        self.counters.dead_lettered += 1
        log.warning(
            "webhooks %s: %s dead-lettered after %d attempts (%s)",
            self.endpoint.id,
            d.webhook_id,
            d.attempts,
            error,
        )


async def _drain(response: httpx.Response) -> None:
    """Read (and drop) up to MAX_RESPONSE_BYTES of the body; more closes the connection."""
    if response.is_stream_consumed:  # a transport that answered with a body already read
        return
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > MAX_RESPONSE_BYTES:
            break


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    name = type(exc).__name__
    return f"{name}: {detail}"[:MAX_ERROR_LENGTH] if detail else name


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
