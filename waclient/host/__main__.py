"""``python -m waclient.host``: serve the host with uvicorn on ``$PORT`` (default 8080).

Exit status: after SIGTERM or SIGINT the host shuts down gracefully and then ends by that signal
(uvicorn re-raises it: status 143 or 130 in a shell); 2 for a bad configuration (one line on
stderr says what to set); 3 when memory passed the hard limit and the host shut itself down so
that the platform restarts it.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["main"]


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
    server: uvicorn.Server | None = None

    def shutdown() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, request_shutdown=shutdown)
    config = server_config(app, settings, log_config=None)  # keep the logging set up above
    server = uvicorn.Server(config)
    server.run()
    host = app.state.host
    if host.exit_code:
        return int(host.exit_code)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
