"""Inbound and outbound message recorders to Redis Streams that survive Redis outages.

A record goes through three bounded places, oldest first:

1. the Redis write in flight (one batch of at most ``batch_size``),
2. the on-disk :class:`~waclient.spool.Spool` (bounded by records and bytes),
3. the in-memory buffer (at most ``max_buffer`` records).

Every record gets a sequence number when it is recorded; the spool is ordered by it, so a batch
that fails in flight after newer records were spooled still drains before them. The writer
always takes the in-flight batch first, then the spool, then memory: records reach Redis in the
order they were recorded, hence in order per chat.

While Redis is up, the writer sends batches from memory as one script call each (pipelined in
the sense that one round trip carries the whole batch). When a write fails, Redis is marked
down: the failed batch goes to the spool, and so does everything recorded during the outage
(promptly, in batches, on a thread). The writer waits a capped exponential backoff, probes with
PING, and when Redis answers it drains the spool in order, then memory. A caller of
:meth:`Recorder.record` waits only while the buffer is full; if the writer is stuck in a slow
write for longer than ``spill_after`` seconds, memory is spilled to the spool to make room.

Idempotence: each record is written by a Lua script that does ``SET dedupe-key NX EX ttl`` and
only then ``XADD`` to the stream, atomically. The dedupe key is derived from the direction, the
chat and the WhatsApp message id. A batch whose reply was lost (reset, timeout, kill) is sent
again and its records that did land are skipped and counted as ``duplicates``. See docs/redis.md.

What cannot be kept (the spool is full, or there is no spool) is counted as ``dropped`` in
:meth:`Recorder.statistics` and logged once per outage; the process keeps working.

An observer learns when an outage begins and ends through ``on_outage``: it is called with a
:class:`RecorderOutage` when a write first fails (``ended`` is None) and again when Redis answers
(with the duration, and the records spooled and dropped meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from waclient.events import MessageEv
from waclient.handlers import Subscription
from waclient.lifetime import Lifetime, LifetimeError
from waclient.messages import jid_to_str, message_text
from waclient.redis import RedisHealth
from waclient.spool import Spool
from waclient.transports.base import SentMessage

if TYPE_CHECKING:
    from waclient.client import Client

__all__ = [
    "InboundRecorder",
    "MessageRecord",
    "OutageListener",
    "OutboundRecorder",
    "Recorder",
    "RecorderClosedError",
    "RecorderOutage",
    "RecorderStats",
    "jid_to_str",
]

log = logging.getLogger(__name__)

Direction = Literal["in", "out"]

# KEYS[1] = stream, KEYS[2..n+1] = one dedupe key per record.
# ARGV[1] = dedupe ttl (s), ARGV[2] = stream MAXLEN (approximate), ARGV[3] = fields per record
# (names and values), ARGV[4..] = the records' fields, one record after the other.
_WRITE_SCRIPT = """
local ttl = ARGV[1]
local maxlen = ARGV[2]
local nf = tonumber(ARGV[3])
local written, dupes = 0, 0
local pos = 4
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, pos, pos + nf - 1))
    written = written + 1
  else
    dupes = dupes + 1
  end
  pos = pos + nf
