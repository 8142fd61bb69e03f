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
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from harness.analysis import Verdict
from harness.config import Settings, run_timeout
from harness.ending import end_group, leader_exited
from harness.errors import CycleTimeout, SoakError, UsageError
from harness.model import Progress

__all__ = [
    "CHILD_EXIT_GRACE",
    "CHILD_KILL_GRACE",
    "RESULT_EXIT_GRACE",
    "SubprocessResult",
    "child_main",
    "run_in_subprocess",
]

CHILD_KILL_GRACE = 30.0
"""Seconds past ``timeout`` before the parent kills a child that did not stop by itself."""
CHILD_EXIT_GRACE = 3.0
"""Seconds the scenario process's interpreter may take to shut down after it sent its result
(join its non-daemon threads, run atexit); past them it exits at once (``os._exit``)."""
RESULT_EXIT_GRACE = 10.0
"""Seconds the parent gives the scenario process to exit after its result; then it kills it."""


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
    notes: list[str] = field(default_factory=list)
    """What ending the scenario process took beyond its own exit (threads it did not wait
    for, processes killed); in the verdict's notes too when there is one."""


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
    progress comes back over a pipe.

    It always ends, and leaves no process behind: the child runs in its own process group;
    past its run's ``timeout`` it stops itself, and if it does not within
    :data:`CHILD_KILL_GRACE` seconds the group is killed; after its result it exits within
    :data:`CHILD_EXIT_GRACE` seconds whatever threads it leaked, else it is killed
    :data:`RESULT_EXIT_GRACE` seconds after the result; whatever is left in its group then is
    killed too (noted in :attr:`SubprocessResult.notes`); and if this call is interrupted
    (KeyboardInterrupt, any exception) the group is ended before it propagates.
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
    watch = _Watch(proc, on_progress, layer.timeout)
    try:
        ended = watch.pump(read_fd)
    except BaseException:
        end_group(proc, term_grace=5.0)
        raise
    finally:
        os.close(read_fd)
    if ended == "lingered":
        watch.notes.append(
            f"the scenario process did not exit within {RESULT_EXIT_GRACE:g} s of its result"
            f"{watch.alive_after_result()}: killed"
        )
    watch.notes += end_group(proc, term_grace=5.0 if ended == "timeout" else None)
    code = proc.returncode if ended != "lingered" else watch.result_code()
    try:
        verdict = Verdict.load(result_path) if result_path.exists() else None
    except ValueError:
        verdict = None
    if verdict is not None and watch.notes:
        verdict.notes += watch.notes
        if report_dir is not None and (Path(report_dir) / "verdict.json").exists():
            (Path(report_dir) / "verdict.json").write_text(verdict.to_json(), encoding="utf-8")
    if watch.notes and log_path.exists():
        with open(log_path, "a", encoding="utf-8") as log_file:
            log_file.writelines(f"harness: {note}\n" for note in watch.notes)
    if report_dir is not None or code in (0, 1, 3):
        shutil.rmtree(tmp, ignore_errors=True)  # keeps the log of a failed run without a report
    log_name = str(log_path) if log_path.exists() else None
    result = _result(code, verdict, watch.messages, ended == "timeout", watch.timeout, log_name)
    result.notes = watch.notes
    return result


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
            2, None, f"timed out after {timeout or 0:g} s (the scenario did not stop; killed it "
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


