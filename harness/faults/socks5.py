"""A loopback SOCKS5 server that answers every CONNECT with 0x05 "connection refused".

It makes neonize's real Go client fail its websocket dial without leaving the machine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from harness.faults.loopback import LOOPBACK, LoopbackListener, LoopbackTool


class Socks5Refuser(LoopbackTool):
    """A loopback SOCKS5 server that answers every CONNECT with 0x05 "connection refused".

    The listener's one thread serves clients one at a time, each with a short socket timeout.
    """

    def __init__(self, *, port: int = 0, client_timeout: float = 2.0) -> None:
        self._client_timeout = client_timeout
        self._lock = threading.Lock()
        super().__init__(LoopbackListener(self._serve, name="Socks5Refuser", port=port, backlog=64))
        self._attempts = 0
        self._last_target: tuple[str, int] | None = None

    @property
    def address(self) -> str:
        """``socks5://127.0.0.1:PORT``, for neonize's ``ProxySettings(proxy_address=...)``."""
        return f"socks5://{LOOPBACK}:{self.port}"

    @property
    def attempts(self) -> int:
        """CONNECT requests seen (each one refused)."""
        return self._attempts

    @property
    def last_target(self) -> tuple[str, int] | None:
        """``(host, port)`` named by the latest CONNECT request."""
        return self._last_target

    def __repr__(self) -> str:
        return f"Socks5Refuser(port={self.port}, attempts={self._attempts})"

    # -- helpers ---------------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
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
