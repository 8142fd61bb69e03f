"""What every fault tool shares: a listener on 127.0.0.1 with one accept thread, and a waker.

``LoopbackListener`` owns the listening socket and the thread that accepts clients and hands each
one to the tool's ``handle(client)``; ``stop()`` wakes that thread at once (no polling interval)
and joins it. ``LoopbackTool`` is the base of the tools that serve on one (``FaultProxy``,
``Socks5Refuser``): ``port``, ``start()``, ``stop()`` and ``with``. Nothing here listens beyond
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"

_ACCEPT_BACKOFF_MS = 10
"""After a failed accept() (e.g. EMFILE): wait this long (or until stopped) instead of spinning."""


class LoopbackTool:
    """A fault tool serving on a :class:`LoopbackListener`: ``start()``, ``stop()``, ``port``,
    and ``with tool:`` for both. Subclasses pass the listener and extend ``stop()``."""

    def __init__(self, listener: LoopbackListener) -> None:
        self._listener = listener

    @property
    def port(self) -> int:
        """The listening port on 127.0.0.1 (0 before ``start()``)."""
        return self._listener.port

    def start(self) -> Self:
        """Listen and start accepting; no-op if already started. A stopped tool cannot."""
        self._listener.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting and close the listener; idempotent."""
        self._listener.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LoopbackListener:
    """A listening socket on 127.0.0.1 and one daemon thread that accepts clients.

    Each accepted client goes to ``handle(client)`` on the accept thread; a handler that serves
    for long should hand the socket to a thread of its own. Start once, stop once (idempotent).
    """

    def __init__(
        self,
        handle: Callable[[socket.socket], None],
        *,
        name: str,
        port: int = 0,
        backlog: int = 128,
    ) -> None:
        self._handle = handle
        self._name = name
        self._requested_port = port
        self._backlog = backlog
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake = Waker()
        self._stopping = False
        self._port = 0

    @property
    def port(self) -> int:
        """The listening port on 127.0.0.1 (0 before ``start()``)."""
        return self._port

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopping

    def start(self) -> None:
        """Listen and start the accept thread; no-op if started. A stopped listener cannot."""
        with self._lock:
            if self._thread is not None:
                return
            if self._stopping:
                raise RuntimeError(f"{self._name} was stopped; create a new one")
            sock = listen(self._requested_port, self._backlog)
            self._sock = sock
            self._port = sock.getsockname()[1]
            self._thread = threading.Thread(
                target=self._accept_loop, name=f"{self._name}-{self._port}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, join the accept thread, close the socket; idempotent."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._wake.close()

    def _accept_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        while not self._stopping:
            poller.poll()
            if self._stopping:
                return
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._wake.wait(_ACCEPT_BACKOFF_MS / 1000)
                continue
            self._handle(client)


class Waker:
    """A socketpair whose read end turns readable (and stays so) once ``wake()`` is called.

    Register ``fileno()`` in a poll next to the sockets a thread waits on, and ``wake()`` ends
    that wait from any thread.
    """

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()
        self._woken = False
        self._closed = False

    @property
    def woken(self) -> bool:
        """True once ``wake()`` was called."""
        return self._woken

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        with self._lock:
            if self._woken or self._closed:
                return
            self._woken = True
            with contextlib.suppress(OSError):
                self._w.send(b"x")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) if woken."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        poller.poll(seconds * 1000)
        return self._woken

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._r.close()
        self._w.close()


def listen(port: int, backlog: int) -> socket.socket:
    """A non-blocking loopback listening socket (port 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that must be told their port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def close_rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
