"""The host soak's host process: ``python -P harness/host_soak/host_process.py ARGS_JSON``.

The app of ``waclient.host.create_app`` under ``uvicorn`` with
``waclient.host.http_guard.server_config`` (what ``python -m waclient.host`` serves), the
isolated transport with a simulated worker, and a control pipe (one JSON line each way per
command: ``cycle``, ``stats``, ``webhooks``, ``final``, ``quit``). Each cycle it disconnects the
worker's session, waits for the client to reconnect and for the answers the driver asks for.

It imports nothing of the harness (``-P``: this file's directory is not on ``sys.path``): no
numpy, scipy, matplotlib, memray; ``final`` reports any of them found loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    """``host_process.py ARGS_JSON``: serve the host as ``python -m waclient.host`` does, with a
    control pipe on stdin/stdout. ``ARGS_JSON``: ``settings`` (``waclient.host.load_settings``
    overrides) and ``ordinary_job`` (the number and text of the load's jobs)."""
    if len(argv) != 1:
        print("usage: host_process.py ARGS_JSON", file=sys.stderr)
        return 2
    import logging

    args = json.loads(argv[0])
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to the log, not into the protocol
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", force=True)  # fmt: skip
    # The scheduler logs every failed tick; an outage every few seconds would flood the log.
    logging.getLogger("waclient.scheduler").setLevel(logging.ERROR)
    control = _HostControl(args["settings"], tuple(args["ordinary_job"]), replies)
    asyncio.run(control.run())
    return 0


class _HostControl:
    """The host process: the served app, and the commands of the control pipe."""

    def __init__(
        self, settings: dict[str, Any], ordinary_job: tuple[str, str], replies: Any
    ) -> None:
        self.settings = settings
        self.ordinary_job = ordinary_job
        self.replies = replies
        self.served = 0
        self.changed = asyncio.Event()
        """Set at every answer started."""
        self.connected = asyncio.Event()

    async def run(self) -> None:
        import uvicorn

        from waclient import ClientState, StateChange
        from waclient.host import create_app, load_settings
        from waclient.host.http_guard import server_config

        settings = load_settings(**self.settings)
        server: uvicorn.Server | None = None

        def shutdown() -> None:
            if server is not None:
                server.should_exit = True

        app = create_app(settings, request_shutdown=shutdown)
        app.add_middleware(_Counting, control=self)
        self.config = server_config(app, settings, log_config=None)
        server = uvicorn.Server(self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        self.host = app.state.host
        client = self.host.client
        await client.wait_for(ClientState.CONNECTED, timeout=60)

        def on_state(change: StateChange) -> None:
            if change.new is ClientState.CONNECTED:
                self.connected.set()

        client.on(StateChange, on_state)
        self.reply({"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "pid": os.getpid()})
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if msg["cmd"] == "quit":
                    break
                try:
                    self.reply(await self.command(msg))
                except Exception as exc:
                    self.reply({"error": f"{msg['cmd']}: {type(exc).__name__}: {exc}"})
        finally:
            server.should_exit = True
            await serving

    def reply(self, msg: dict[str, Any]) -> None:
        self.replies.write(json.dumps(msg) + "\n")

    async def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["cmd"] == "cycle":
            return await self.cycle(int(msg["target"]))
        if msg["cmd"] == "stats":
            return self.stats()
        if msg["cmd"] == "final":
            return await self.final()
        if msg["cmd"] == "webhooks":
            return self.webhooks()
        raise ValueError(f"unknown command {msg['cmd']!r}")

    async def cycle(self, target: int) -> dict[str, Any]:
        """One worker reconnect, then at least ``target`` answers served in all."""
        from waclient import ClientState

        client = self.host.client
        generation = client.generation
        await self.host.transport.disconnect()
        async with asyncio.timeout(60):
            while not (client.generation > generation and client.state is ClientState.CONNECTED):
                self.connected.clear()
                await self.connected.wait()
            while self.served < target:
                self.changed.clear()
                await self.changed.wait()
        return {"total_rss": _rss() + self.host.transport.worker_rss}

    def stats(self) -> dict[str, float]:
        """The host process's channels, after a collection (as the harness samples its own)."""
        import gc

        from waclient.heap import c_heap_in_use

        gc.collect()
        rss, worker = _rss(), self.host.transport.worker_rss
        return {
            "rss": rss, "heap": c_heap_in_use() or 0, "py_blocks": sys.getallocatedblocks(),
            "gc_objects": len(gc.get_objects()),
            "listeners": self.host.client.listener_count(), "fds": len(os.listdir("/proc/self/fd")),
            "threads": _os_threads(), "tasks": len(asyncio.all_tasks()),
            "worker_rss": worker, "total_rss": rss + worker,
        }  # fmt: skip

    def webhooks(self) -> dict[str, Any]:
        """The dispatcher's counters."""
        dispatcher = self.host.webhooks
        assert dispatcher is not None, "the host runs no webhook dispatcher"
        st = dispatcher.statistics()
        names = ("delivered", "failed", "retried", "dead_lettered", "in_flight", "redis_errors")
        return {name: getattr(st, name) for name in names}

    async def final(self) -> dict[str, Any]:
        """After the load stopped: the last jobs fired, everything in Redis; the figures."""
        from waclient.host.http_guard import guard_stats

        host = self.host
        deadline = time.monotonic() + 60
        while await host.scheduler.count() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        # Jobs left wait for a retry: stop the scheduler, or one of them could be sent (and
        # recorded) after its count below is read (3 records in Redis that no count had).
        await host.scheduler.close()
        flushed = await host.outbound.flush(120) and await host.inbound.flush(120)
        left = await host.scheduler.count()
        worker = host.transport.statistics()
        scheduler = host.scheduler.statistics()
        guard = guard_stats(self.config)
        return {
            "reconnects": host.client.generation - 1,
            "requests_served": self.served,
            "scheduled_sent": scheduler.sent,
            "jobs_left": left,
            "foreign_jobs": sum(
                1 for j in await host.scheduler.list() if not self._ordinary(j.chat, j.text)
            ),
            "unreadable_jobs": scheduler.unreadable,
            "flushed": flushed,
            "recorder_dropped": (
                host.outbound.statistics().dropped + host.inbound.statistics().dropped
            ),
            "worker_max_rss_mib": round(worker.max_rss / 2**20, 1),
            "worker_starts": worker.starts,
            "host_hwm_mib": round(_hwm() / 2**20, 1),
            "guard_peak_mib": round(host.guard.statistics().peak / 2**20, 1),
            "http_guard": guard.statistics().to_dict() if guard is not None else {},
            "host_heavy_modules": sorted(
                m for m in ("harness", "numpy", "scipy", "matplotlib", "memray") if m in sys.modules
            ),
        }

    def _ordinary(self, chat: str, text: str) -> bool:
        """A job the ordinary client scheduled (its number and text)."""
        number = "".join(ch for ch in chat.partition("@")[0] if ch.isdigit())
        return (f"+{number}", text) == self.ordinary_job


class _Counting:
    """ASGI middleware: counts answers started, and wakes the cycle waiting for them."""

    def __init__(self, app: Any, control: _HostControl) -> None:
        self.app, self.control = app, control

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        control = self.control

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                control.served += 1
                control.changed.set()
            await send(message)

        await self.app(scope, receive, counted)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _os_threads() -> int:
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rindex(b")") + 2 :].split()[17])


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
