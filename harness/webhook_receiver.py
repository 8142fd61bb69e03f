"""A webhook receiver in a process of its own, for the ``webhook-outage`` and ``host`` soak
scenarios.

``python -m harness.webhook_receiver PORT SECRET IDS_FILE`` serves a small ASGI app under
uvicorn on ``127.0.0.1:PORT``: every POST is verified with the independent ``standardwebhooks``
library, answered 204 (400 on a bad signature), and its ``webhook-id`` appended to ``IDS_FILE``
before the answer, so the ids survive the receiver being killed. It prints ``ready`` once it
listens and serves until killed. :class:`ReceiverProcess` starts and kills it from the soak;
:meth:`ReceiverProcess.counts` and :meth:`ReceiverProcess.ids` read the ids back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ReceiverCounts", "ReceiverProcess"]


@dataclass(frozen=True)
class ReceiverCounts:
    deliveries: int
    """Requests answered 2xx (a retried event counts once per 2xx)."""
    distinct: int
    """Distinct ``webhook-id`` values answered 2xx."""
    bad_signatures: int


class ReceiverProcess:
    """The receiver in a child process on a fixed loopback port: :meth:`start` it, :meth:`stop`
    it (SIGKILL: connections are refused until the next start)."""

    def __init__(self, secret: str, ids_file: str | Path) -> None:
        self.secret = secret
        self.ids_file = Path(ids_file)
        self.port = _free_port()
        self.starts = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        args = [str(self.port), self.secret, str(self.ids_file)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.webhook_receiver", *args],
            stdout=subprocess.PIPE,
            text=True,
            # This process's import path, so the child finds the same harness.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            proc.wait(30)
            raise RuntimeError(f"the webhook receiver did not start (it said {line!r})")
        self._proc = proc
        self.starts += 1

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def counts(self) -> ReceiverCounts:
        """What the receiver answered 2xx so far, read back from its ids file."""
        ids = self.ids()
        return ReceiverCounts(
            deliveries=ids.total() - ids[_BAD_SIGNATURE],
            distinct=len(ids) - (_BAD_SIGNATURE in ids),
            bad_signatures=ids[_BAD_SIGNATURE],
        )

    def ids(self) -> Counter[str]:
        """Each ``webhook-id`` answered 2xx so far, with how many times (and, under the key
        ``"!bad-signature"``, the requests refused for their signature)."""
        lines = self.ids_file.read_text().splitlines() if self.ids_file.exists() else []
        return Counter(lines)


_BAD_SIGNATURE = "!bad-signature"


class _App:
    """The ASGI app: verify, record the webhook-id, answer."""

    def __init__(self, secret: str, ids_file: str) -> None:
        from standardwebhooks import Webhook

        self.webhook = Webhook(secret)
        self.out = open(ids_file, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from standardwebhooks import WebhookVerificationError

        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            self.webhook.verify(body, headers)
        except WebhookVerificationError:
            self.out.write(_BAD_SIGNATURE + "\n")
            status = 400
        else:
            self.out.write(headers["webhook-id"] + "\n")
            status = 204
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    import asyncio

    import uvicorn

    port, secret, ids_file = sys.argv[1:4]
    config = uvicorn.Config(
        _App(secret, ids_file), host="127.0.0.1", port=int(port), log_level="warning",
        lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise SystemExit("the receiver stopped before it listened")
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
