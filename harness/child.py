"""The scenario process: ``python -m harness _child SPEC``, and the parent's side of it.

The protocol: the parent passes the spec, its :class:`~harness.config.Settings` layer as
JSON, where to write the verdict JSON, and a pipe's file descriptor; the child writes one JSON
object per line on the pipe (``{"event": "tick"|"phase", "phase", "done", "total"}`` for
progress, ``{"event": "error", "kind", "message"}`` when it cannot decide) and exits with the
verdict's status (0 bounded, 1 leak, 3 undecided) or 2. Its stdout and stderr go to a log file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from harness.analysis import Verdict
from harness.config import Settings
from harness.errors import CycleTimeout, SoakError, UsageError
from harness.model import Progress

__all__ = ["CHILD_KILL_GRACE", "SubprocessResult", "child_main", "run_in_subprocess"]

CHILD_KILL_GRACE = 30.0
"""Seconds past ``timeout`` before the parent kills a child that did not stop by itself."""


@dataclass
class SubprocessResult:
    """What a soak in a fresh subprocess ended with."""

    code: int
    """0 bounded, 1 leak found, 3 undecided, 2 could not decide (usage, a cycle raised, timed
    out, crashed)."""
    verdict: Verdict | None
    reason: str = ""
    """One line, when ``code`` is 2."""
    log: str | None = None
    """Where the child's own output went (tracebacks included)."""
    kind: str = ""
    """When ``code`` is 2: usage, CycleError, SoakTimeout, CycleTimeout (a stall),
    ScenarioError, crash, timeout."""
    stacks: dict[str, list[str]] = field(default_factory=dict)
    """After a stall (CycleTimeout): where the cycle, every task and every thread waited."""


def run_in_subprocess(
    spec: str,
    *,
    settings: Settings | None = None,
    on_progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> SubprocessResult:
    """Soak ``spec`` (a built-in name or ``MODULE:FUNC``) in a fresh ``python -m harness _child``.

    ``options`` (``cycles``, ``warmup``, ``report_dir``, ``timeout``, ``thresholds``,
    ``memray``, ``baseline``... the fields of :class:`~harness.config.Settings`) are a layer on
    top of ``settings``, which is on top of the scenario's own. The child gets this process's
    environment and current directory (so ``MODULE`` imports as it would here) plus the
    directory holding ``harness`` on PYTHONPATH. Its output goes to a log file
    (``scenario.log`` in the report directory, else a temporary file), never to the terminal;
    progress comes back over a pipe. Past ``timeout`` the child stops itself; if it does not
    within :data:`CHILD_KILL_GRACE` seconds its process group is killed.
    """
    layer = Settings.of(**options).over(settings or Settings())
    report_dir = layer.report_dir
    tmp = tempfile.mkdtemp(prefix="soak-child-")
    result_path = Path(tmp) / "verdict.json"
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(report_dir) / "scenario.log"
    else:
        log_path = Path(tmp) / "scenario.log"
    read_fd, write_fd = os.pipe()
    args = [
        sys.executable, "-m", "harness", "_child", spec, "--result", str(result_path),
        "--progress-fd", str(write_fd), "--settings", layer.to_json(),
    ]  # fmt: skip
    messages: list[dict[str, Any]] = []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            env=_child_env(env),
            start_new_session=True,
        )
    os.close(write_fd)
    timeout = layer.timeout
    hard_deadline = (time.monotonic() + timeout + CHILD_KILL_GRACE) if timeout else math.inf
    try:
        killed = _pump_child(proc, read_fd, messages, on_progress, hard_deadline)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        os.close(read_fd)
    code = proc.wait()
    try:
        verdict = Verdict.load(result_path) if result_path.exists() else None
    except ValueError:
        verdict = None
    if report_dir is not None or code in (0, 1, 3):
        shutil.rmtree(tmp, ignore_errors=True)  # keeps the log of a failed run without a report
    log_name = str(log_path) if log_path.exists() else None
    return _result(code, verdict, messages, killed, timeout, log_name)


