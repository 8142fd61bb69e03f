"""waclient.spool: a bounded on-disk FIFO (sqlite, WAL)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waclient.spool import Spool, SpoolClosedError


def test_fifo_append_peek_ack(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        assert len(spool) == 0 and spool.peek(10) == [] and spool.last_seq == 0
        result = spool.append([b"a", b"bb", b"ccc"])
        assert (result.accepted, result.refused) == (3, 0)
        assert len(spool) == 3 and spool.nbytes == 6 and spool.last_seq == 3
        assert spool.peek(2) == [(1, b"a"), (2, b"bb")]
        assert spool.peek(0) == []
        assert spool.ack(1) == 1
        assert spool.peek(10) == [(2, b"bb"), (3, b"ccc")]
        assert spool.ack(1) == 0  # already gone
        spool.append([b"d"])
        assert spool.peek(10)[-1] == (4, b"d")
        assert spool.ack(10) == 3
        assert len(spool) == 0 and spool.nbytes == 0


def test_explicit_seqs_drain_in_seq_order(tmp_path: Path) -> None:
    """A batch that failed in flight is spooled after newer records and still comes first."""
    with Spool(tmp_path / "s.db") as spool:
        spool.append([(11, b"k"), (12, b"l")])
        spool.append([(5, b"e"), (6, b"f")])
        assert [seq for seq, _ in spool.peek(10)] == [5, 6, 11, 12]
        spool.append([b"next"])  # numbered after the highest
        assert spool.peek(10)[-1] == (13, b"next")


def test_wal_mode_and_small_cache(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", cache_kib=512):
        pass
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_max_records_refuses_and_counts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_records=3, max_bytes=None) as spool:
        r = spool.append([b"1", b"2"])
        assert (r.accepted, r.refused) == (2, 0)
        r = spool.append([b"3", b"4", b"5"])
        assert (r.accepted, r.refused) == (1, 2)
        assert spool.full and spool.refused == 2
        assert [p for _, p in spool.peek(10)] == [b"1", b"2", b"3"]
        assert spool.append([b"6"]).refused == 1 and spool.refused == 3
        spool.ack(1)
        assert not spool.full
        assert spool.append([b"7"]).accepted == 1


def test_max_bytes_keeps_a_prefix(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_records=None, max_bytes=10) as spool:
        r = spool.append([b"aaaa", b"bbbb", b"cc", b"d"])
        # 4 + 4 = 8; "cc" makes 10 (fits); "d" would make 11: refused.
        assert (r.accepted, r.refused) == (3, 1)
        # A record that does not fit stops the batch even if a later, smaller one would fit:
        spool.ack(1)
        r = spool.append([b"xxxxxx", b"y"])
        assert (r.accepted, r.refused) == (0, 2)
        assert spool.nbytes == 6 and spool.refused == 3


def test_needs_a_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path / "s.db", max_records=None, max_bytes=None)
    with pytest.raises(ValueError):
        Spool(tmp_path / "s.db", max_records=0)
    with pytest.raises(ValueError):
        Spool(tmp_path / "s.db", max_bytes=0)


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "s.db"
    with Spool(path) as spool:
        spool.append([b"x" * 100 for _ in range(50)])
        spool.ack(20)
    with Spool(path) as again:
        assert len(again) == 30 and again.nbytes == 3000 and again.last_seq == 50
        assert again.peek(1)[0][0] == 21
        again.append([b"y"])
        assert again.peek(100)[-1] == (51, b"y")


def test_closed_spool_raises(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.close()
    spool.close()  # idempotent
    assert spool.closed
    with pytest.raises(SpoolClosedError):
        spool.append([b"x"])
    with pytest.raises(SpoolClosedError):
        spool.peek(1)


def test_thread_safe_appends_keep_every_record_once(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_records=100_000) as spool:

        def writer(tag: int) -> None:
            for i in range(50):
                spool.append([f"{tag}:{i}:{j}".encode() for j in range(10)])

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = spool.peek(10_000)
        assert len(rows) == len(spool) == 2000
        assert len({p for _, p in rows}) == 2000
        assert [s for s, _ in rows] == list(range(1, 2001))
        # Each thread's records are in its own order.
        for tag in range(4):
            mine = [p.decode() for _, p in rows if p.startswith(f"{tag}:".encode())]
            assert mine == [f"{tag}:{i}:{j}" for i in range(50) for j in range(10)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.lists(st.binary(max_size=8), max_size=6)),
            st.tuples(st.just("ack"), st.integers(0, 40)),
            st.tuples(st.just("peek"), st.integers(0, 10)),
            st.tuples(st.just("reopen"), st.none()),
        ),
        max_size=40,
    ),
    max_records=st.integers(1, 12),
    max_bytes=st.integers(1, 40),
)
def test_matches_a_bounded_fifo_model(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, object]],
    max_records: int,
    max_bytes: int,
) -> None:
    path = tmp_path_factory.mktemp("model") / "s.db"
    spool = Spool(path, max_records=max_records, max_bytes=max_bytes)
    model: list[tuple[int, bytes]] = []
    top = 0
    refused = 0
    try:
        for op, arg in ops:
            if op == "append":
                assert isinstance(arg, list)
                full = False
                for payload in arg:
                    size = sum(len(p) for _, p in model)
                    if full or len(model) + 1 > max_records or size + len(payload) > max_bytes:
                        full = True
                        refused += 1
                        continue
                    top += 1
                    model.append((top, payload))
                spool.append(arg)
            elif op == "ack":
                assert isinstance(arg, int)
                gone = [r for r in model if r[0] <= arg]
                model = [r for r in model if r[0] > arg]
                assert spool.ack(arg) == len(gone)
            elif op == "peek":
                assert isinstance(arg, int)
                assert spool.peek(arg) == model[:arg]
            else:
                spool.close()
                spool = Spool(path, max_records=max_records, max_bytes=max_bytes)
                refused = 0  # the counter is per object
                top = model[-1][0] if model else 0  # numbering resumes after the highest held
            assert len(spool) == len(model)
            assert spool.nbytes == sum(len(p) for _, p in model)
            assert spool.refused == refused
            assert spool.last_seq == top
        assert spool.peek(1000) == model
    finally:
        spool.close()
