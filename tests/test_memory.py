"""waclient.memory: sizes, machine memory from cgroups, snapshots, and the guard's decisions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from waclient import HandlerRegistry
from waclient.events import MessageEv
from waclient.lifetime import LifetimeError
from waclient.memory import (
    GuardStatus,
    MachineMemory,
    MemoryGuard,
    MemoryLimits,
    derive_limits,
    machine_memory,
    parse_size,
    process_memory,
    release_free_memory,
    take_snapshot,
)

MiB = 2**20


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        (4096, 4096),
        ("200MiB", 200 * MiB),
        ("200 MiB", 200 * MiB),
        ("200mi", 200 * MiB),
        ("512M", 512_000_000),
        ("1.5GiB", int(1.5 * 2**30)),
        ("64k", 64_000),
        ("64KiB", 65536),
        ("0", 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "12 parsecs", "-1", "nan", "inf", "1e400"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


# -- the machine -------------------------------------------------------------------------------


def _cgroup(tmp_path: Path, files: dict[str, str], self_cgroup: str = "0::/\n") -> Path:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self-cgroup").write_text(self_cgroup)
    return root


def test_machine_memory_cgroup_v2(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"memory.max": "268435456\n"})
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=8 * 2**30
    )
    assert found.total == 256 * MiB
    assert found.source.startswith("cgroup v2")


def test_machine_memory_cgroup_v2_nested_path(tmp_path: Path) -> None:
    root = _cgroup(
        tmp_path,
        {"memory.max": "max\n", "app/slice/memory.max": "536870912\n"},
        self_cgroup="0::/app/slice\n",
    )
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=8 * 2**30
    )
    assert found.total == 512 * MiB


def test_machine_memory_cgroup_v1_nested_and_ancestors(tmp_path: Path) -> None:
    root = _cgroup(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/box/memory.limit_in_bytes": str(400 * MiB),
            "memory/box/app/memory.limit_in_bytes": str(600 * MiB),  # the parent's is lower
        },
        self_cgroup="5:cpu,memory:/box/app\n0::/\n",
    )
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=8 * 2**30
    )
    assert found.total == 400 * MiB and "box" in found.source


def test_machine_memory_cgroup_v1(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"memory/memory.limit_in_bytes": str(300 * MiB)})
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=8 * 2**30
    )
    assert found.total == 300 * MiB
    assert found.source.startswith("cgroup v1")


@pytest.mark.parametrize("value", ["max", "9223372036854771712", "garbage", ""])
def test_machine_memory_no_limit_is_ram(tmp_path: Path, value: str) -> None:
    root = _cgroup(
        tmp_path, {"memory.max": value, "memory/memory.limit_in_bytes": "9223372036854771712"}
    )
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=256 * MiB
    )
    assert found == MachineMemory(256 * MiB, "ram")


def test_machine_memory_limit_above_ram_is_ram(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"memory.max": str(4 * 2**30)})
    found = machine_memory(
        cgroup_root=root, proc_self_cgroup=tmp_path / "self-cgroup", total_ram=2 * 2**30
    )
    assert found.total == 2 * 2**30 and found.source == "ram"


def test_machine_memory_here_is_positive() -> None:
    assert machine_memory().total > 0


def test_derive_limits_fractions_and_overrides() -> None:
    machine = MachineMemory(1000 * MiB, "ram")
    limits = derive_limits(machine)
    assert limits.soft == int(1000 * MiB * 0.8)
    assert limits.hard == int(1000 * MiB * 0.9)
    assert "80%" in limits.source and "90%" in limits.source
    limits = derive_limits(machine, soft=100 * MiB, hard_fraction=0.5)
    assert (limits.soft, limits.hard) == (100 * MiB, 500 * MiB)
    assert "soft set" in limits.source


def test_derive_limits_rejects_inverted() -> None:
    machine = MachineMemory(1000 * MiB, "ram")
    with pytest.raises(ValueError, match="soft < hard"):
        derive_limits(machine, soft=600 * MiB, hard=500 * MiB)
    with pytest.raises(ValueError, match="fractions"):
        derive_limits(machine, soft_fraction=0.9, hard_fraction=0.8)
    with pytest.raises(ValueError, match="fractions"):
        derive_limits(machine, soft_fraction=1.2)


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_of_this_process() -> None:
    reg = HandlerRegistry(max_listeners=None)
    scope = reg.scope()
    scope.on(MessageEv, lambda ev: None)
    scope.on(MessageEv, lambda ev: None)
    snap = take_snapshot(registry=reg)
    scope.close()
    assert snap.rss > 10 * MiB
    assert snap.pss is None or 0 < snap.pss <= snap.rss
    assert snap.py_blocks > 1000
    assert snap.gc_objects is None
    assert snap.fds > 2 and snap.threads >= 1 and snap.python_threads >= 1
    assert snap.tasks is None  # no running loop here
    assert snap.listeners == {"Message": 2}
    assert snap.total == (snap.pss or snap.rss)
    line = snap.log_line()
    assert line.startswith("memory rss=") and "listeners=2" in line and "Message:2" in line
    d = snap.to_dict()
    assert d["listeners"] == {"Message": 2} and d["workers"] == []


def test_snapshot_counts_gc_objects_on_demand() -> None:
    snap = take_snapshot(gc_objects=True, pss=False)
    assert snap.gc_objects is not None and snap.gc_objects > 1000
    assert snap.pss is None


async def test_snapshot_counts_tasks_in_a_loop() -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(stop.wait()) for _ in range(3)]
    snap = take_snapshot()
    stop.set()
    await asyncio.gather(*tasks)
    assert snap.tasks is not None and snap.tasks >= 4  # the test's own task and three more


def test_snapshot_includes_workers_and_skips_dead_ones() -> None:
    parent = os.getppid()
    snap = take_snapshot(worker_pids=[parent, 2**22 + 12345])  # the second pid does not exist
    assert [w.pid for w in snap.workers] == [parent]
    assert snap.total_rss == snap.rss + snap.workers[0].rss
    assert f"worker[{parent}]" in snap.log_line()


def test_process_memory_of_a_missing_process_is_none() -> None:
    assert process_memory(2**22 + 12345) is None


# -- the guard ---------------------------------------------------------------------------------


class Meter:
    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


LIMITS = MemoryLimits(soft=100, hard=200, machine=250, source="test")


def test_limits_need_soft_below_hard() -> None:
    with pytest.raises(ValueError):
        MemoryLimits(soft=200, hard=200, machine=250, source="test")


def test_guard_levels_shedding_and_hysteresis(caplog: pytest.LogCaptureFixture) -> None:
    meter = Meter(50)
    softs: list[GuardStatus] = []
    guard = MemoryGuard(LIMITS, measure=meter, on_soft=softs.append, hysteresis=0.1)
    assert guard.check().level == "ok" and not guard.shedding
    meter.value = 100
    with caplog.at_level(logging.WARNING, logger="waclient.memory"):
        status = guard.check()
    assert status.level == "soft" and status.shedding and guard.shedding
    assert "soft limit" in caplog.text
    assert len(softs) == 1 and guard.soft_events == 1
    meter.value = 95  # inside the hysteresis band (>= 90): still shedding, no new event
    assert guard.check().level == "soft"
    assert len(softs) == 1
    meter.value = 89
    assert guard.check().level == "ok" and not guard.shedding
    meter.value = 150
    guard.check()
    assert len(softs) == 2 and guard.soft_events == 2
    assert guard.peak == 150


def test_guard_hard_limit_calls_once() -> None:
    meter = Meter(250)
    hards: list[GuardStatus] = []
    guard = MemoryGuard(LIMITS, measure=meter, on_hard=hards.append)
    assert guard.check().level == "hard" and guard.shedding
    guard.check()
    meter.value = 10
    guard.check()
    meter.value = 300
    guard.check()
    assert len(hards) == 1 and guard.hard_triggered
    assert hards[0].used == 250 and hards[0].to_dict()["hard"] == 200


def test_guard_callback_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def boom(status: GuardStatus) -> None:
        raise RuntimeError("callback failed")

    guard = MemoryGuard(LIMITS, measure=Meter(500), on_soft=boom, on_hard=boom)
    with caplog.at_level(logging.ERROR, logger="waclient.memory"):
        assert guard.check().level == "hard"
    assert caplog.text.count("memory guard callback failed") == 2


def test_guard_log_line_interval() -> None:
    now = [0.0]
    guard = MemoryGuard(
        LIMITS,
        measure=Meter(10),
        snapshot=lambda: take_snapshot(pss=False),
        log_interval=300,
        clock=lambda: now[0],
    )
    guard.tick()
    assert guard.log_lines == 1 and guard.last_snapshot is not None
    now[0] = 299.0
    guard.tick()
    assert guard.log_lines == 1
    now[0] = 300.0
    guard.tick()
    assert guard.log_lines == 2
    assert guard.checks == 3


def test_guard_log_line_is_info(caplog: pytest.LogCaptureFixture) -> None:
    guard = MemoryGuard(LIMITS, measure=Meter(10), log_interval=300)
    with caplog.at_level(logging.INFO, logger="waclient.memory"):
        guard.tick()
    assert "memory rss=" in caplog.text and "level=ok" in caplog.text


def test_guard_no_log_line_when_interval_is_zero() -> None:
    guard = MemoryGuard(LIMITS, measure=Meter(10), log_interval=0)
    guard.tick()
    guard.tick()
    assert guard.log_lines == 0


FRAGMENTED = """
import json, sys
from waclient.memory import release_free_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

