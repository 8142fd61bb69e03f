"""Run the host for real in tests: uvicorn on a loopback port, in a thread of this process.

    with serve(create_app(settings)) as running:
        httpx.get(f"{running.url}/health")

The app's lifespan runs (the client, Redis, recorders...), exactly as under
``python -m waclient.host``; the hard memory limit stops this server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from .http_guard import server_config

__all__ = ["RunningServer", "serve"]


@dataclass
class RunningServer:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    def middleware(self, kind: type[Any]) -> Any:
        """The app's instance of the middleware class ``kind`` (it exists once it served)."""
        layer = self.app.middleware_stack
        while layer is not None and not isinstance(layer, kind):
            layer = getattr(layer, "app", None)
        if layer is None:
            raise LookupError(f"no {kind.__name__} in the app's middleware")
        return layer

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return not self.thread.is_alive()


@contextmanager
def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    start_timeout: float = 60.0,
    log_level: str = "warning",
) -> Iterator[RunningServer]:
    """Serve ``app`` (made by :func:`waclient.host.create_app`) on ``host`` (a free port)
    until the block ends, under the same uvicorn configuration as ``python -m waclient.host``
    (:func:`waclient.host.http_guard.server_config`)."""
    config = server_config(app, app.state.settings, host=host, port=0, log_level=log_level)
    server = uvicorn.Server(config)
    errors: list[BaseException] = []
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it every
    # response waits ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from a failed startup included
            errors.append(exc)

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    state = getattr(app, "state", None)
    host_obj = getattr(state, "host", None) if state is not None else None
    if host_obj is not None and getattr(host_obj, "request_shutdown", None) is None:
        host_obj.request_shutdown = lambda: setattr(server, "should_exit", True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            detail = f": {errors[0]!r}" if errors else ""
            raise RuntimeError(f"the server did not start{detail}")
        time.sleep(0.01)
    running = RunningServer(f"http://{host}:{port}", port, server, thread, app)
    try:
        yield running
    finally:
        running.stop()
        sock.close()
