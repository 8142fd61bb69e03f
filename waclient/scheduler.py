"""Scheduled text messages: cron (croniter) and one-shot dates, persisted in Redis.

Keys, all under ``namespace`` (one namespace per WhatsApp session):

- ``{ns}:due``: a ZSET of job ids scored by the epoch second they are due (or, while a
  scheduler holds a claim on a job, by the end of that claim's lease);
- ``{ns}:job:{id}``: a HASH per job (chat, text, kind, cron expression, time zone, due, runs...).

Nothing else is stored: cancelling a job deletes its HASH and its ZSET member, and Redis removes
the ZSET itself with its last member, so a namespace without jobs holds no key.

Claiming is one Lua script: the due ids (``ZRANGEBYSCORE -inf now``) are re-scored to
``now + lease`` and stamped with a claim token in the same atomic step, so of two schedulers on
the same Redis exactly one gets each due job. After sending, a second script settles the job
only if the token is still the claimer's (the job was not cancelled or re-claimed meanwhile): a
one-shot job is deleted, a cron job is re-armed for its next time, a failed send is booked (its
failure count, its retry time). Sends are bounded by ``send_timeout``, which must be shorter than
the lease.

A settle that cannot reach Redis (an outage that starts between the send and the settle) is kept
in memory as a *pending settle* and the tick stops there (the rest of its claimed batch is
claimed again, unsent, when their lease ends). Every tick first runs the pending settles and
claims nothing while one is left, so this scheduler never claims again a job whose settle is
pending. Running a settle again is harmless: once it has applied, or once the job was cancelled
or re-claimed, the token no longer matches and the script does nothing. The list holds only jobs
this scheduler claimed, at most one per tick in progress (the runner runs one at a time).
:meth:`Scheduler.close` tries them once more (for at most 3 seconds) and logs a WARNING naming
the jobs it could not settle.

So a successful send is not repeated, except in two cases, where it may be sent again after
the lease: the process dies between the send and the settle (or closes with settles still pending),
or Redis stays unreachable from this scheduler past the end of the lease and another scheduler
(another process, or any scheduler on the other side of a partition) claims the job before this
one settles it. A send that times out counts as failed and is retried, though it may have gone
out.

Creating checks the cap on jobs per namespace in the same script that stores the job, so two
hosts creating at once cannot pass it.

Nothing unreadable is stored: a one-shot date must lie within :data:`MAX_AHEAD` of now (so every
stored due time reads back), and a cron expression must not fire more often than
``min_interval`` (default a minute). A job hash that cannot be read all the same (written by
something else, or damaged) is logged and skipped by :meth:`Scheduler.list`, read as absent by
:meth:`Scheduler.get`, and removed by :meth:`Scheduler.tick`: it never stops the others.

Sends can be paced by a :class:`SendPacer` (the host's one outbound budget per number): each
send waits for a token, and a tick claims no more jobs than there are tokens (at least one), so
a claim is never held for long while its jobs wait.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis.asyncio import Redis

from waclient.errors import WaclientError
from waclient.lifetime import Lifetime

__all__ = [
    "MAX_AHEAD",
    "DateInPastError",
    "DateOutOfRangeError",
    "EmptyTextError",
    "InvalidChatError",
    "InvalidCronError",
    "InvalidTimezoneError",
    "JobPosition",
    "NaiveDateTimeError",
    "ScheduledJob",
    "Scheduler",
    "SchedulerError",
    "SchedulerStats",
    "SendPacer",
    "TextTooLongError",
    "TooManyJobsError",
    "check_interval",
    "next_cron_time",
    "validate_cron",
    "validate_when",
]

log = logging.getLogger(__name__)

SendFn = Callable[[str, str], Awaitable[object]]
JobKind = Literal["cron", "once"]

_JOB_ID = re.compile(r"[0-9a-f]{32}")

MAX_AHEAD = timedelta(days=36_525)
"""How far ahead a one-shot job may be set: 100 years."""
_CRON_SAMPLE = 64
"""Consecutive fire times checked against the minimum interval when a cron job is created."""
_CLOSE_SETTLE_TIMEOUT = 3.0
"""Seconds :meth:`Scheduler.close` gives the pending settles before it gives up on them."""


class SendPacer(Protocol):
    """An outbound budget shared with other senders: ``available()`` tokens now, and
    ``wait()`` until one is taken."""

    def available(self) -> int: ...

    async def wait(self) -> None: ...


class SchedulerError(WaclientError, ValueError):
    """A scheduling request that cannot be accepted; the message says why in one line."""


class InvalidCronError(SchedulerError):
    pass


class DateInPastError(SchedulerError):
    pass


class DateOutOfRangeError(SchedulerError):
    pass


class NaiveDateTimeError(SchedulerError):
    pass


class TooManyJobsError(SchedulerError):
    pass


class EmptyTextError(SchedulerError):
    pass


class TextTooLongError(SchedulerError):
    pass


class InvalidChatError(SchedulerError):
    pass


class InvalidTimezoneError(SchedulerError):
    pass


# -- validation (pure functions) -----------------------------------------------------------


def validate_cron(expr: object) -> str:
    """The expression, stripped, if it is a 5-field cron expression (or an ``@`` alias such as
    ``@hourly``) that fires at least once; else :class:`InvalidCronError`."""
    if not isinstance(expr, str):
        raise InvalidCronError(f"cron expression must be a string, not {type(expr).__name__}")
    text = " ".join(expr.split())
    if not text:
        raise InvalidCronError("cron expression is empty")
    if len(text) > 200:
        raise InvalidCronError("cron expression is longer than 200 characters")
    if not text.startswith("@") and len(text.split(" ")) != 5:
        raise InvalidCronError(
            f"cron expression {text!r} must have 5 fields (minute hour day month weekday)"
        )
    from croniter import croniter  # loaded by the first cron job, not with the module

    try:
        valid = bool(croniter.is_valid(text))
    except Exception:
        valid = False
    if not valid:
        raise InvalidCronError(f"invalid cron expression {text!r}")
    next_cron_time(text, UTC, datetime(2000, 1, 1, tzinfo=UTC))  # fires at all?
    return text


def next_cron_time(expr: str, tz: tzinfo, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``expr`` fires, in ``tz`` wall-clock terms,
    returned in UTC. :class:`InvalidCronError` if it never fires (such as February 30)."""
    try:
        it = _cron(expr, after.astimezone(tz))
        nxt = it.get_next(datetime)
    except Exception as exc:
        raise InvalidCronError(f"cron expression {expr!r} never fires ({exc})") from None
    if not isinstance(nxt, datetime):
        raise InvalidCronError(f"cron expression {expr!r} gave no next time")
    return nxt.astimezone(UTC)


