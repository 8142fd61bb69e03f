"""``Spool``: a bounded on-disk FIFO (sqlite, WAL) that holds records while Redis is down.

Each record is ``(seq, payload)``: ``seq`` is an integer chosen by the caller that orders the
spool (the primary key), ``payload`` opaque bytes. Reading is always lowest ``seq`` first, so
records can be appended out of order (a batch that failed in flight after newer records were
already spooled) and still drain in order. When ``seq`` is not given, the spool numbers the
records after its highest one.

Bounds: ``max_records`` and ``max_bytes`` (payload bytes). An append that would pass either is
refused record by record from the first one that does not fit; what is refused is counted in
:attr:`Spool.refused` and returned to the caller, never dropped silently.

The methods are synchronous and thread-safe (one connection, one lock); each is one short
transaction. Callers on an event loop run them with ``asyncio.to_thread`` in small batches.
The file survives the process: a new ``Spool`` on the same path finds what was left.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from waclient.errors import WaclientError

__all__ = ["AppendResult", "Spool", "SpoolClosedError"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)"


class SpoolClosedError(WaclientError, RuntimeError):
    """The spool was closed."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append kept and what it refused."""

    accepted: int
    refused: int


class Spool:
    """A bounded FIFO of ``(seq, bytes)`` records in a sqlite file.

    ``max_records`` / ``max_bytes``: the bounds (``None`` for no bound on that axis; at least
    one must be set). ``cache_kib``: sqlite's page cache for this connection, so the spool's
    memory stays small however large the file grows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int | None = 100_000,
        max_bytes: int | None = 64 * 1024 * 1024,
        cache_kib: int = 1024,
    ) -> None:
        if max_records is None and max_bytes is None:
            raise ValueError("a spool needs max_records or max_bytes (or both)")
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be >= 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.path = Path(path)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.refused = 0
        """Records refused because the spool was full, since this object was made."""
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # One cursor for every statement: sqlite3 keeps a weak reference to each cursor a
        # connection makes and drops the dead ones only every 200 cursors, a slow sawtooth that
        # a soak sees as growth for thousands of cycles.
        cur = conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            cur.execute("PRAGMA journal_size_limit=4194304")
            cur.execute(_SCHEMA)
            count, size, top = cur.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(seq), 0) "
                "FROM spool"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._cur = cur
        self._count = int(count)
        self._bytes = int(size)
        self._top = int(top)

    # -- public API -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Payload bytes held."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` ever held by this file (0 when it never held any)."""
        return self._top

    @property
    def full(self) -> bool:
        """True when not even a one-byte record would fit."""
        return not self._fits(1)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def append(self, records: Iterable[bytes | tuple[int, bytes]]) -> AppendResult:
        """Append records (payloads, or ``(seq, payload)`` pairs) in one transaction.

        Records are taken in order until one does not fit; it and every later one of this call
        are refused (so what is kept is a prefix, and no gap opens inside a batch).
        """
        with self._lock:
            cur = self._live()
            rows: list[tuple[int, bytes]] = []
            count, size, top = self._count, self._bytes, self._top
            offered = 0
            full = False
            for item in records:
                offered += 1
                if full:
                    continue
                if isinstance(item, tuple):
                    seq, payload = item
                else:
                    seq, payload = top + 1, item
                if not self._fits(len(payload), count, size):
                    full = True
                    continue
                rows.append((seq, payload))
                count += 1
                size += len(payload)
                top = max(top, seq)
            refused = offered - len(rows)
            if rows:
                with _transaction(cur):
                    cur.executemany("INSERT INTO spool (seq, payload) VALUES (?, ?)", rows)
                self._count, self._bytes, self._top = count, size, top
            self.refused += refused
            return AppendResult(accepted=len(rows), refused=refused)

    def peek(self, n: int) -> list[tuple[int, bytes]]:
        """Up to ``n`` records, lowest ``seq`` first, without removing them."""
        if n < 1:
            return []
        with self._lock:
            cur = self._live()
            rows = cur.execute(
                "SELECT seq, payload FROM spool ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def ack(self, upto_seq: int) -> int:
        """Remove every record with ``seq <= upto_seq``; return how many went."""
        with self._lock:
            cur = self._live()
            with _transaction(cur):
                count, size = cur.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE seq <= ?",
                    (upto_seq,),
                ).fetchone()
                if count:
                    cur.execute("DELETE FROM spool WHERE seq <= ?", (upto_seq,))
            self._count -= int(count)
            self._bytes -= int(size)
            if self._count == 0:
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(count)

    def close(self) -> None:
        """Close the file; the records stay in it. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._cur.close()
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Spool {str(self.path)!r} records={self._count}/{self.max_records} "
            f"bytes={self._bytes}/{self.max_bytes} refused={self.refused}>"
        )

    # -- helpers ----------------------------------------------------------------------------

    def _live(self) -> sqlite3.Cursor:
        """The spool's one cursor (callers hold the lock)."""
        if self._conn is None:
            raise SpoolClosedError(f"spool {str(self.path)!r} is closed")
        return self._cur

    def _fits(self, nbytes: int, count: int | None = None, size: int | None = None) -> bool:
        count = self._count if count is None else count
        size = self._bytes if size is None else size
        if self.max_records is not None and count + 1 > self.max_records:
            return False
        return self.max_bytes is None or size + nbytes <= self.max_bytes


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connection)."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur

    def __enter__(self) -> None:
        self.cur.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cur.execute("COMMIT" if exc_type is None else "ROLLBACK")
