"""DiskQueue: the bounded on-disk FIFO the inbox overflows into."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waclient.overflow import DiskQueue


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.overflow"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 2**20, segment_bytes=100)
    records = [f"record {i}".encode() for i in range(100)]
    assert all(queue.append(r) for r in records)
    assert len(files(tmp_path)) > 5  # rotated into many segments
    got: list[bytes] = []
    while len(queue):
        got.extend(queue.pop(7, 2**20))
    assert got == records
    stats = queue.statistics()
    assert stats.records == stats.bytes == 0 and stats.written == 100
    assert [p.stat().st_size for p in files(tmp_path)] in ([], [0])  # read segments are gone


def test_the_budget_refuses_what_does_not_fit_and_frees_as_records_are_read(
    tmp_path: Path,
) -> None:
    queue = DiskQueue(tmp_path, 40, segment_bytes=20)  # 4 bytes of length + the record
    assert [queue.append(b"x" * 6) for _ in range(5)] == [True] * 4 + [False]
    assert queue.statistics().bytes == 40
    assert queue.pop(2, 2**20) == [b"x" * 6] * 2  # its first segment read: deleted
    assert queue.statistics().bytes == 20
    assert queue.append(b"y" * 6)


def test_pop_keeps_to_its_byte_budget_but_always_takes_one(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 2**20)
    for size in (10, 10, 10):
        queue.append(b"a" * size)
    assert len(queue.pop(10, 25)) == 2
    queue.append(b"b" * 1000)
    assert queue.pop(10, 5) == [b"a" * 10]  # the first, whatever its size
    assert queue.pop(10, 5) == [b"b" * 1000]


def test_a_record_larger_than_a_read_chunk_is_read_whole(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 8 * 2**20)
    big = bytes(range(256)) * 4096  # 1 MiB, four read chunks
    queue.append(b"small")
    queue.append(big)
    queue.append(b"after")
    assert queue.pop(10, 16 * 2**20) == [b"small", big, b"after"]


def test_a_new_queue_removes_what_a_killed_process_left(tmp_path: Path) -> None:
    (tmp_path / "00000001.overflow").write_bytes(b"\x05\x00\x00\x00stale")
    queue = DiskQueue(tmp_path, 2**20)
    assert len(queue) == 0 and files(tmp_path) == []


def test_close_deletes_every_segment_and_refuses_appends(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 2**20, segment_bytes=16)
    for i in range(10):
        queue.append(b"%d" % i)
    queue.close()
    assert files(tmp_path) == [] and len(queue) == 0
    assert not queue.append(b"late")


def test_bounds_must_leave_room(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        DiskQueue(tmp_path, 0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.binary(min_size=0, max_size=300),
            st.tuples(st.integers(1, 20), st.integers(0, 2000)),
        ),
        max_size=120,
    )
)
def test_it_behaves_as_a_bounded_fifo(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    directory = tmp_path_factory.mktemp("q")
    budget = 4000
    queue = DiskQueue(directory, budget, segment_bytes=512)
    model: deque[bytes] = deque()
    for op in ops:
        if isinstance(op, bytes):
            fits = sum(4 + len(r) for r in model) + 4 + len(op) <= budget
            accepted = queue.append(op)
            assert accepted or not fits or queue.statistics().bytes + 4 + len(op) > budget
            if accepted:
                model.append(op)
        else:
            limit, max_bytes = op
            got = queue.pop(limit, max_bytes)
            assert got == [model.popleft() for _ in got]
            assert len(got) <= limit and (len(got) <= 1 or sum(map(len, got)) <= max_bytes)
            assert got or not model
        assert len(queue) == len(model)
        assert queue.statistics().bytes <= budget
    queue.close()