end
return {written, dupes}
"""

_FIELD_NAMES = ("id", "chat", "sender", "text", "ts", "dir")


class RecorderClosedError(LifetimeError):
    """The recorder was closed; it takes no more records (a :class:`LifetimeError`, as a
    ``start()`` after ``close()`` raises)."""


def _direction(value: object) -> Direction:
    if value == "in":
        return "in"
    if value == "out":
        return "out"
    raise ValueError(f"bad direction: {value!r}")


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message as stored in the stream."""

    id: str
    chat: str
    sender: str
    text: str
    timestamp: int
    direction: Direction

    def fields(self) -> list[str]:
        """The stream entry's field names and values, interleaved."""
        values = (self.id, self.chat, self.sender, self.text, str(self.timestamp), self.direction)
        out: list[str] = []
        for name, value in zip(_FIELD_NAMES, values, strict=True):
            out += (name, value)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(
            [self.id, self.chat, self.sender, self.text, self.timestamp, self.direction],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageRecord:
        id_, chat, sender, text, ts, direction = json.loads(data)
        return cls(str(id_), str(chat), str(sender), str(text), int(ts), _direction(direction))

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> MessageRecord:
        """Rebuild a record from a stream entry (as read with XRANGE/XREAD)."""
        get: dict[str, str] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls(
            get["id"],
            get["chat"],
            get["sender"],
            get["text"],
            int(get["ts"]),
            _direction(get["dir"]),
        )


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """A snapshot of a recorder, for logs and /health/redis."""

    stream: str
    up: bool
    """False from a failed write until Redis answers again."""
    buffered: int
    """Records in memory, including the batch in flight."""
    spooled: int
    """Records in the on-disk spool now."""
    dropped: int
    """Records refused because the spool was full (or there is no spool)."""
    recorded: int
    """Records handed to the recorder."""
    written: int
    """Records added to the stream."""
    duplicates: int
    """Records skipped because their dedupe key was already there (a replay)."""
    replayed: int
    """Records written from the spool (written after an outage or a restart)."""
    spooled_total: int
    """Records ever moved to the spool."""
    outages: int
    """Up -> down transitions."""
    last_error: str | None
    down_since: float | None
    """``time.time()`` when the current outage began, else None."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class RecorderOutage:
    """A recorder's Redis outage: passed to ``on_outage`` when it begins and when it ends."""

    stream: str
    direction: Direction
    began: float
    """``time.time()`` of the first failed write."""
    ended: float | None
    """``time.time()`` when Redis answered again; None in the notice of its beginning."""
    error: str
    """The error that began it."""
    spooled: int
    """Records moved to the spool during the outage (0 when it begins)."""
    dropped: int
    """Records dropped during the outage (0 when it begins)."""

    @property
    def duration(self) -> float | None:
        """Seconds from the first failed write to Redis answering; None while it lasts."""
        return None if self.ended is None else self.ended - self.began

    def to_dict(self) -> dict[str, Any]:
        """Its fields; the end's (``ended``, ``duration``, ``spooled``, ``dropped``) only once
        it has ended."""
        out: dict[str, Any] = {
            "stream": self.stream,
            "direction": self.direction,
            "began": self.began,
            "error": self.error,
        }
        if self.ended is not None:
            out.update(
                ended=self.ended,
                duration=self.duration,
                spooled=self.spooled,
                dropped=self.dropped,
            )
        return out


OutageListener = Callable[[RecorderOutage], None]
"""Called on the event loop when an outage begins and when it ends; it must not block."""


class Recorder(Lifetime):
    """Writes :class:`MessageRecord` s to a Redis stream; bounded through any outage.

    - ``stream``: the stream key (default ``{key_prefix}:messages:{direction}``), trimmed with
      ``MAXLEN ~ maxlen``.
    - ``spool``: a :class:`Spool`, or a path (then the recorder opens and closes it), or None
      (no disk: what does not fit in memory during an outage is dropped and counted).
    - ``max_buffer``: records kept in memory; ``batch_size``: records per Redis call.
    - ``dedupe_ttl``: seconds a record's dedupe key lives; a replay later than that would
      write the record again. It should exceed the longest outage the spool can hold.
    - ``retry_initial`` / ``retry_max``: the backoff between probes while Redis is down.
    - ``spill_after``: seconds a full buffer waits for a stuck write before spilling to disk.
    - ``on_outage``: told when an outage begins and ends (:class:`RecorderOutage`); what it
      raises is logged, never propagated to the writer.
    """

    direction: ClassVar[Direction] = "in"

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str | None = None,
        spool: Spool | str | os.PathLike[str] | None = None,
        key_prefix: str = "waclient",
        max_buffer: int = 5_000,
        batch_size: int = 256,
        spill_batch: int = 512,
        maxlen: int = 1_000_000,
        dedupe_ttl: int = 7 * 24 * 3600,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        probe_timeout: float = 1.0,
        spill_after: float = 0.25,
        on_outage: OutageListener | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1 or spill_batch < 1:
            raise ValueError("max_buffer, batch_size and spill_batch must be >= 1")
        if maxlen < 1 or dedupe_ttl < 1:
            raise ValueError("maxlen and dedupe_ttl must be >= 1")
        if not 0 < retry_initial <= retry_max:
            raise ValueError("retry needs 0 < retry_initial <= retry_max")
        if spill_after <= 0:
            raise ValueError("spill_after must be > 0")
        self.redis = redis
        self.key_prefix = key_prefix
        self.stream = stream or f"{key_prefix}:messages:{self.direction}"
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.spill_batch = spill_batch
        self.maxlen = maxlen
        self.dedupe_ttl = dedupe_ttl
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.spill_after = spill_after
        self.on_outage = on_outage
        self.health = RedisHealth(redis, timeout=probe_timeout)
        if spool is None or isinstance(spool, Spool):
            self.spool = spool
            self._owns_spool = False
        else:
            self.spool = Spool(spool)
            self._owns_spool = True
        self._script = redis.register_script(_WRITE_SCRIPT)
        self._seq = self.spool.last_seq if self.spool is not None else 0
        self._mem: deque[tuple[int, MessageRecord]] = deque()
        self._inflight: list[tuple[int, MessageRecord]] = []
        self._subs: list[Subscription[Any]] = []
        # counters
        self._recorded = 0
        self._written = 0
        self._duplicates = 0
        self._replayed = 0
        self._spooled_total = 0
        self._dropped = 0
        self._spilling = 0
        self._outages = 0
        self._down = False
        self._down_since: float | None = None
        self._outage: RecorderOutage | None = None
        """The notice of the current outage's beginning."""
        self._outage_from = (0, 0)
        """``spooled_total`` and ``dropped`` when the current outage began."""
        self._last_error: str | None = None
        self._refusal_logged = False
        # machinery (the tasks are spawned by start())
        self._tasks: list[asyncio.Task[None]] = []
        """The writer and the spiller, once started."""
        self._writing: asyncio.Task[tuple[int, int] | BaseException] | None = None
        """The write in flight (a task of its own, so that a close can abandon it)."""
        self._stopping = False
        """Set by close() once it has flushed what it could: the writer and spiller end."""
        self._close_timeout = 5.0
        self._work = asyncio.Event()
        self._space = asyncio.Event()
        self._progress = asyncio.Event()
        self._spill_wanted = asyncio.Event()
        self._force_spill = False
        self._spool_lock = asyncio.Lock()

    # -- public API -------------------------------------------------------------------------

    idempotent_start = True
    """``start()`` starts the writer (and spill) tasks once; ``record()`` calls it too."""

    async def _open(self) -> None:
        name = f"waclient-recorder-{self.direction}"
        self._tasks = [
            self.spawn(self._writer(), name=f"{name}-writer"),
            self.spawn(self._spiller(), name=f"{name}-spiller"),
        ]
        self._work.set()  # a spool left by an earlier process drains first

    async def record(self, rec: MessageRecord) -> None:
        """Take a record. Waits only while the memory buffer is full."""
        if self.closing:
            raise RecorderClosedError("recorder is closed")
        if not self.is_open:
            await self.start()
        while len(self._mem) >= self.max_buffer:
            self._space.clear()
            if self._down:
                self._spill_wanted.set()
            try:
                await asyncio.wait_for(self._space.wait(), self.spill_after)
            except TimeoutError:
                # The writer is stuck in a slow write: make room on disk.
                self._force_spill = True
                self._spill_wanted.set()
            if self.closing:
                raise RecorderClosedError("recorder closed while waiting for buffer space")
        self._seq += 1
        self._mem.append((self._seq, rec))
        self._recorded += 1
        self._work.set()
        if self._down:
            self._spill_wanted.set()

    def to_record(self, event: Any) -> MessageRecord:
        """Turn the event this recorder listens to into a record (subclasses)."""
        raise NotImplementedError

    async def handle(self, event: Any) -> None:
        """The handler :meth:`attach` registers: ``record(to_record(event))``."""
        await self.record(self.to_record(event))

    def statistics(self) -> RecorderStats:
        return RecorderStats(
            stream=self.stream,
            up=not self._down,
            buffered=len(self._mem) + len(self._inflight) + self._spilling,
            spooled=len(self.spool) if self.spool is not None and not self.spool.closed else 0,
            dropped=self._dropped,
            recorded=self._recorded,
            written=self._written,
            duplicates=self._duplicates,
            replayed=self._replayed,
            spooled_total=self._spooled_total,
            outages=self._outages,
            last_error=self._last_error,
            down_since=self._down_since,
        )

    @property
    def memory_bound(self) -> int:
        """The most records this recorder holds in memory at any time: the buffer, one batch
        in flight to Redis, and one batch on its way to the spool."""
        return self.max_buffer + self.batch_size + min(self.spill_batch, self.max_buffer)

    @property
    def pending(self) -> int:
        """Records not yet in Redis (memory, in flight and spool)."""
        spooled = len(self.spool) if self.spool is not None and not self.spool.closed else 0
        return len(self._mem) + len(self._inflight) + self._spilling + spooled

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record taken so far is in Redis (or was dropped).

        Returns False if ``timeout`` seconds pass first (for example while Redis is down), or
        if the writer ended first (the recorder is closing) with records still pending.
        """
        self._work.set()  # records put in the spool from outside are noticed too
        try:
            async with asyncio.timeout(timeout):
                while self.pending:
                    self._progress.clear()
                    if not self.pending:
                        break
                    if self._tasks and self._tasks[0].done():
                        return False  # no writer any more: nothing will change
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking records; write what can be written within ``timeout`` seconds (no wait
        while Redis is down; the writer stops at the first failure); spool the rest; close an
        owned spool. Idempotent."""
        if not self.closing:
            self._close_timeout = timeout
        await super().close()

    async def _close(self) -> None:
        for sub in self._subs:
            sub.remove()
        self._subs.clear()
        self._space.set()
        if self._tasks:
            if not self._down:
                await self.flush(self._close_timeout)
            self._stopping = True
            if self._writing is not None:
                self._writing.cancel()  # a write still in flight: its batch is spooled
            self._work.set()
            self._spill_wanted.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        leftovers = self._inflight + list(self._mem)
        self._inflight, self._mem = [], deque()
        if leftovers:
            await self._spill(leftovers)
        if self.spool is not None and self._owns_spool:
            await asyncio.to_thread(self.spool.close)

    # -- wiring to a Client -----------------------------------------------------------------

    def attach(self, client: Client) -> Subscription[Any]:
        """Register :meth:`handle` on ``client`` for the client's life; returns the subscription.

        ``close()`` removes it too.
        """
        raise NotImplementedError

    # -- the writer -------------------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            await self._write_until_stopped()
        finally:
            self._progress.set()  # a flush waiting for it learns that it ended

    async def _write_until_stopped(self) -> None:
        delay = self.retry_initial
        while True:
            try:
                if self._down:
                    if not await self.sleep(delay):  # closing
                        break
                    delay = min(self.retry_max, delay * 2)
                    status = await self.health.check()
                    if not status.up:
                        self._last_error = status.last_error
                        log.debug("recorder %s: probe failed: %s", self.stream, status.last_error)
                        continue
                    self._mark_up()
                picked = await self._next_batch()
                if picked is None:
                    break
                batch, ack_upto = picked
                from_spool = ack_upto is not None
                outcome = await self._race_stop(batch)
                if outcome is None:  # stopping: the batch may or may not have landed
                    if not from_spool:  # keep it; a replay of what landed is skipped
                        self._inflight = []
                        await self._spill(batch)
                    break
                if isinstance(outcome, BaseException):
                    await self._failed(batch, from_spool, f"{type(outcome).__name__}: {outcome}")
                    continue
                written, dupes = outcome
                self._written += written
                self._duplicates += dupes
                if ack_upto is not None:
                    assert self.spool is not None
                    await asyncio.to_thread(self.spool.ack, ack_upto)
                    self._replayed += written
                else:
                    self._inflight = []
                    self._space.set()
                delay = self.retry_initial
                self._progress.set()
            except Exception:
                log.exception("recorder %s: writer step failed; retrying", self.stream)
                if not await self.sleep(delay):  # closing
                    break
                delay = min(self.retry_max, delay * 2)

    async def _next_batch(self) -> tuple[list[tuple[int, MessageRecord]], int | None] | None:
        """The oldest records not yet written, and the spool seq to ack after writing them
        (None when they come from memory). The spool's come first. None: stopping."""
        while True:
            self._work.clear()
            if self._stopping:
                return None
            async with self._spool_lock:
                spool = self.spool
                if spool is not None and len(spool):
                    rows = await asyncio.to_thread(spool.peek, self.batch_size)
                    if rows:
                        return self._decode(rows), rows[-1][0]
                if self._mem:
                    n = min(self.batch_size, len(self._mem))
                    self._inflight = [self._mem.popleft() for _ in range(n)]
                    self._space.set()
                    return self._inflight, None
            self._progress.set()
            await self._work.wait()

    def _decode(self, rows: list[tuple[int, bytes]]) -> list[tuple[int, MessageRecord]]:
        out: list[tuple[int, MessageRecord]] = []
        for seq, payload in rows:
            try:
                out.append((seq, MessageRecord.from_bytes(payload)))
            except (ValueError, TypeError) as exc:
                # A damaged row must not block the spool forever: count it and move on.
                self._dropped += 1
                log.error(
                    "recorder %s: unreadable spool record %d dropped: %s", self.stream, seq, exc
                )
        return out

    async def _write(self, batch: Sequence[tuple[int, MessageRecord]]) -> tuple[int, int]:
        if not batch:
            return 0, 0
        keys: list[str] = [self.stream]
        args: list[str | int] = [self.dedupe_ttl, self.maxlen, 2 * len(_FIELD_NAMES)]
        for _, rec in batch:
            keys.append(self._dedupe_key(rec))
            args += rec.fields()
        result = await self._script(keys=keys, args=args)
        written, dupes = result
        return int(written), int(dupes)

    def _dedupe_key(self, rec: MessageRecord) -> str:
        return f"{self.key_prefix}:dedupe:{rec.direction}:{rec.chat}:{rec.id}"

    async def _failed(
        self, batch: list[tuple[int, MessageRecord]], from_spool: bool, error: str
    ) -> None:
        log.debug("recorder %s: writing %d records failed: %s", self.stream, len(batch), error)
        self._mark_down(error)
        if not from_spool:
            self._inflight = []
            await self._spill(batch)
            self._space.set()
        self._spill_wanted.set()
        self._progress.set()

    # -- the spiller ------------------------------------------------------------------------

    async def _spiller(self) -> None:
        while not self._stopping:
            await self._spill_wanted.wait()
            self._spill_wanted.clear()
            try:
                while self._mem and self._should_spill():
                    async with self._spool_lock:
                        n = min(self.spill_batch, len(self._mem))
                        if self.spool is None and not self._stopping:
                            n = min(n, len(self._mem) - self.max_buffer + 1)  # only the overflow
                        batch = [self._mem.popleft() for _ in range(n)]
                        self._space.set()
                        await self._spill_locked(batch)
                    self._progress.set()
            except Exception:
                log.exception("recorder %s: spilling to the spool failed", self.stream)
            self._force_spill = False

    def _should_spill(self) -> bool:
        if self._stopping:
            return True
        if self.spool is None:  # nowhere to go: keep records in memory while they fit
            return len(self._mem) >= self.max_buffer
        return self._down or self._force_spill

    async def _spill(self, batch: list[tuple[int, MessageRecord]]) -> None:
        async with self._spool_lock:
            await self._spill_locked(batch)

    async def _spill_locked(self, batch: list[tuple[int, MessageRecord]]) -> None:
        if not batch:
            return
        self._spilling += len(batch)  # still counted as buffered until settled
        try:
            accepted, refused, where = await self._append_to_spool(batch)
        finally:
            self._spilling -= len(batch)
        self._spooled_total += accepted
        if refused:
            self._dropped += refused
            if not self._refusal_logged:
                self._refusal_logged = True
                log.error(
                    "recorder %s: %s; dropping records until Redis is back "
                    "(counted in statistics().dropped; this is logged once per outage)",
                    self.stream,
                    where,
                )

    async def _append_to_spool(
        self, batch: list[tuple[int, MessageRecord]]
    ) -> tuple[int, int, str]:
        """(accepted, refused, why refused)."""
        spool = self.spool
        if spool is None:
            return 0, len(batch), "there is no spool"
        if spool.closed:
            return 0, len(batch), "the spool is closed"
        rows = [(seq, rec.to_bytes()) for seq, rec in batch]
        try:
            result = await asyncio.to_thread(spool.append, rows)
        except (sqlite3.Error, OSError) as exc:  # disk full, unwritable file...
            return 0, len(batch), f"the spool failed ({type(exc).__name__}: {exc})"
        return result.accepted, result.refused, "the spool is full"

    # -- state ------------------------------------------------------------------------------

    def _mark_down(self, error: str) -> None:
        self._last_error = error
        if not self._down:
            self._down = True
            self._down_since = time.time()
            self._outages += 1
            log.warning("recorder %s: Redis is down (%s); spooling", self.stream, error)
            began = RecorderOutage(self.stream, self.direction, self._down_since, None, error, 0, 0)
            self._outage = began
            self._outage_from = (self._spooled_total, self._dropped)
            self._tell(began)

    def _mark_up(self) -> None:
        if self._down:
            now = time.time()
            since = self._down_since or now
            log.warning(
                "recorder %s: Redis is back after %.1fs; replaying %d spooled records",
                self.stream,
                now - since,
                len(self.spool) if self.spool is not None else 0,
            )
            began = self._outage
            if began is not None:
                spooled, dropped = self._outage_from
                self._tell(
                    replace(
                        began,
                        ended=now,
                        spooled=self._spooled_total - spooled,
                        dropped=self._dropped - dropped,
                    )
                )
        self._down = False
        self._down_since = None
        self._outage = None
        self._refusal_logged = False
        self._work.set()

    def _tell(self, outage: RecorderOutage) -> None:
        if self.on_outage is None:
            return
        try:
            self.on_outage(outage)
        except Exception:
            log.exception("recorder %s: the outage listener failed", self.stream)

    async def _race_stop(
        self, batch: Sequence[tuple[int, MessageRecord]]
    ) -> tuple[int, int] | BaseException | None:
        """Write ``batch`` until it is written or the recorder stops: (written, duplicates),
        the write's exception, or None (stopping: it may or may not have landed)."""
        if self._stopping:
            return None
        task = self.spawn(
            self._write_outcome(batch), name=f"waclient-recorder-{self.direction}-write"
        )
        self._writing = task
        try:
            await asyncio.wait({task})
        finally:
            self._writing = None
        if task.cancelled():  # by close(); otherwise a failed attempt like any other
            return None if self._stopping else asyncio.CancelledError("the write was cancelled")
        return task.result()

    async def _write_outcome(
        self, batch: Sequence[tuple[int, MessageRecord]]
    ) -> tuple[int, int] | BaseException:
        """:meth:`_write`, its exception returned rather than raised."""
        try:
            return await self._write(batch)
        except Exception as exc:
            if not isinstance(exc, RedisError | OSError | TimeoutError):
                log.warning("recorder %s: unexpected error from a write", self.stream, exc_info=exc)
            return exc


class InboundRecorder(Recorder):
    """Records every received message (``MessageEv``)."""

    direction: ClassVar[Direction] = "in"

    def to_record(self, event: Any) -> MessageRecord:
        info = event.Info
        return MessageRecord(
            id=str(info.ID),
            chat=jid_to_str(info.MessageSource.Chat),
            sender=jid_to_str(info.MessageSource.Sender),
            text=message_text(event.Message),
            timestamp=int(info.Timestamp),
            direction="in",
        )

    def attach(self, client: Client) -> Subscription[Any]:
        sub = client.on(MessageEv, self.handle)
        self._subs.append(sub)
        return sub


class OutboundRecorder(Recorder):
    """Records every message the client sent (``SentMessage``, dispatched after a send)."""

    direction: ClassVar[Direction] = "out"

    def __init__(self, redis: Redis, *, sender: str = "", **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self.sender = sender
        """What to put in the ``sender`` field (our own JID, when known)."""

    def to_record(self, event: Any) -> MessageRecord:
        sent: SentMessage = event
        return MessageRecord(
            id=sent.id,
            chat=sent.chat,
            sender=self.sender,
            text=sent.text,
            timestamp=int(sent.timestamp),
            direction="out",
        )

    def attach(self, client: Client) -> Subscription[Any]:
        sub = client.on(SentMessage, self.handle)
        self._subs.append(sub)
        return sub
