"""A soak always ends: ``python -m harness soak`` returns whatever the cycles leaked (non-daemon
threads, child processes), and no process of the run is left, in every outcome: bounded,
leak, error, timeout, a hang at exit, Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import harness as harness_package

CHECKOUT = str(Path(harness_package.__file__).resolve().parent.parent)

LEAKY = """
import json, os, subprocess, sys, threading, time

_never = threading.Event()
_grandchildren = []

def _record():
    if not _grandchildren:
        _grandchildren.append(
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        )
        with open(os.environ["RECORD"], "w") as f:
            json.dump({"pid": os.getpid(), "grandchild": _grandchildren[0].pid}, f)

def threads(i):
    _record()
    threading.Thread(target=_never.wait, name=f"stuck-{i}").start()

def grandchild(i):
    _record()

def raises(i):
    threads(i)
    if i == 50:
        raise ValueError("boom")

def hangs(i):
    threads(i)
    if i == 100:
        time.sleep(3600)

def slow(i):
    threads(i)
    time.sleep(0.01)

class _HangsAtExit:
    def __del__(self):
        time.sleep(3600)  # at interpreter shutdown, when no other thread may run

_kept = []

def hangs_at_exit(i):
    _record()
    if not _kept:
        _kept.append(_HangsAtExit())
"""


def _start(tmp_path: Path, func: str, *args: str) -> subprocess.Popen[str]:
    """``python -m harness soak`` of ``leaky:func`` in a session of its own (no --timeout)."""
    (tmp_path / "leaky.py").write_text(LEAKY)
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "soak", "--scenario", f"leaky:{func}", "--quiet",
         "--json", str(tmp_path / "v.json"), "--report", str(tmp_path / "report"), *args],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=CHECKOUT, RECORD=str(tmp_path / "pids")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _finish(cli: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = cli.communicate(timeout=120)  # a hang guard, not a measure
    except subprocess.TimeoutExpired:
        os.killpg(cli.pid, signal.SIGKILL)
        raise
    return cli.returncode, out + err


def _pids(tmp_path: Path) -> dict[str, int]:
    deadline = time.monotonic() + 60  # a hang guard: the first cycle writes it
    path = tmp_path / "pids"
    while not (path.exists() and path.read_text().endswith("}")):
        assert time.monotonic() < deadline, "the cycle never ran"
        time.sleep(0.05)
    pids: dict[str, int] = json.loads(path.read_text())
    return pids


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _in_sessions(*sessions: int) -> list[int]:
    """Live processes whose session is one of ``sessions``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[4]) in sessions:
                found.append(int(entry.name))
    return found


def _assert_nothing_left(cli: subprocess.Popen[str], pids: dict[str, int]) -> None:
    assert not _alive(pids["pid"]), "the scenario process is still running"
    assert not _alive(pids["grandchild"]), "a process the cycle started is still running"
    assert _in_sessions(cli.pid, pids["pid"]) == []


def _verdict(tmp_path: Path) -> Any:
    return json.loads((tmp_path / "v.json").read_text())


def test_leaked_non_daemon_threads_do_not_keep_the_soak_from_ending(tmp_path: Path) -> None:
    cli = _start(tmp_path, "threads", "--cycles", "300", "--warmup", "30")
    pids = _pids(tmp_path)
    code, output = _finish(cli)
    returned = time.time()
    assert code == 1, output
    verdict = _verdict(tmp_path)
    assert "threads" in verdict["leaking_channels"]
    assert any("non-daemon threads alive" in n for n in verdict["notes"]), verdict["notes"]
    assert verdict["tracked"] and (tmp_path / "report" / "memray-leaks.bin").exists()
    _assert_nothing_left(cli, pids)
    # The report is the child's last file before its result: how long the end took.
    took = returned - (tmp_path / "report" / "report.html").stat().st_mtime
    print(f"returned {took:.1f} s after the verdict with 400 threads leaked")


@pytest.mark.parametrize(
    ("func", "args", "code", "says"),
    [
        ("grandchild", (), 0, "BOUNDED"),
        ("threads", (), 1, "LEAK"),
        ("raises", (), 2, "raised ValueError: boom"),
        ("hangs", ("--timeout", "5"), 2, "timed out after 5 s"),
    ],
)
def test_no_process_of_the_run_is_left_in_any_outcome(
    tmp_path: Path, func: str, args: tuple[str, ...], code: int, says: str
) -> None:
    cli = _start(tmp_path, func, "--cycles", "300", "--warmup", "30", "--no-memray", *args)
    pids = _pids(tmp_path)
    returncode, output = _finish(cli)
    assert returncode == code, output
    assert says in output
    _assert_nothing_left(cli, pids)
    if code != 2:
        notes = _verdict(tmp_path)["notes"]
        assert any("process(es) running in its process group" in n for n in notes), notes


def test_a_scenario_process_hung_at_exit_is_killed_after_its_result(tmp_path: Path) -> None:
    cli = _start(tmp_path, "hangs_at_exit", "--cycles", "300", "--warmup", "30", "--no-memray")
    pids = _pids(tmp_path)
    code, output = _finish(cli)
    assert code == 0, output
    notes = _verdict(tmp_path)["notes"]
    assert any("did not exit within 10 s of its result: killed" in n for n in notes), notes
    assert any("process(es) running in its process group" in n for n in notes), notes
    _assert_nothing_left(cli, pids)


@pytest.mark.parametrize(
    ("sig", "says"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")]
)
def test_a_signal_to_the_cli_mid_run_leaves_no_process(
    tmp_path: Path, sig: signal.Signals, says: str
) -> None:
    cli = _start(tmp_path, "slow", "--cycles", "100000")
    pids = _pids(tmp_path)
    os.kill(cli.pid, sig)
    code, output = _finish(cli)
    assert code == 2, output
    assert f"harness: {says}" in output
    _assert_nothing_left(cli, pids)