chunks = [bytearray(60_000) for _ in range(800)]  # 46 MiB under glibc's mmap threshold
del chunks[::2]  # free every other: holes between live chunks, none at the top of the heap
before = rss()
released = release_free_memory()
print(json.dumps({"released": released, "before": before, "after": rss()}))
"""


def test_release_free_memory_returns_freed_pages_in_the_middle_of_the_heap() -> None:
    # In a fresh process: 400 chunks of 60 kB freed between 400 live ones stay resident
    # (free() only returns the top of the heap) until the trim hands them back.
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True,
                         check=True)  # fmt: skip
    result = json.loads(out.stdout)
    if not result["released"]:
        pytest.skip("no malloc_trim here (not glibc)")
    freed = 400 * 60_000
    assert result["before"] - result["after"] > freed // 2


def test_guard_trims_before_each_check() -> None:
    guard = MemoryGuard(LIMITS, measure=Meter(10))
    guard.check()
    guard.check()
    trims = 2 if release_free_memory() else 0
    assert guard.statistics().trims == trims
    untrimmed = MemoryGuard(LIMITS, measure=Meter(10), trim=False)
    untrimmed.check()
    assert untrimmed.statistics().trims == 0


def test_guard_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryGuard(LIMITS, check_interval=0)
    with pytest.raises(ValueError):
        MemoryGuard(LIMITS, log_interval=-1)
    with pytest.raises(ValueError):
        MemoryGuard(LIMITS, hysteresis=1)


async def test_guard_task_checks_until_closed() -> None:
    meter = Meter(10)
    reached = asyncio.Event()
    seen: list[GuardStatus] = []

    def on_soft(status: GuardStatus) -> None:
        seen.append(status)
        reached.set()

    guard = MemoryGuard(LIMITS, measure=meter, on_soft=on_soft, check_interval=0.01, log_interval=0)
    await guard.start()
    await guard.start()  # idempotent
    meter.value = 150
    await asyncio.wait_for(reached.wait(), 30)
    await guard.close()
    await guard.close()
    assert guard.tasks() == 0  # the task is gone
    with pytest.raises(LifetimeError, match="cannot be reopened"):
        await guard.start()  # never restarted once closed
    assert guard.tasks() == 0
    assert seen[0].level == "soft"
    stats = guard.statistics()
    assert stats.level == "soft" and stats.limits.soft == 100
    assert stats.to_dict()["limits"]["soft"] == 100


async def test_guard_task_survives_a_failing_measure(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    recovered = asyncio.Event()

    def measure() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("proc went away")
        recovered.set()
        return 10

    guard = MemoryGuard(LIMITS, measure=measure, check_interval=0.01, log_interval=0)
    with caplog.at_level(logging.ERROR, logger="waclient.memory"):
        await guard.start()
        await asyncio.wait_for(recovered.wait(), 30)
        await guard.close()
    assert "memory guard check failed" in caplog.text


def test_default_measure_is_own_memory() -> None:
    guard = MemoryGuard(MemoryLimits(soft=2**50, hard=2**51, machine=2**52, source="test"))
    status = guard.check()
    assert status.level == "ok" and status.used > 10 * MiB