def _cron(expr: str, start: datetime) -> Any:
    """A croniter over ``expr`` from ``start``. croniter (and dateutil) load with the first cron
    expression, not with this module: a host without cron jobs never holds them (~0.6 MiB)."""
    from croniter import croniter

    return croniter(expr, start)


def validate_when(when: object, now: datetime) -> datetime:
    """``when`` in UTC, if it is a timezone-aware datetime after ``now`` and at most
    :data:`MAX_AHEAD` later (:class:`DateOutOfRangeError` past that, or when it has no UTC
    equivalent, such as year 1 at +14:00)."""
    if not isinstance(when, datetime):
        raise NaiveDateTimeError(f"when must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise NaiveDateTimeError(
            f"when must be timezone-aware (got naive {when.isoformat()}); add tzinfo"
        )
    try:
        utc = when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise DateOutOfRangeError(
            f"{when.isoformat()} is out of range: it has no UTC date-time"
        ) from None
    if utc > now + MAX_AHEAD:
        raise DateOutOfRangeError(
            f"{when.isoformat()} is out of range: at most {MAX_AHEAD.days // 365} years ahead"
        )
    if utc <= now:
        raise DateInPastError(
            f"{when.isoformat()} is in the past (now is {now.astimezone(UTC).isoformat()})"
        )
    return utc


