"""The incident's bugs, reproduced on this library, to prove the harness catches each one.

Each mutant is a scenario named ``mutant-<name>`` that does what a real application did wrong;
the line with the bug carries a ``# BUG: <name>`` comment. The soak must report it leaking on
the channel in ``expect_leak``, and memray's leak sites must include that line.

==================  ==============================================================  ============
mutant              the bug                                                         channel
==================  ==============================================================  ============
listeners           a handler added in every Connected handler on the client's      listeners
                    lifetime scope instead of ``client.connection``: never removed
offline-buffer      messages appended to a plain list while Redis is down (a real   py_blocks
                    redis-server, stopped): an unbounded offline queue
scheduled-jobs      a reminder scheduled per connection (``loop.call_later``) and   py_blocks
                    its handle kept by job id; never cancelled
session-refs        a reference kept to each transport session (for "debugging")   gc_objects
orphan-tasks        a keep-alive task started per connection, never awaited nor     tasks
                    cancelled
kept-downloads      every downloaded 256 KiB media payload kept in a list (media-   rss
                    churn through the isolated worker)
talkback-stall      the bot that talks back on a transport that answers calls on    stalls
                    the event thread (the design before flow control), no disk
                    overflow: the reply waits behind events that wait for the
                    handler; the first burst deadlocks
==================  ==============================================================  ============

A mutant that stalls is judged on its cycle's deadline (``cycle_timeout``): the soak must end
with the cycle past it, and the bug's line must be among the frames where something waited.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness.model import Scenario, Workload, scenario
from harness.rigs import client_rig, media_churn_rig, reconnect_cycle, talkback_rig

__all__ = ["MUTANTS", "bug_line"]


def bug_line(name: str) -> tuple[str, int]:
    """(this file, the line number) of the ``# BUG: <name>`` comment."""
    path = Path(__file__)
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.rstrip().endswith(f"# BUG: {name}"):
            return str(path), number
    raise LookupError(f"no '# BUG: {name}' line in {path}")


_COMMON: dict[str, Any] = {
    "cycles": 400,
    "warmup": 40,
    "suite_cycles": 400,
    "long_cycles": 2000,
    "timeout": 300,
}


@scenario("mutant-listeners", expect_leak=("listeners",), bug=bug_line("listeners"), **_COMMON)
async def listeners() -> AsyncIterator[Workload]:
    """Handlers registered per connection on the client's lifetime scope, never removed."""
    from waclient.events import ConnectedEv, MessageEv

    # The incident raised the max-listeners limit to silence the warning; so does this mutant.
    async with client_rig(max_listeners=None, name="mutant-listeners") as (client, sim, first):

        def on_message(ev: Any) -> None:
            pass

        def on_connected(ev: Any) -> None:
            client.on(MessageEv, on_message)  # BUG: listeners

        client.on(ConnectedEv, on_connected)
        yield Workload(reconnect_cycle(client, sim, first, messages=5), [client.registry])


@scenario(
    "mutant-offline-buffer",
    expect_leak=("py_blocks",),
    bug=bug_line("offline-buffer"),
    requires=("redis",),
    **_COMMON,
)
async def offline_buffer() -> AsyncIterator[Workload]:
    """Messages queued in a plain list while Redis is down (a real redis-server, stopped)."""
    from redis.exceptions import RedisError

    from harness.faults import RedisServer
    from waclient.events import MessageEv
    from waclient.redis import open_redis
    from waclient.transports.simulated import message_event

    with RedisServer() as server:
        server.start()
        redis = open_redis(server.url, connect_timeout=0.5, socket_timeout=0.5, retries=0)
        offline: list[dict[str, str]] = []
        state = {"up": True}

        async def record(ev: Any) -> None:
            fields = {"id": ev.Info.ID, "chat": ev.Info.MessageSource.Chat.User,
                      "text": ev.Message.conversation}  # fmt: skip
            if not state["up"]:  # queue while disconnected, like node-redis's offline queue
                offline.append(fields)  # BUG: offline-buffer
                return
            try:
                await redis.xadd("waclient:messages:in", fields)  # type: ignore[arg-type]
            except RedisError:
                state["up"] = False
                offline.append(fields)

        try:
            async with client_rig(name="mutant-offline") as (client, sim, _first):
                client.on(MessageEv, record)
                await client.idle()
                server.stop()  # the outage lasts the whole run

                async def cycle(i: int) -> None:
                    await sim.emit(*(message_event(text=f"m {i} {j}") for j in range(3)))
                    await client.idle()

                yield Workload(cycle, [client.registry])
        finally:
            await redis.aclose()


