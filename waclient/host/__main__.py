"""``python -m waclient.host``: serve the host with uvicorn on ``$PORT`` (default 8080).

Exit status: after SIGTERM or SIGINT the host shuts down gracefully and then ends by that signal
(uvicorn re-raises it: status 143 or 130 in a shell); 2 for a bad configuration (one line on
stderr says what to set); 3 when memory passed the hard limit and the host shut itself down so
that the platform restarts it; 4 when the graceful shutdown did not end within
``WACLIENT_SHUTDOWN_TIMEOUT`` (the recorders flush first, so what was cut short is webhook
teardown or the like; their deliveries stay pending in Redis).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import FrameType

__all__ = ["EXIT_SHUTDOWN_OVERRAN", "main"]

EXIT_SHUTDOWN_OVERRAN = 4

log = logging.getLogger("waclient.host")


def main() -> int:
    from waclient._unused_imports import skip_unused_imports
    from waclient.host.config import ConfigError, load_settings

    skip_unused_imports()  # before the webhook dispatcher imports httpx

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"waclient.host: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from waclient.host.app import create_app
    from waclient.host.http_guard import server_config

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # importing neonize installs a handler of its own
    )
    deadline = _Deadline(settings.shutdown_timeout)
    server: uvicorn.Server | None = None

    def shutdown() -> None:
        if server is not None:
            deadline.start()
            server.should_exit = True

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            deadline.start()
            super().handle_exit(sig, frame)

    app = create_app(settings, request_shutdown=shutdown)
    config = server_config(app, settings, log_config=None)  # keep the logging set up above
    server = Server(config)
    server.run()
    host = app.state.host
    if host.exit_code:
        return int(host.exit_code)
    return 0 if server.started else 1


class _Deadline:
    """Once started, ends the process with :data:`EXIT_SHUTDOWN_OVERRAN` after ``seconds``
    (a daemon timer thread: it fires even while the event loop is stuck)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._overran)
            self._timer.daemon = True
            self._timer.start()

    def _overran(self) -> None:
        log.error("shutdown did not end within %g s: exiting", self.seconds)
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_OVERRAN)


if __name__ == "__main__":
    sys.exit(main())