def check_interval(expr: str, tz: tzinfo, after: datetime, minimum: float) -> None:
    """:class:`InvalidCronError` if two of the next fire times of ``expr`` are closer than
    ``minimum`` seconds (checked over the next 64; nothing to check for a minute or less, as a
    5-field expression fires at most once a minute)."""
    if minimum <= 60:
        return
    try:
        it = _cron(expr, after.astimezone(tz))
        times = [it.get_next(datetime).astimezone(UTC) for _ in range(_CRON_SAMPLE)]
    except Exception as exc:
        raise InvalidCronError(f"cron expression {expr!r} never fires ({exc})") from None
    gap = min((b - a).total_seconds() for a, b in itertools.pairwise(times))
    if gap < minimum:
        raise InvalidCronError(
            f"cron expression {expr!r} fires {gap:g} s apart; the minimum interval is {minimum:g} s"
        )


def _timezone(tz: str | tzinfo) -> tuple[str, tzinfo]:
    if tz is UTC:
        return "UTC", UTC
    if isinstance(tz, ZoneInfo):
        return tz.key, tz
    if not isinstance(tz, str) or not tz:
        raise InvalidTimezoneError(f"time zone must be an IANA name such as 'UTC', not {tz!r}")
    try:
        return tz, ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTimezoneError(f"unknown time zone {tz!r}") from None


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return _now()
    if now.tzinfo is None or now.utcoffset() is None:
        raise NaiveDateTimeError("now must be timezone-aware")
    return now.astimezone(UTC)


# -- Lua -------------------------------------------------------------------------------------

# KEYS[1] due zset, KEYS[2] job hash. ARGV[1] max jobs, ARGV[2] id, ARGV[3] score, ARGV[4..]
# the hash's field/value pairs.
_CREATE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
"""

# KEYS[1] due zset. ARGV[1] now, ARGV[2] lease end, ARGV[3] limit, ARGV[4] claim token,
# ARGV[5] job key prefix. Returns {id, {hash fields...}, id, {...}, ...}.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', key, 'claim', ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS[1] due zset, KEYS[2] job hash. ARGV[1] id, ARGV[2] claim token, ARGV[3] next score or
# '' to delete the job, ARGV[4] runs increment, ARGV[5..] field/value pairs to set.
_SETTLE = """
if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
redis.call('HDEL', KEYS[2], 'claim')
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', KEYS[2], 'runs', ARGV[4]) end
if #ARGV >= 5 then redis.call('HSET', KEYS[2], unpack(ARGV, 5)) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS[1] due zset. ARGV[1] the cursor's score ('' to start at the beginning), ARGV[2] the
# cursor's id, ARGV[3] limit, ARGV[4] job key prefix. Returns {id, score, {hash fields...}, ...}
# in the zset's order (score, then id), after (score, id).
_PAGE = """
local out, limit, n = {}, tonumber(ARGV[3]), 0
local function add(id, score)
  out[#out + 1] = id
  out[#out + 1] = score
  out[#out + 1] = redis.call('HGETALL', ARGV[4] .. id)
  n = n + 1
end
local start = '-inf'
if ARGV[1] ~= '' then
  local same = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'WITHSCORES')
  for i = 1, #same, 2 do
    if n >= limit then return out end
    if same[i] > ARGV[2] then add(same[i], same[i + 1]) end
  end
  start = '(' .. ARGV[1]
end
if n >= limit then return out end
local rest = redis.call('ZRANGEBYSCORE', KEYS[1], start, '+inf', 'WITHSCORES',
  'LIMIT', 0, limit - n)
for i = 1, #rest, 2 do add(rest[i], rest[i + 1]) end
return out
"""

# KEYS[1] due zset, KEYS[2] job hash. ARGV[1] id.
_CANCEL = """
local n = redis.call('DEL', KEYS[2])
n = n + redis.call('ZREM', KEYS[1], ARGV[1])
return n
"""


# -- jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """What :meth:`Scheduler.statistics` returns."""

    namespace: str
    running: bool
    sent: int
    """Scheduled messages sent."""
    send_failures: int
    last_error: str | None
    unreadable: int
    """Stored jobs that could not be read (skipped and logged)."""
    pending_settles: int
    """Sends (or failed sends) whose settle could not reach Redis yet; retried first by every
    tick."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """A scheduled message as stored in Redis."""

    id: str
    chat: str
    text: str
    kind: JobKind
    cron: str | None
    """The cron expression (cron jobs)."""
    tz: str
    """The time zone the cron expression is read in."""
    next_run: datetime
    """When it is due next (UTC)."""
    created_at: datetime
    runs: int
    """Times it was sent."""
    last_run: datetime | None
    failures: int
    """Failed sends in a row."""
    claimed: bool
    """A scheduler is sending it right now."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "chat": self.chat,
            "text": self.text,
            "kind": self.kind,
            "cron": self.cron,
            "tz": self.tz,
            "next_run": self.next_run.isoformat(),
            "created_at": self.created_at.isoformat(),
            "runs": self.runs,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "failures": self.failures,
            "claimed": self.claimed,
        }


