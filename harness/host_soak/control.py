"""The host soak's processes, from the scenario process's side: started with ``python -P``, and
driven through a control pipe."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["Controlled", "start", "stop"]


class Controlled:
    """A process of this package with a control pipe: one JSON line each way per command; its
    first line says it is ready."""

    def __init__(self, script: str, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = start(script, args, log, control=True)
        self.ready = self._read()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.log.stem} process exited; {self._tail()}") from None
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            raise RuntimeError(f"{self.log.stem} process exited ({code}); {self._tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.log.stem} process: {reply['error']}")
        return reply

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "its log ends:\n" + "\n".join(self.log.read_text().splitlines()[-30:])
        return "no log"

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)  # a graceful shutdown: the lifespan closes the host
        stop(self.proc, signal.SIGTERM)


def start(
    script: str, args: list[str], log: Path, *, control: bool = False
) -> subprocess.Popen[str]:
    """``python -P`` the process ``script`` of this package (``host_process.py``, ...): neither
    the harness nor this directory is importable there; its output goes to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).resolve().parent / script), *args],
            stdin=subprocess.PIPE if control else subprocess.DEVNULL,
            stdout=subprocess.PIPE if control else out,
            stderr=out,
            text=True,
        )


def stop(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal ``proc`` and wait for it; killed after 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