class _Watch:
    """The parent's watch over a running child: its messages, its deadlines, what it did."""

    def __init__(
        self, proc: subprocess.Popen[bytes], on_progress: Progress | None, timeout: float | None
    ) -> None:
        self.proc = proc
        self.on_progress = on_progress
        self.messages: list[dict[str, Any]] = []
        self.notes: list[str] = []
        # Until the child says which timeout its run has (the scenario's own may be longer),
        # the layer's or the default one bounds it, its import of the scenario included.
        self.timeout = run_timeout(timeout)
        self.deadline = _deadline(self.timeout)
        self.result_at: float | None = None
        self.exiting: dict[str, Any] = {}

    def pump(self, fd: int) -> str:
        """Relay the child's progress until it exits: "exited"; or kill-worthy: "timeout"
        (past its deadline), "lingered" (alive :data:`RESULT_EXIT_GRACE` s after its result).
        """
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        buf, open_ = b"", True
        try:
            while True:
                now = time.monotonic()
                if now > self.deadline:
                    return "timeout"
                if self.result_at is not None and now > self.result_at + RESULT_EXIT_GRACE:
                    return "lingered"
                if open_ and sel.select(timeout=0.2):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_ = False
                        sel.unregister(fd)
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        self._relay(line)
                elif not open_:
                    time.sleep(0.05)
                # Exited, even if the pipe is still open (a process it forked holds it).
                if leader_exited(self.proc):
                    if open_:
                        self._drain(sel, fd, buf)
                    return "exited"
        finally:
            sel.close()

    def _drain(self, sel: selectors.BaseSelector, fd: int, buf: bytes) -> None:
        """What the exited child wrote last, without waiting for an EOF that may not come."""
        while sel.select(timeout=0):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
        for line in buf.split(b"\n"):
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        if event == "start":
            timeout = msg.get("timeout")
            self.timeout = float(timeout) if isinstance(timeout, (int, float)) else None
            self.deadline = _deadline(self.timeout)
            return
        if event == "note":
            self.notes.append(str(msg.get("note", "")))
            return
        if event == "exiting":
            self.exiting = msg
            self.result_at = time.monotonic()
            return
        if event == "tick" and self.messages and self.messages[-1].get("event") == "tick":
            self.messages[-1] = msg  # keep only the latest tick
        else:
            self.messages.append(msg)
        if self.on_progress is not None and event in ("tick", "phase"):
            done, total = int(msg.get("done", 0)), int(msg.get("total", 0))
            self.on_progress(str(msg.get("phase")), done, total)

    def alive_after_result(self) -> str:
        threads = self.exiting.get("threads")
        return f" ({int(threads):,} non-daemon threads alive)" if threads else ""

    def result_code(self) -> int:
        """The exit status the child announced with its result (it was killed before it)."""
        return int(self.exiting.get("code", 2))


def _deadline(timeout: float | None) -> float:
    return time.monotonic() + timeout + CHILD_KILL_GRACE if timeout else math.inf


# -- the child's side ------------------------------------------------------------------------------


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness _child SPEC ...``: run one soak, report over the progress pipe.

    After the result is sent the process ends within :data:`CHILD_EXIT_GRACE` seconds
    (:func:`_exit_soon`), whatever threads the cycles left running."""
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
    code = _soak(a.spec, a.settings, Path(a.result), pipe)
    _exit_soon(code, pipe)
    return code


def _soak(spec: str, settings: str, result: Path, pipe: _Pipe) -> int:
    """Run the soak, write the verdict to ``result``, say so on the pipe; the exit status."""
    try:
        from harness.config import configure
        from harness.engine import soak
        from harness.scenarios import resolve

        layer = Settings.from_json(settings)
        sc = resolve(spec)
        pipe.send({"event": "start", "timeout": configure(sc.name, sc.settings, layer).timeout})
        verdict = soak(sc, settings=layer, progress=pipe.progress)
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
    result.write_text(verdict.to_json(), encoding="utf-8")
    pipe.send({"event": "phase", "phase": "done", "done": verdict.cycles, "total": verdict.cycles})
    return verdict.exit_code


def _exit_soon(code: int, pipe: _Pipe) -> None:
    """Make sure this process exits ``code`` within :data:`CHILD_EXIT_GRACE` seconds.

    The result is written and memray's capture closed by now. The interpreter's shutdown
    waits for every non-daemon thread, and a cycle that leaked some (a thread per cancelled
    connection, say) would keep it alive for ever; so a daemon timer ends the process
    (``os._exit``, after flushing the log) if shutdown has not finished by then, and says so
    on the pipe. A clean process shuts down normally (atexit handlers run)."""
    threads = _non_daemon_threads()
    pipe.send({"event": "exiting", "code": code, "threads": len(threads)})

    def end_now() -> None:
        alive = _non_daemon_threads()
        names = ", ".join(t.name for t in alive[:3]) + (", ..." if len(alive) > 3 else "")
        waited = (
            f" ({len(alive):,} non-daemon threads alive: {names}): it exited without waiting "
            "for them" if alive else " (its shutdown hung): it exited at once"
        )  # fmt: skip
        pipe.send({"event": "note", "note": (
            f"the scenario process had not exited {CHILD_EXIT_GRACE:g} s after its result{waited}"
        )})  # fmt: skip
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pipe.close()
        os._exit(code)

    timer = threading.Timer(CHILD_EXIT_GRACE, end_now)
    timer.name = "harness-exit"
    timer.daemon = True
    timer.start()


def _non_daemon_threads() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if not t.daemon and t is not main and t.is_alive()]


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
            with contextlib.suppress(OSError, ValueError):
                self.out.write(json.dumps(msg) + "\n")

    def close(self) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError, ValueError):
                self.out.close()

    def progress(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        cycling = phase in ("warm-up", "measured", "tracked") and 0 < done < total
        if cycling and now - self.last < 0.1:
            return
        self.last = now
        self.send({"event": "tick", "phase": phase, "done": done, "total": total})


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SoakError("stopped by SIGTERM")