def _result(
    code: int,
    verdict: Verdict | None,
    messages: list[dict[str, Any]],
    killed: bool,
    timeout: float | None,
    log_name: str | None,
) -> SubprocessResult:
    if killed:
        last = max((int(m.get("done", 0)) for m in messages if m.get("event") == "tick"), default=0)
        return SubprocessResult(
            2, None, f"timed out after {timeout:g} s (the scenario did not stop; killed it "
            f"near cycle {last})", log_name, "timeout",
        )  # fmt: skip
    errors = [m for m in messages if m.get("event") == "error"]
    if errors:
        last_error = errors[-1]
        stacks = last_error.get("stacks")
        return SubprocessResult(
            2, verdict, str(last_error.get("message", "failed")), log_name,
            str(last_error.get("kind", "")), stacks if isinstance(stacks, dict) else {},
        )  # fmt: skip
    if code in (0, 1, 3) and verdict is not None:
        return SubprocessResult(code, verdict, "", log_name)
    if code < 0:
        name = (
            signal.Signals(-code).name
            if -code in signal.Signals.__members__.values()
            else str(-code)
        )
        reason = f"the scenario process died of signal {name}"
    else:
        reason = f"the scenario process exited with status {code} without a verdict"
    return SubprocessResult(2, verdict, reason, log_name, "crash")


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child_env = dict(os.environ if env is None else env)
    here = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        paths.append(here)
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env["MPLBACKEND"] = "Agg"
    return child_env


def _pump_child(
    proc: subprocess.Popen[bytes],
    fd: int,
    messages: list[dict[str, Any]],
    on_progress: Progress | None,
    hard_deadline: float,
) -> bool:
    """Relay the child's progress until it exits; kill it past the deadline. True if killed."""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    open_ = True
    try:
        while True:
            if time.monotonic() > hard_deadline:
                _kill_group(proc)
                return True
            if open_ and sel.select(timeout=0.2):
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_ = False
                    sel.unregister(fd)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    _relay(line, messages, on_progress)
            elif not open_:
                try:
                    proc.wait(timeout=0.2)
                    return False
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is not None and not open_:
                return False
    finally:
        sel.close()


def _relay(line: bytes, messages: list[dict[str, Any]], on_progress: Progress | None) -> None:
    try:
        msg = json.loads(line)
    except ValueError:
        return
    if msg.get("event") == "tick" and messages and messages[-1].get("event") == "tick":
        messages[-1] = msg  # keep only the latest tick
    else:
        messages.append(msg)
    if on_progress is not None and msg.get("event") in ("tick", "phase"):
        on_progress(str(msg.get("phase")), int(msg.get("done", 0)), int(msg.get("total", 0)))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group (it tears down), SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the child's side ------------------------------------------------------------------------------


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness _child SPEC ...``: run one soak, report over the progress pipe."""
    import argparse

    p = argparse.ArgumentParser(prog="harness _child")
    p.add_argument("spec")
    p.add_argument("--result", required=True)
    p.add_argument("--progress-fd", type=int, default=-1)
    p.add_argument("--settings", default="{}")
    a = p.parse_args(argv)
    pipe = _Pipe(a.progress_fd)
    signal.signal(signal.SIGTERM, _on_term)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from harness.engine import soak
        from harness.scenarios import resolve

        layer = Settings.from_json(a.settings)
        verdict = soak(resolve(a.spec), settings=layer, progress=pipe.progress)
    except BaseException as exc:
        kind = (
            "usage" if isinstance(exc, UsageError)
            else type(exc).__name__ if isinstance(exc, SoakError) else "crash"
        )  # fmt: skip
        message = str(exc) if isinstance(exc, SoakError) else f"{type(exc).__name__}: {exc}"
        error: dict[str, Any] = {"event": "error", "kind": kind, "message": message}
        if isinstance(exc, CycleTimeout):
            error["stacks"] = exc.stacks
        pipe.send(error)
        traceback.print_exc()
        if isinstance(exc, CycleTimeout):
            _print_stacks(exc)
        return 2
    Path(a.result).write_text(verdict.to_json(), encoding="utf-8")
    pipe.send({"event": "phase", "phase": "done", "done": verdict.cycles, "total": verdict.cycles})
    return verdict.exit_code


def _print_stacks(exc: CycleTimeout) -> None:
    """Into the log: where the stalled cycle, every task and every thread waited."""
    print(f"\nAt the deadline of cycle {exc.cycle} ({exc.timeout:g} s):", file=sys.stderr)
    for name, frames in exc.stacks.items():
        print(f"  {name}:", file=sys.stderr)
        for frame in frames:
            print(f"    {frame}", file=sys.stderr)


class _Pipe:
    """The child's end of the progress pipe: JSON lines, ticks at most ten a second."""

    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", buffering=1) if fd >= 0 else None
        self.last = 0.0

    def send(self, msg: dict[str, Any]) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.write(json.dumps(msg) + "\n")

    def progress(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        cycling = phase in ("warm-up", "measured", "tracked") and 0 < done < total
        if cycling and now - self.last < 0.1:
            return
        self.last = now
        self.send({"event": "tick", "phase": phase, "done": done, "total": total})


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SoakError("stopped by SIGTERM")
