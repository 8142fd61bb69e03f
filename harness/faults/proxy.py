"""A loopback TCP proxy whose faults can be switched from any thread: reset, blackhole, latency,
refuse. Put it between a client and a real server (e.g. a ``RedisServer``) to break connections
the way networks do, without leaving the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from harness.faults.loopback import LOOPBACK, LoopbackListener, LoopbackTool, Waker, close_rst

_CLOSE_TIMEOUT = 10.0
"""How long ``reset()`` waits for an aborted connection's threads to close it. They are woken at
once and never block elsewhere, so reaching this is a bug, reported as RuntimeError."""


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


class FaultProxy(LoopbackTool):
    """A loopback TCP proxy in front of ``target`` whose faults can be switched from any thread.

    Two threads per connection, one per direction; each reads at most ``chunk_size`` bytes and
    forwards them before reading again, so nothing is buffered beyond one chunk per direction.
    Every control is synchronous: when ``reset()`` returns, the RSTs are sent.
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
        self._chunk = chunk_size
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        super().__init__(LoopbackListener(self._accept, name="FaultProxy", port=port, backlog=128))
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
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return (LOOPBACK, self.port)

    @property
    def url(self) -> str:
        """Redis URL through the proxy, database 0."""
        return self.redis_url(0)

    def redis_url(self, db: int = 0) -> str:
        """Redis URL through the proxy for database ``db``."""
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(
        self, predicate: Callable[[ProxyStats], bool], timeout: float = 30.0
    ) -> ProxyStats:
        """Block until ``predicate(stats)`` holds, woken by each change; return those stats.

        Raises TimeoutError (with the last stats) after ``timeout`` seconds: a guard for a
        condition that never comes, not a timing.
        """
        with self._changed:
            if self._changed.wait_for(lambda: predicate(self._stats_locked()), timeout):
                return self._stats_locked()
            raise TimeoutError(f"proxy stats never matched in {timeout:g}s: {self._stats_locked()}")

    @property
    def blackholed(self) -> bool:
        """True while ``blackhole(True)`` is on."""
        return self._blackhole

    @property
    def refusing(self) -> bool:
        """True while ``refuse(True)`` is on."""
        return self._refuse

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection (RST), and join all threads; idempotent."""
        with self._lock:
            self._stopping = True
            conns = list(self._conns)
        super().stop(timeout)
        self._abort(conns)
        # No new threads start once _stopping is set, so this set is final.
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}

    def reset(self) -> int:
        """Reset every current connection, both sides; returns how many.

        Synchronous: when it returns, each of those connections is closed and its RSTs are sent,
        so a client's next read on one fails (a pool that checks its idle connections before
        lending one may also notice and reconnect instead).
        """
        with self._lock:
            conns = list(self._conns)
        return self._abort(conns)

    def blackhole(self, on: bool) -> None:
        """On: read and discard everything, and let new connections hang.

        Off: forward again, after resetting every connection that lost data or was opened
        during the blackhole (their byte streams are no longer consistent), so clients reconnect.
        The resets are sent by the time it returns.
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

    def __repr__(self) -> str:
        return f"FaultProxy(port={self.port}, target={self._target!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _stats_locked(self) -> ProxyStats:
        return ProxyStats(**self._counts, active=len(self._conns))

    def _count(self, name: str, n: int = 1) -> None:
        with self._changed:
            self._counts[name] += n
            self._changed.notify_all()

    def _abort(self, conns: list[_Conn]) -> int:
        """Reset ``conns`` and wait until each is closed; returns how many this call reset."""
        n = sum(conn.abort() for conn in conns)
        if n:
            self._count("resets", n)
        for conn in conns:
            if not conn.wait_closed(_CLOSE_TIMEOUT):
                raise RuntimeError(f"{self!r}: a reset connection was not closed")
        return n

    def _accept(self, client: socket.socket) -> None:
        self._count("accepted")
        if self._refuse:
            self._count("refused")
            close_rst(client)
            return
        conn = _Conn(client, tainted=self._blackhole)
        with self._changed:
            if self._stopping:
                conn.close()
                return
            self._conns.add(conn)
            self._spawn_locked(self._serve, (conn,), "up")
            self._changed.notify_all()

    def _spawn_locked(
        self, target: Callable[..., None], args: tuple[object, ...], kind: str
    ) -> None:
        """Start a connection thread; caller holds ``self._lock`` (so ``stop()`` sees it)."""
        self._threads = {t for t in self._threads if t.is_alive()}
        thread = threading.Thread(
            target=target, args=args, name=f"FaultProxy-{self.port}-{kind}", daemon=True
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
            upstream = self._connect_upstream(conn)
            if upstream is None:
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

    def _connect_upstream(self, conn: _Conn) -> socket.socket | None:
        """The connected upstream socket; None if it failed (counted, conn aborted) or the
        conn was aborted meanwhile. The connect is non-blocking, so a reset never waits for it."""
        try:
            upstream = _dial(self._target)
            if not conn.attach(upstream):
                return None
            if not conn.wait(upstream, select.POLLOUT, self._connect_timeout):
                if conn.aborted:
                    return None
                raise TimeoutError(f"connect to {self._target} timed out")
            err = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return upstream
        except OSError:
            self._count("upstream_failures")
            conn.abort()
            return None

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
        with self._changed:
            conn.pumps -= 1
            last = conn.pumps == 0
            if last:
                self._conns.discard(conn)
        if last:
            conn.close()
            with self._changed:
                self._changed.notify_all()


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
        self._closed = threading.Event()
        self._waker = Waker()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def attach(self, upstream: socket.socket) -> bool:
        """Adopt the upstream socket (closed with the conn); False (and closed) if aborted."""
        with self._lock:
            if self._aborted or self._closed.is_set():
                upstream.close()
                return False
            self.upstream = upstream
            return True

    def abort(self) -> bool:
        """Ask the pumps to stop; the sockets are closed with RST. False if already asked."""
        with self._lock:
            if self._aborted or self._closed.is_set():
                return False
            self._aborted = True
        self._waker.wake()
        return True

    def wait_closed(self, timeout: float) -> bool:
        """Wait until ``close()`` has run (its RSTs sent); False on timeout."""
        return self._closed.wait(timeout)

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
        return self._waker.wait(seconds)

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
        """Close both sockets (RST if aborted, else FIN); idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            rst = self._aborted
            for sock in (self.client, self.upstream):
                if sock is not None:
                    if rst:
                        close_rst(sock)
                    else:
                        sock.close()
            self._waker.close()
            self._closed.set()


def _dial(target: tuple[str, int]) -> socket.socket:
    """A non-blocking socket with a connect to ``target`` under way (or done)."""
    host, port = target
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, os.strerror(err))
    return sock
