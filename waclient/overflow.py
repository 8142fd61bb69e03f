"""``DiskQueue``: the bounded on-disk FIFO that the client's inbox overflows into.

When the in-memory inbox is full, the events of a burst (the offline catch-up after a long
disconnect, a history sync) go to disk instead of making the Go side wait: whatsmeow must not be
blocked for long (docs/design.md, "Flow control"). The queue is a chain of append-only segment
files in one directory, next to the session: records are written at the end of the newest
segment and read from the start of the oldest; a segment that has been read to its end is
deleted, and the newest one is emptied (truncated) whenever the reader catches up with it, so
the files take at most ``max_bytes`` and, once a burst has been taken in, nothing.

The queue lives as long as the process (like the in-memory inbox): a new queue on the same
directory starts empty and removes what a killed process left there.

Thread-safe: one producer thread or several (the Go side's) append, the event loop pops; each
append is one ``os.write`` of the record with its length prefix.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskQueue", "DiskQueueStats"]

_LENGTH = struct.Struct("<I")
_SUFFIX = ".overflow"
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class DiskQueueStats:
    records: int
    """Records on disk now."""
    bytes: int
    """Bytes the segment files take now (at most ``max_bytes``)."""
    max_bytes: int
    written: int
    """Records ever appended."""


class DiskQueue:
    """A FIFO of byte records in segment files under ``directory``, bounded by ``max_bytes``."""

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, *, segment_bytes: int = 4 * 2**20
    ) -> None:
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("a disk queue needs max_bytes and segment_bytes >= 1")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f"*{_SUFFIX}"):
            stale.unlink(missing_ok=True)
        self._segments: deque[_Segment] = deque()
        self._numbers = 0
        self._records = 0
        self._file_bytes = 0
        self._written = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    def append(self, record: bytes) -> bool:
        """Queue ``record``; False (nothing written) when it does not fit the budget."""
        size = _LENGTH.size + len(record)
        with self._lock:
            if self._closed or self._file_bytes + size > self.max_bytes:
                return False
            segment = self._segments[-1] if self._segments else None
            if segment is None or (segment.end and segment.end + size > self.segment_bytes):
                segment = self._new_segment()
            os.write(segment.fd, _LENGTH.pack(len(record)) + record)
            segment.end += size
            segment.records += 1
            self._file_bytes += size
            self._records += 1
            self._written += 1
            return True

    def pop(self, limit: int, max_bytes: int) -> list[bytes]:
        """The oldest records, removed from the queue (oldest first): up to ``limit`` of them
        and ``max_bytes`` in all (the first one whatever its size)."""
        out: list[bytes] = []
        with self._lock:
            while len(out) < limit and self._segments:
                segment = self._segments[0]
                taken = segment.read(limit - len(out), max_bytes, whole_first=not out)
                out.extend(taken)
                max_bytes -= sum(map(len, taken))
                self._records -= len(taken)
                if segment.records:
                    break  # the limit or the byte budget was reached inside this segment
                last = len(self._segments) == 1
                self._reclaim(segment)
                if last:
                    break
        return out

    def __len__(self) -> int:
        return self._records

    def statistics(self) -> DiskQueueStats:
        return DiskQueueStats(self._records, self._file_bytes, self.max_bytes, self._written)

    def close(self) -> None:
        """Delete every segment; later appends are refused."""
        with self._lock:
            self._closed = True
            while self._segments:
                self._segments.popleft().remove()
            self._records = self._file_bytes = 0

    # -- helpers ----------------------------------------------------------------------------

    def _new_segment(self) -> _Segment:
        self._numbers += 1
        segment = _Segment(self.directory / f"{self._numbers:08d}{_SUFFIX}")
        self._segments.append(segment)
        return segment

    def _reclaim(self, segment: _Segment) -> None:
        """A segment read to its end: delete it, or empty it when it is the one written to."""
        self._file_bytes -= segment.end
        if len(self._segments) > 1:
            self._segments.popleft().remove()
        else:
            segment.empty()


class _Segment:
    """One append-only file: written at ``end``, read from ``start``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.start = 0
        self.end = 0
        self.records = 0

    def read(self, limit: int, max_bytes: int, *, whole_first: bool) -> list[bytes]:
        """Up to ``limit`` whole records from ``start``, within ``max_bytes`` in all (with
        ``whole_first``, the first record is taken whatever its size)."""
        out: list[bytes] = []
        full = False
        while len(out) < limit and self.start < self.end and not full:
            chunk = os.pread(self.fd, min(_READ_CHUNK, self.end - self.start), self.start)
            offset = 0
            while len(out) < limit and offset + _LENGTH.size <= len(chunk):
                (length,) = _LENGTH.unpack_from(chunk, offset)
                if length > max_bytes and not (whole_first and not out):
                    full = True
                    break
                max_bytes -= length
                stop = offset + _LENGTH.size + length
                if stop > len(chunk):
                    if offset == 0:  # one record larger than a chunk: read it whole
                        out.append(os.pread(self.fd, length, self.start + _LENGTH.size))
                        offset = stop
                    break
                out.append(chunk[offset + _LENGTH.size : stop])
                offset = stop
            self.start += offset
        self.records -= len(out)
        return out

    def empty(self) -> None:
        os.ftruncate(self.fd, 0)
        self.start = self.end = self.records = 0

    def remove(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)