class JobPosition(tuple[str, str]):
    """Where a job sits in the due index: (its score as Redis writes it, its id)."""

    __slots__ = ()

    def __new__(cls, score: str, job_id: str) -> JobPosition:
        return super().__new__(cls, (score, job_id))

    @classmethod
    def parse(cls, score: object, job_id: object) -> JobPosition:
        """A position read back from a client (:class:`ValueError` if it is not one)."""
        if not isinstance(score, str) or not _SCORE.fullmatch(score):
            raise ValueError("not a score")
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise ValueError("not a job id")
        return cls(score, job_id)


_SCORE = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?")


def _ts(dt: datetime) -> str:
    return repr(dt.timestamp())


def _from_ts(value: str) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_from_hash(raw: dict[str, str]) -> ScheduledJob:
    kind: JobKind = "cron" if raw.get("kind") == "cron" else "once"
    last = raw.get("last_run") or ""
    return ScheduledJob(
        id=raw["id"],
        chat=raw["chat"],
        text=raw["text"],
        kind=kind,
        cron=raw.get("cron") or None,
        tz=raw.get("tz") or "UTC",
        next_run=_from_ts(raw["due"]),
        created_at=_from_ts(raw["created"]),
        runs=int(raw.get("runs") or 0),
        last_run=_from_ts(last) if last else None,
        failures=int(raw.get("failures") or 0),
        claimed=bool(raw.get("claim")),
    )


