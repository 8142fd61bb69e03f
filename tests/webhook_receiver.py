"""A real webhook receiver for tests and benchmarks: a small ASGI app under real uvicorn on a
loopback port, in a thread of this process, with a FaultProxy in front.

Every request is verified with the independent ``standardwebhooks`` library. Faults:

- ``mode = "500"``: answer 500; ``"redirect"``: answer 307 (a redirect to ``/elsewhere``);
  ``"hang"``: never answer (past any client timeout); ``"slow"``: answer after 50 ms;
- ``proxy.refuse(True)`` / ``proxy.reset()``: connections reset (RST);
- ``stop()`` ... ``start()``: the receiver is down (nothing listens on its port) for a stretch.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

from harness.faults import FaultProxy

__all__ = ["Receiver", "message_fields", "proxy_url", "receiver"]

HANG_SECONDS = 3600.0
SLOW_SECONDS = 0.05


class Receiver:
    """Counts verified 2xx deliveries per ``webhook-id``; see the module docstring."""

    def __init__(self, secret: str, *, keep: bool = True) -> None:
        self.webhook = Webhook(secret)
        self.keep = keep
        """False: only count deliveries (``total``), keep nothing per delivery (soaks)."""
        self.total = 0
        self.mode = "ok"
        self.accepted: collections.Counter[str] = collections.Counter()
        """Deliveries answered 2xx, per webhook-id."""
        self.payloads: dict[str, Any] = {}
        self.attempts = 0
        """Requests that reached the app, whatever the answer."""
        self.bad_signatures = 0
        self.headers_seen: list[dict[str, str]] = []
        self.changed = threading.Condition()
        self._sock: socket.socket | None = None
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- the app ---------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body (a reset): nothing was delivered
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        mode = self.mode
        with self.changed:
            self.attempts += 1
        if mode == "hang":
            await asyncio.sleep(HANG_SECONDS)
        if mode == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if mode in ("500", "redirect"):
            if mode == "500":
                await _answer(send, 500)
            else:
                await _answer(send, 307, [(b"location", b"/elsewhere")])
            return
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            with self.changed:
                self.bad_signatures += 1
                self.changed.notify_all()
            await _answer(send, 400)
            return
        with self.changed:
            self.total += 1
            if not self.keep:
                self.changed.notify_all()
        if not self.keep:
            await _answer(send, 204)
            return
        with self.changed:
            msg_id = headers["webhook-id"]
            self.accepted[msg_id] += 1
            self.payloads[msg_id] = payload
            if len(self.headers_seen) < 100:
                self.headers_seen.append(headers)
            self.changed.notify_all()
        await _answer(send, 204)

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every request)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    # -- serving ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        """Serve on the receiver's port (the same one after a stop)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the receiver did not start")
            thread.join(0.01)
        self._sock, self._server, self._thread = sock, server, thread

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until :meth:`start`."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def receiver(secret: str, *, keep: bool = True) -> Iterator[tuple[Receiver, FaultProxy]]:
    """A started receiver and a FaultProxy in front of it (post to ``proxy_url(proxy)``)."""
    rec = Receiver(secret, keep=keep)
    rec.start()
    try:
        with FaultProxy(("127.0.0.1", rec.port)) as proxy:
            yield rec, proxy
    finally:
        rec.stop()


def proxy_url(proxy: FaultProxy) -> str:
    return f"http://127.0.0.1:{proxy.port}/hook"


def message_fields(i: int, *, chat: str = "123@s.whatsapp.net") -> dict[str, str]:
    """A recorder-shaped inbound message entry."""
    return {
        "id": f"M{i}",
        "chat": chat,
        "sender": chat,
        "text": json.dumps({"n": i}),
        "ts": str(1_764_000_000 + i),
        "dir": "in",
    }
