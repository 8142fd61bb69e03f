"""How a scenario process ends: whatever it leaked, it and every process it started are gone.

The scenario process runs in its own session and process group (``start_new_session``), so the
processes its cycles start are in that group too unless they leave it (``setsid``,
``start_new_session=True`` of their own: those are not followed). :func:`end_group` ends the
group: a signal to the whole group, the leader awaited, SIGKILL to what is left; the leader is
reaped only after that, so its process group id cannot be reused meanwhile (a zombie's pid is
still taken). :func:`leader_exited` tells whether the leader exited without reaping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["end_group", "group_members", "leader_exited"]


def end_group(proc: subprocess.Popen[bytes], *, term_grace: float | None = None) -> list[str]:
    """End ``proc`` (a process group leader) and every process left in its group; reap it.

    ``term_grace``: SIGTERM the group first and give the leader this long to exit (its
    teardown); None: SIGKILL at once. Returns a note for each thing it had to kill besides
    the leader (processes the scenario started and left running)."""
    pgid = proc.pid
    try:
        if term_grace is not None and not leader_exited(proc):
            _signal_group(pgid, signal.SIGTERM)
            _wait_exit(proc, term_grace)
        left = group_members(pgid)
    finally:
        _signal_group(pgid, signal.SIGKILL)  # the leader (if alive) and whatever is left
        _wait_gone(pgid, 5.0)
        proc.wait()
    if not left:
        return []
    shown = ", ".join(f"{pid} {name}" for pid, name in left[:5])
    more = f" and {len(left) - 5} more" if len(left) > 5 else ""
    return [
        f"the scenario left {len(left)} process(es) running in its process group "
        f"({shown}{more}): killed"
    ]


def leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, leaving it unreaped (a zombie) so its pid stays taken."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # pragma: no cover - not Linux/BSD: reap it then
        return proc.poll() is not None
    try:
        state = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:  # reaped already (by someone else)
        return True
    return state is not None


def group_members(pgid: int) -> list[tuple[int, str]]:
    """Live processes (not zombies) of process group ``pgid`` other than its leader, as (pid,
    command); empty where /proc cannot be read."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_bytes()
            name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
            state, _ppid, group = raw[raw.rindex(b")") + 2 :].split()[:3]
            if int(group) == pgid and state != b"Z":
                members.append((int(entry.name), name))
    return sorted(members)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(pgid: int, seconds: float) -> None:
    """Wait up to ``seconds`` until no live process is left in group ``pgid`` but its leader
    (SIGKILL takes effect asynchronously; the dead become zombies until their parent or init
    reaps them)."""
    deadline = time.monotonic() + seconds
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc`` to exit, without reaping it."""
    deadline = time.monotonic() + seconds
    while not leader_exited(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