def _read_job(raw: dict[str, str], where: str) -> ScheduledJob | None:
    """The job in ``raw``, or None (logged) when the hash cannot be read as one."""
    try:
        return _job_from_hash(raw)
    except (KeyError, ValueError, OverflowError, OSError) as exc:
        log.error(
            "%s: skipping unreadable job %r (%s: %s)",
            where,
            raw.get("id", "?")[:64],
            type(exc).__name__,
            exc,
        )
        return None


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_decode(flat[i]): _decode(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


@dataclass(frozen=True, slots=True)
class _Settle:
    """One settle of a claimed job: the settle script's arguments (id, claim token, next score
    or '' to delete, runs increment, fields to set)."""

    job_id: str
    args: tuple[str | int, ...]


class Scheduler(Lifetime):
    """Scheduled text messages for one session, in Redis under ``namespace``.

    ``send(chat, text)`` sends one message (``Client.send_text``). Run the scheduler with
    :meth:`start` (a task that calls :meth:`tick` every ``poll_interval`` seconds) and stop it
    with :meth:`close`; or call :meth:`tick` yourself.
    """

    def __init__(
        self,
        redis: Redis,
        send: SendFn,
        *,
        namespace: str = "waclient:scheduler",
        max_jobs_per_session: int = 1000,
        max_text_length: int = 65536,
        poll_interval: float = 1.0,
        lease: float = 60.0,
        send_timeout: float = 30.0,
        claim_batch: int = 100,
        max_failures: int = 5,
        retry_delay: float = 30.0,
        min_interval: float = 60.0,
        pacer: SendPacer | None = None,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        if max_jobs_per_session < 1:
            raise ValueError("max_jobs_per_session must be >= 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        if not 0 < send_timeout < lease:
            raise ValueError("send_timeout must be > 0 and shorter than the lease")
        if claim_batch < 1 or max_failures < 1 or retry_delay <= 0 or min_interval <= 0:
            raise ValueError(
                "claim_batch and max_failures must be >= 1, retry_delay and min_interval > 0"
            )
        self.redis = redis
        self.send = send
        self.namespace = namespace
        self.max_jobs = max_jobs_per_session
        self.max_text_length = max_text_length
        self.poll_interval = poll_interval
        self.lease = lease
        self.send_timeout = send_timeout
        self.claim_batch = claim_batch
        self.max_failures = max_failures
        self.retry_delay = retry_delay
        self.min_interval = min_interval
        """Seconds a cron job waits at least between two sends."""
        self.pacer = pacer
        self.sent = 0
        """Messages this object sent."""
        self.send_failures = 0
        """Sends this object attempted that failed."""
        self.last_error: str | None = None
        self.unreadable = 0
        """Unreadable job hashes met (skipped, or removed when due)."""
        self._owner = uuid.uuid4().hex[:12]
        self._due_key = f"{namespace}:due"
        self._job_prefix = f"{namespace}:job:"
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._cancel = redis.register_script(_CANCEL)
        self._page = redis.register_script(_PAGE)
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, _Settle] = {}
        """Settles that could not reach Redis, by job id: only jobs this scheduler claimed, at
        most one per tick in progress (a failed settle ends its tick, and no tick claims while
        one is pending)."""

    # -- jobs -------------------------------------------------------------------------------

    async def create_cron(
        self,
        chat: str,
        text: str,
        expr: str,
        *,
        tz: str | tzinfo = "UTC",
        now: datetime | None = None,
    ) -> ScheduledJob:
        """A job that sends ``text`` to ``chat`` each time the cron expression fires in ``tz``."""
        self._check_message(chat, text)
        expr = validate_cron(expr)
        tz_name, zone = _timezone(tz)
        current = _aware(now)
        check_interval(expr, zone, current, self.min_interval)
        due = next_cron_time(expr, zone, current)
        return await self._store(chat, text, "cron", due, current, cron=expr, tz=tz_name)

    async def create_once(
        self, chat: str, text: str, when: datetime, *, now: datetime | None = None
    ) -> ScheduledJob:
        """A job that sends ``text`` to ``chat`` once at ``when`` (timezone-aware, future)."""
        self._check_message(chat, text)
        current = _aware(now)
        due = validate_when(when, current)
        tz_name = str(when.tzinfo.key) if isinstance(when.tzinfo, ZoneInfo) else "UTC"
        return await self._store(chat, text, "once", due, current, cron=None, tz=tz_name)

    async def cancel(self, job_id: str) -> bool:
        """Remove the job and every key it held; False if there was no such job."""
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            return False
        removed = await self._cancel(keys=[self._due_key, self._job_key(job_id)], args=[job_id])
        return int(removed) > 0

    async def get(self, job_id: str) -> ScheduledJob | None:
        """The job, or None (also when its hash cannot be read: that is logged)."""
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            return None
        raw = await self.redis.hgetall(self._job_key(job_id))
        if not raw:
            return None
        return self._read({_decode(k): _decode(v) for k, v in raw.items()})

    async def list(self) -> list[ScheduledJob]:
        """Every job of the namespace, soonest first."""
        members: builtins.list[Any] = await self.redis.zrange(self._due_key, 0, -1)
        ids = [_decode(i) for i in members]
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._job_key(job_id))
            hashes = await pipe.execute()
        jobs = [
            self._read({_decode(k): _decode(v) for k, v in raw.items()}) for raw in hashes if raw
        ]
        return sorted((j for j in jobs if j is not None), key=lambda j: (j.next_run, j.id))

    async def page(
        self, limit: int, after: JobPosition | None = None
    ) -> tuple[builtins.list[tuple[JobPosition, ScheduledJob]], JobPosition | None]:
        """At most ``limit`` jobs after position ``after`` (None: from the start), in the due
        index's order (soonest first; a job being sent sorts at the end of its lease), each with
        its position; and the position to continue from, or None at the end.

        A job present during the whole listing and not re-armed meanwhile appears exactly once
        across the pages; jobs that cannot be read are skipped (logged)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        score, job_id = after if after is not None else ("", "")
        flat = await self._page(
            keys=[self._due_key], args=[score, job_id, limit + 1, self._job_prefix]
        )
        rows: builtins.list[tuple[JobPosition, ScheduledJob]] = []
        positions: builtins.list[JobPosition] = []
        for i in range(0, len(flat) - 2, 3):
            position = JobPosition(_decode(flat[i + 1]), _decode(flat[i]))
            positions.append(position)
            raw = _pairs(flat[i + 2])
            job = self._read(raw) if raw else None  # empty: cancelled meanwhile
            if job is not None and len(positions) <= limit:
                rows.append((position, job))
        more = len(positions) > limit
        return rows, positions[limit - 1] if more else None

    async def count(self) -> int:
        """Jobs in the namespace."""
        return int(await self.redis.zcard(self._due_key))

    # -- running ----------------------------------------------------------------------------

    async def tick(self, now: datetime | None = None) -> builtins.list[str]:
        """Send every job due at ``now`` (default: the current time); return their ids.

        Claims at most ``claim_batch`` jobs at a time, until none is due. First runs the settles
        still pending (a Redis error there ends the tick before any claim); a settle that fails
        after a send is kept pending and its error ends the tick.
        """
        current = _aware(now)
        await self._settle_pending()
        fired: builtins.list[str] = []
        while not self._pending:  # a concurrent tick's settle failed: claim nothing more
            batch = self.claim_batch
            if self.pacer is not None:
                batch = max(1, min(batch, self.pacer.available()))
            token = f"{self._owner}:{uuid.uuid4().hex[:12]}"
            lease_end = current + timedelta(seconds=self.lease)
            flat = await self._claim(
                keys=[self._due_key],
                args=[_ts(current), _ts(lease_end), batch, token, self._job_prefix],
            )
            for i in range(0, len(flat) - 1, 2):
                job = self._read(_pairs(flat[i + 1]))
                if job is None:  # it can never be sent: drop it rather than claim it forever
                    job_id = _decode(flat[i])
                    await self._cancel(keys=[self._due_key, self._job_key(job_id)], args=[job_id])
                    continue
                if self.pacer is not None:
                    await self.pacer.wait()
                if await self._fire(job, token, current):
                    fired.append(job.id)
            if len(flat) // 2 < batch:
                break
        return fired

    idempotent_start = True
    """``start()`` runs :meth:`tick` every ``poll_interval`` seconds in a task, once."""

    async def _open(self) -> None:
        self._task = self.spawn(self._run(), name=f"waclient-scheduler-{self._owner}")

    async def _close(self) -> None:
        """``close()``: stop the runner (a send in progress finishes first), then try the
        pending settles once more; those Redis still refuses are logged (one WARNING naming the
        jobs: they will be claimed and sent again after their lease) and kept. The Redis client
        stays open, and :meth:`tick` and the job methods still work."""
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task})
        if not self._pending:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_SETTLE_TIMEOUT):
                await self._settle_pending()
        if self._pending:
            log.warning(
                "scheduler %s: closed with %d settles pending (Redis unreachable): jobs %s "
                "will be claimed again when their lease ends (those sent, sent again)",
                self.namespace,
                len(self._pending),
                ", ".join(sorted(self._pending)),
            )

    def statistics(self) -> SchedulerStats:
        return SchedulerStats(
            namespace=self.namespace,
            running=self.is_open,
            sent=self.sent,
            send_failures=self.send_failures,
            last_error=self.last_error,
            unreadable=self.unreadable,
            pending_settles=len(self._pending),
        )

    # -- helpers ----------------------------------------------------------------------------

    def _read(self, raw: dict[str, str]) -> ScheduledJob | None:
        job = _read_job(raw, f"scheduler {self.namespace}")
        if job is None:
            self.unreadable += 1
        return job

    def _job_key(self, job_id: str) -> str:
        return f"{self._job_prefix}{job_id}"

    def _check_message(self, chat: object, text: object) -> None:
        if not isinstance(chat, str) or not chat.strip():
            raise InvalidChatError("chat must be a non-empty JID or phone number")
        if not isinstance(text, str) or not text.strip():
            raise EmptyTextError("text must not be empty")
        if len(text) > self.max_text_length:
            raise TextTooLongError(
                f"text has {len(text)} characters; the limit is {self.max_text_length}"
            )

    async def _store(
        self,
        chat: str,
        text: str,
        kind: JobKind,
        due: datetime,
        now: datetime,
        *,
        cron: str | None,
        tz: str,
    ) -> ScheduledJob:
        job_id = uuid.uuid4().hex
        fields = {
            "id": job_id,
            "chat": chat,
            "text": text,
            "kind": kind,
            "cron": cron or "",
            "tz": tz,
            "due": _ts(due),
            "created": _ts(now),
            "runs": "0",
            "failures": "0",
        }
        flat: builtins.list[str] = []
        for k, v in fields.items():
            flat += (k, v)
        ok = await self._create(
            keys=[self._due_key, self._job_key(job_id)],
            args=[self.max_jobs, job_id, _ts(due), *flat],
        )
        if not int(ok):
            raise TooManyJobsError(
                f"namespace {self.namespace!r} already holds {self.max_jobs} jobs (the limit)"
            )
        return _job_from_hash(fields)

    async def _fire(self, job: ScheduledJob, token: str, now: datetime) -> bool:
        error: str | None = None
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send(job.chat, job.text)
        except TimeoutError:
            error = f"send timed out after {self.send_timeout:g}s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.sent += 1
            if job.kind == "once":
                await self._settle_job(job.id, token, None, 1, {})
            else:
                due = self._next_cron(job, now)
                await self._settle_job(
                    job.id, token, due, 1, {"due": _ts(due), "last_run": _ts(now), "failures": "0"}
                )
            return True
        self.send_failures += 1
        self.last_error = error
        failures = job.failures + 1
        if failures >= self.max_failures:
            if job.kind == "once":
                log.error("job %s: giving up after %d failed sends: %s", job.id, failures, error)
                await self._settle_job(job.id, token, None, 0, {})
            else:
                due = self._next_cron(job, now)
                log.error(
                    "job %s: %d failed sends (%s); skipping to %s",
                    job.id,
                    failures,
                    error,
                    due.isoformat(),
                )
                await self._settle_job(job.id, token, due, 0, {"due": _ts(due), "failures": "0"})
        else:
            delay = min(self.retry_delay * 2 ** (failures - 1), 3600.0)
            due = now + timedelta(seconds=delay)
            log.warning("job %s: send failed (%s); retrying in %.0fs", job.id, error, delay)
            await self._settle_job(
                job.id, token, due, 0, {"due": _ts(due), "failures": str(failures)}
            )
        return False

    def _next_cron(self, job: ScheduledJob, now: datetime) -> datetime:
        assert job.cron is not None
        _, zone = _timezone(job.tz)
        # From the later of its due time (plus the minimum interval) and now: missed runs are
        # skipped, not replayed, and two sends of one job are never closer than min_interval.
        earliest = job.next_run + timedelta(seconds=self.min_interval, microseconds=-1)
        return next_cron_time(job.cron, zone, max(now, earliest))

    async def _settle_job(
        self,
        job_id: str,
        token: str,
        due: datetime | None,
        runs: int,
        fields: dict[str, str],
    ) -> None:
        """Settle a job this scheduler claimed; if Redis cannot be reached, keep the settle
        pending (retried first by the next tick) and raise."""
        flat: builtins.list[str] = []
        for k, v in fields.items():
            flat += (k, v)
        settle = _Settle(job_id, (job_id, token, _ts(due) if due is not None else "", runs, *flat))
        try:
            await self._run_settle(settle)
        except Exception:
            self._pending[job_id] = settle
            raise

    async def _settle_pending(self) -> None:
        """Run the pending settles, oldest first; the first error is raised (that settle and
        the later ones stay pending)."""
        for settle in builtins.list(self._pending.values()):
            applied = await self._run_settle(settle)
            self._pending.pop(settle.job_id, None)
            log.info(
                "job %s: %s after Redis came back",
                settle.job_id,
                "settled" if applied else "already settled, cancelled or claimed again",
            )

    async def _run_settle(self, settle: _Settle) -> bool:
        """Run the settle script; False if it did nothing (the job no longer carries the
        token: settled already, cancelled, or claimed again by another scheduler)."""
        job_id = settle.job_id
        done = await self._settle(keys=[self._due_key, self._job_key(job_id)], args=settle.args)
        return bool(int(done))

    async def _run(self) -> None:
        failing = False
        while not self.closing:
            try:
                await self.tick()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                # Once per streak of failures (a Redis outage), not once per poll.
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "scheduler %s: tick failed: %s", self.namespace, self.last_error)
                failing = True
            else:
                if failing:
                    log.info("scheduler %s: ticking again", self.namespace)
                failing = False
            if not await self.sleep(self.poll_interval):
                return