@scenario(
    "mutant-scheduled-jobs",
    expect_leak=("py_blocks",),
    bug=bug_line("scheduled-jobs"),
    **_COMMON,
)
async def scheduled_jobs() -> AsyncIterator[Workload]:
    """A reminder scheduled per connection (loop.call_later), its handle kept, never cancelled."""
    from waclient.events import ConnectedEv

    async with client_rig(name="mutant-jobs") as (client, sim, first):
        loop = asyncio.get_running_loop()
        jobs: dict[str, asyncio.TimerHandle] = {}

        def remind(job_id: str) -> None:
            jobs.pop(job_id, None)

        def on_connected(ev: Any) -> None:
            job_id = f"reminder-{client.generation}"
            jobs[job_id] = loop.call_later(3600.0, remind, job_id)  # BUG: scheduled-jobs

        client.on(ConnectedEv, on_connected)
        try:
            yield Workload(reconnect_cycle(client, sim, first, messages=5), [client.registry])
        finally:
            for handle in jobs.values():
                handle.cancel()


@scenario(
    "mutant-session-refs",
    expect_leak=("gc_objects",),
    bug=bug_line("session-refs"),
    **_COMMON,
)
async def session_refs() -> AsyncIterator[Workload]:
    """A reference kept to every transport session, so none of them is ever freed."""
    from waclient.events import ConnectedEv

    async with client_rig(name="mutant-sessions") as (client, sim, first):
        history: list[Any] = []

        def on_connected(ev: Any) -> None:
            history.append(sim.session)  # BUG: session-refs

        client.on(ConnectedEv, on_connected)
        yield Workload(reconnect_cycle(client, sim, first, messages=5), [client.registry])


@scenario(
    "mutant-orphan-tasks",
    expect_leak=("tasks",),
    bug=bug_line("orphan-tasks"),
    **_COMMON,
)
async def orphan_tasks() -> AsyncIterator[Workload]:
    """A keep-alive task started per connection, never awaited nor cancelled."""
    from waclient.events import ConnectedEv

    async with client_rig(name="mutant-tasks") as (client, sim, first):
        loop = asyncio.get_running_loop()

        async def keepalive() -> None:
            await asyncio.sleep(3600.0)  # a keep-alive that outlives its connection

        def on_connected(ev: Any) -> None:
            loop.create_task(keepalive())  # noqa: RUF006  # BUG: orphan-tasks

        client.on(ConnectedEv, on_connected)
        try:
            yield Workload(reconnect_cycle(client, sim, first, messages=5), [client.registry])
        finally:
            orphans = [
                t
                for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__qualname__", "").endswith("keepalive")
            ]
            for task in orphans:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*orphans, return_exceptions=True)


@scenario(
    "mutant-kept-downloads",
    expect_leak=("rss",),
    bug=bug_line("kept-downloads"),
    **(_COMMON | {"timeout": 600}),
)
async def kept_downloads() -> AsyncIterator[Workload]:
    """The media-churn scenario, with every downloaded payload kept "for a cache"."""
    kept: list[bytes] = []

    def on_download(data: bytes) -> None:
        kept.append(data)  # BUG: kept-downloads

    async with media_churn_rig(on_download, name="mutant-kept-downloads") as workload:
        yield workload


@scenario(
    "mutant-talkback-stall",
    expect_stall=True,
    bug=bug_line("talkback-stall"),
    cycle_timeout=20.0,
    **_COMMON,
)
async def talkback_stall() -> AsyncIterator[Workload]:
    """The talkback burst on a transport whose calls are answered behind its events, with no
    disk to overflow to: the Go side waits for room, the reply waits for the Go side."""
    from waclient.transports.simulated import SimulatedTransport

    class HeadOfLine(SimulatedTransport):
        async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            await self.on_event_thread(lambda: None)  # BUG: talkback-stall
            return await super().call(method, *args, **kwargs)

    rig = talkback_rig(lambda db: HeadOfLine(name=db), overflow_bytes=0, name="mutant-talkback")
    async with rig as workload:
        yield workload


MUTANTS: list[Scenario] = [
    listeners,
    offline_buffer,
    scheduled_jobs,
    session_refs,
    orphan_tasks,
    kept_downloads,
    talkback_stall,
]
