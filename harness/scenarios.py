"""Built-in soak scenarios, and how a ``--scenario`` argument is resolved.

Each scenario is a :class:`~harness.model.Scenario`: a generator function that sets state up,
yields a :class:`~harness.model.Workload` (the cycle and the registries whose listeners to
count), and tears the state down after the ``yield``. ``python -m harness scenarios`` lists
them; ``expect_leak`` marks the ones that are known to leak (an upstream leak, a mutant).

- ``reconnect``: a Client on a SimulatedTransport; each cycle is one connection: Connected,
  20 messages through neonize's own ctypes callback and protobuf decoding, Disconnected, and
  the supervisor's next attempt. 2 handlers for the client's life, 5 per connection.
- ``burst``: one connection; every 50th cycle a burst of 400 messages is buffered with a 2 MiB
  scratch buffer and released 10 cycles later; other cycles go through a bounded window.
- ``neonize-storm-raw``: the real neonize Go client failing to connect through a loopback
  SOCKS5 server that refuses (``harness.faults.Socks5Refuser``), in this process. KNOWN
  UPSTREAM LEAK: about 180 KB of RSS and one file descriptor per failed connect.
- ``neonize-storm-isolated``: the same storm through ``IsolatedTransport`` (neonize in a worker
  process, recycled on a memory budget): the parent stays bounded.
- ``redis-outage``: a Client with the inbound recorder on a real redis-server that is killed
  and restarted every 10 cycles; records go to the bounded buffer and the spool, then drain.
- ``scheduler-churn``: scheduled messages created, fired through the Client and cancelled, on
  a real redis-server.
- ``media-churn``: the WhatsApp surface through ``IsolatedTransport`` (simulated worker): a
  256 KiB image sent, a reaction, a reply, a 256 KiB inbound media message downloaded and a
  group queried per cycle.
- ``talkback-burst``: the bot that talks back, through ``IsolatedTransport`` (simulated worker)
  with a 64-event inbox: 1,000 messages arrive as one burst per cycle and a handler replies to
  each; every reply is answered (none waits behind the events), the burst overflows to disk and
  the on-disk queue is empty again after each cycle.
- ``webhook-outage``: the webhook dispatcher on a real redis-server, 5 messages recorded per
  cycle and delivered to a receiver in a process of its own (:mod:`harness.webhook_receiver`)
  that is killed for 10 cycles in every 20; the backlog waits in Redis and drains on its
  return; at the end every event's ``webhook-id`` must have reached the receiver.
- ``host``: the host (``waclient.host``) under uvicorn in a process of its own, a real Redis
  behind a fault proxy (cut every 100 cycles), ordinary and hostile HTTP load from a second
  process, the isolated worker's session reconnected every cycle, and a webhook endpoint
  configured on a receiver process that is killed for 10 cycles in every 30
  (:mod:`harness.host_soak`); its channels are the host process's and its worker's; at the
  end every event recorded must have reached the receiver.
- ``mutant-*``: :mod:`harness.mutants`, the incident's bugs; each must be reported leaking.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from harness import mutants
from harness.errors import UsageError
from harness.model import Scenario, Workload, as_scenario, scenario
from harness.rigs import client_rig, media_churn_rig, reconnect_cycle, talkback_rig

__all__ = ["builtin_scenarios", "resolve"]


# -- clean scenarios -------------------------------------------------------------------------------


@scenario("reconnect", cycles=2000, suite_cycles=2000, long_cycles=20_000, timeout=600)
async def reconnect() -> AsyncIterator[Workload]:
    """Client + SimulatedTransport: connect, 20 messages, disconnect; 2+5 handlers."""
    from waclient.events import ConnectedEv, DisconnectedEv, MessageEv, ReceiptEv

    async with client_rig(name="soak-reconnect") as (client, sim, first):
        seen = {"messages": 0, "connections": 0, "per_connection": 0}
        last_by_chat: dict[str, str] = {}  # bounded by the 8 chats

        def count(ev: Any) -> None:
            seen["messages"] += 1

        def on_message(ev: Any) -> None:
            last_by_chat[ev.Info.MessageSource.Chat.User] = ev.Message.conversation

        def per_connection(ev: Any) -> None:
            seen["per_connection"] += 1

        def on_connected(ev: Any) -> None:
            seen["connections"] += 1
            scope = client.connection
            scope.on(MessageEv, on_message)
            scope.on(MessageEv, per_connection)
            scope.on(ReceiptEv, per_connection)
            scope.on(DisconnectedEv, per_connection)
            scope.on(ConnectedEv, per_connection)

        client.on(MessageEv, count)
        client.on(ConnectedEv, on_connected)
        one_connection = reconnect_cycle(client, sim, first)
        done = [0]

        async def cycle(i: int) -> None:
            await one_connection(i)
            done[0] += 1

        yield Workload(cycle, registries=[client.registry])
        if seen["messages"] != 20 * done[0]:
            raise RuntimeError(f"{20 * done[0]} messages sent, {seen['messages']} handled")


@scenario("burst", cycles=2000, suite_cycles=2000, long_cycles=10_000, timeout=600)
async def burst() -> AsyncIterator[Workload]:
    """Event bursts every 50 cycles, held for 10 cycles, then freed; a bounded window otherwise."""
    from waclient.events import MessageEv
    from waclient.transports.simulated import message_event

    async with client_rig(name="soak-burst") as (client, sim, _first):
        window: deque[Any] = deque(maxlen=200)
        held: list[Any] = []
        scratch: list[bytearray] = []
        state = {"bursting": False, "release_at": -1}

        def on_message(ev: Any) -> None:
            (held if state["bursting"] else window).append(ev)

        client.on(MessageEv, on_message)
        await client.idle()

        async def cycle(i: int) -> None:
            if i % 50 == 0:
                state["bursting"] = True
                scratch.append(bytearray(2 * 1024 * 1024))
                await sim.emit(*(message_event(text=f"burst {i} #{j}") for j in range(400)))
                await client.idle()
                state["bursting"] = False
                state["release_at"] = i + 10
            else:
                await sim.emit(message_event(text=f"cycle {i} a"), message_event(text=f"b {i}"))
                await client.idle()
            if i == state["release_at"]:
                held.clear()
                scratch.clear()

        yield Workload(cycle, registries=[client.registry])


# -- the raw neonize storm (known upstream leak) ---------------------------------------------------


@scenario(
    "neonize-storm-raw",
    cycles=400,
    warmup=40,
    suite_cycles=300,
    long_cycles=1500,
    expect_leak=("rss", "fds"),
    timeout=300,
    requires=("neonize",),
)
def neonize_storm_raw() -> Iterator[Workload]:
    """Real neonize connects failing through a loopback SOCKS5 refuser (KNOWN UPSTREAM LEAK)."""
    from neonize.client import NewClient, ProxySettings

    from harness.faults import Socks5Refuser

    with tempfile.TemporaryDirectory(prefix="soak-storm-") as tmp, Socks5Refuser() as refuser:
        neonize_client = NewClient(os.path.join(tmp, "storm.db"), uuid="soak-storm")
        proxy = ProxySettings(proxy_address=refuser.address)

        def cycle(i: int) -> None:
            try:
                neonize_client.connect(proxy)
            except Exception as exc:
                if "dial" not in str(exc):
                    raise
                return
            raise RuntimeError("connect through the refusing proxy succeeded")

        yield Workload(cycle)


@scenario(
    "neonize-storm-isolated",
    cycles=1000,  # py_blocks rises a little per attempt until each recycle: many recycles
    warmup=100,
    suite_cycles=1000,
    long_cycles=3000,
    timeout=600,
    requires=("neonize",),
)
async def neonize_storm_isolated() -> AsyncIterator[Workload]:
    """The same storm through IsolatedTransport: the worker is recycled, this process stays flat."""
    from harness.faults import Socks5Refuser
    from waclient import Backoff, Client
    from waclient.transports.isolated import IsolatedTransport

    with tempfile.TemporaryDirectory(prefix="soak-isolated-") as tmp, Socks5Refuser() as refuser:
        # A small budget by default, so the run sees the worker recycled several times.
        budget_mib = int(os.environ.get("WACLIENT_SOAK_WORKER_BUDGET_MIB", "112"))
        inner = IsolatedTransport(
            os.path.join(tmp, "storm.db"), name="soak-isolated", proxy=refuser.address,
            rss_budget=budget_mib * 2**20,
        )  # fmt: skip
        transport = _CountedTransport(inner)
        client = Client(transport, backoff=Backoff(0, 0, jitter=0), max_failures=1_000_000_000)
        notes: list[str] = []
        async with client:
            await transport.wait_done(1)
            base = transport.done

            async def cycle(i: int) -> None:
                await transport.wait_done(base + i + 1)

            yield Workload(cycle, [client.registry], notes=notes)
            stats = inner.statistics()
            notes.append(
                f"worker: {stats.starts} started, {stats.recycles} recycled, {stats.crashes} "
                f"crashed, largest RSS {stats.max_rss / 2**20:.1f} MiB (budget {budget_mib} MiB), "
                f"largest one-attempt step {inner.largest_step / 2**20:.1f} MiB"
            )


class _CountedTransport:
    """Delegates to a transport; counts finished sessions so a cycle can wait for the next."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.done = 0
        self._changed = asyncio.Event()

    async def run(self, sink: Any) -> None:
        try:
            await self.inner.run(sink)
        finally:
            self.done += 1
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_done(self, n: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while self.done < n:
                await self._changed.wait()

    async def stop(self) -> None:
        await self.inner.stop()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.call(method, *args, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


# -- Redis -----------------------------------------------------------------------------------------


@scenario(
    "redis-outage",
    # The recorder's outage path keeps memory (weak references first) for a few thousand
    # cycles before it levels off (docs/harness.md, Findings): the warm-up spans that.
    cycles=4500,
    warmup=3000,
    suite_cycles=4000,
    long_cycles=10_000,
    timeout=900,
    # Exceptions thrown into coroutines on every outage corrupt memray's Python shadow stack
    # (CPython gh-93592); with every pymalloc allocation traced, memray's own memory then
    # grows about 1 KB per outage in this process. Malloc-level tracing keeps it flat.
    trace_python_allocators=False,
    requires=("redis", "redis-server"),
)
async def redis_outage() -> AsyncIterator[Workload]:
    """Recording while a real redis-server is killed (SIGKILL) and restarted every 10 cycles."""
    from harness.faults import RedisServer
    from waclient.recorders import InboundRecorder
    from waclient.redis import open_redis
    from waclient.spool import Spool
    from waclient.transports.simulated import message_event

    with tempfile.TemporaryDirectory(prefix="soak-redis-") as tmp, RedisServer() as server:
        server.start()
        redis = open_redis(
            server.url, connect_timeout=0.5, socket_timeout=0.5, retries=1, backoff_cap=0.05,
            max_connections=4,
        )  # fmt: skip
        spool = Spool(os.path.join(tmp, "spool.db"), max_records=50_000, max_bytes=64 * 2**20)
        recorder = InboundRecorder(
            redis, spool=spool, max_buffer=100, batch_size=32, spill_batch=32, maxlen=20_000,
            retry_initial=0.01, retry_max=0.05, probe_timeout=0.5,
        )  # fmt: skip
        notes: list[str] = []
        try:
            async with client_rig(name="soak-redis") as (client, sim, _first):
                recorder.attach(client)
                await recorder.start()

                async def cycle(i: int) -> None:
                    phase = i % 10
                    if phase == 2:
                        await asyncio.to_thread(server.kill)
                    elif phase == 7:
                        await asyncio.to_thread(server.restart)
                    await sim.emit(
                        *(message_event(text=f"{i}/{j}", id=f"R{i:08d}{j}") for j in range(5))
                    )
                    await client.idle()
                    if phase == 7 and not await recorder.flush(60):
                        raise RuntimeError("the spool did not drain within 60 s of Redis's return")

                yield Workload(cycle, [client.registry], notes=notes)
                st = recorder.statistics()
                notes.append(
                    f"recorder: {st.written} written, {st.replayed} replayed from the spool, "
                    f"{st.duplicates} duplicates skipped, {st.dropped} dropped, "
                    f"{st.outages} outages"
                )
                if st.dropped:
                    raise RuntimeError(f"the recorder dropped {st.dropped} records")
        finally:
            await recorder.close()
            await redis.aclose()
            spool.close()


@scenario(
    "scheduler-churn",
    cycles=2000,
    suite_cycles=1000,
    long_cycles=10_000,
    timeout=600,
    requires=("redis", "croniter", "redis-server"),
)
async def scheduler_churn() -> AsyncIterator[Workload]:
    """Scheduled messages created, fired through the Client and cancelled, on a real Redis."""
    from datetime import UTC, datetime, timedelta

    from harness.faults import RedisServer
    from waclient.redis import open_redis
    from waclient.scheduler import Scheduler

    with RedisServer() as server:
        server.start()
        redis = open_redis(server.url)
        try:
            async with client_rig(name="soak-scheduler") as (client, _sim, _first):
                await client.idle()
                scheduler = Scheduler(redis, client.send_text, namespace="soak:scheduler")
                start = datetime(2030, 1, 1, tzinfo=UTC)
                fired = [0]

                async def cycle(i: int) -> None:
                    now = start + timedelta(minutes=i)
                    once = await scheduler.create_once(
                        f"1555{i % 50:07d}@s.whatsapp.net", f"reminder {i}",
                        now + timedelta(seconds=5), now=now,
                    )  # fmt: skip
                    cron = await scheduler.create_cron(
                        "15550000001@s.whatsapp.net", f"digest {i}", "0 9 * * *", now=now
                    )
                    sent = await scheduler.tick(now=now + timedelta(seconds=10))
                    if once.id not in sent:
                        raise RuntimeError(f"job {once.id} did not fire")
                    fired[0] += len(sent)
                    if not await scheduler.cancel(cron.id):
                        raise RuntimeError(f"cron job {cron.id} could not be cancelled")

                yield Workload(cycle, [client.registry])
                left = await scheduler.count()
                if left:
                    raise RuntimeError(f"{left} jobs left in Redis after the run")
        finally:
            await redis.aclose()


@scenario(
    "webhook-outage",
    # About 80 s here (25 cycles/s): 100 outages.
    cycles=2000,
    # The dispatcher's HTTP pool, its Redis pool and the first outages fill their caches; the
    # process's RSS rises +72 KiB over cycles 500..1,250, then about 30 B/cycle, slowing
    # (docs/harness.md, "Fresh runs with the rss resolution").
    warmup=1000,
    suite_cycles=2000,
    long_cycles=7000,
    timeout=600,
    requires=("redis", "redis-server", "httpx", "uvicorn", "standardwebhooks"),
)
async def webhook_outage() -> AsyncIterator[Workload]:
    """Webhooks delivered from a real Redis stream to a receiver process that is down for 10
    cycles in every 20; the backlog waits in Redis and drains when it returns."""
    from harness.faults import RedisServer
    from harness.webhook_receiver import ReceiverProcess
    from waclient.client import Backoff
    from waclient.recorders import MessageRecord
    from waclient.redis import open_redis
    from waclient.webhooks import Endpoint, WebhookDispatcher, default_sources
    from waclient.webhooks.signing import generate_secret

    per_cycle, in_flight, prefix = 5, 8, "soak"
    secret = generate_secret()
    with tempfile.TemporaryDirectory(prefix="soak-webhooks-") as tmp, RedisServer() as server:
        server.start()
        redis = open_redis(server.url, max_connections=16)
        receiver = ReceiverProcess(secret, os.path.join(tmp, "ids"))
        receiver.start()
        stream = f"{prefix}:messages:in"
        added = [0]
        try:
            dispatcher = WebhookDispatcher(
                redis, sources=default_sources(prefix), key_prefix=prefix,
                static=[Endpoint("soak", receiver.url, (secret,))], max_in_flight=in_flight,
                max_attempts=10**9, backoff=Backoff(initial=0.02, maximum=0.2), timeout=5.0,
                poll_interval=0.1, allow_private=True,
            )  # fmt: skip
            async with dispatcher:

                def delivered() -> bool:
                    return dispatcher.statistics().delivered >= added[0]

                def slots_retrying() -> bool:
                    st = dispatcher.statistics()
                    return st.in_flight == min(in_flight, added[0] - st.delivered)

                async def cycle(i: int) -> None:
                    down = (i // 10) % 2 == 1
                    if down != (not receiver.running):
                        await asyncio.to_thread(receiver.stop if down else receiver.start)
                    async with redis.pipeline(transaction=False) as pipe:
                        for j in range(added[0], added[0] + per_cycle):
                            chat = f"1555{j % 50:07d}@s.whatsapp.net"
                            rec = MessageRecord(f"W{j:09d}", chat, chat, f"message {j}", j, "in")
                            pipe.execute_command("XADD", stream, "*", *rec.fields())
                        await pipe.execute()
                    added[0] += per_cycle
                    # Down: the in-flight slots fill and retry. Up: the whole backlog drains.
                    await _until(slots_retrying if down else delivered, f"cycle {i}")

                notes: list[str] = []
                yield Workload(cycle, notes=notes)
                if not receiver.running:
                    await asyncio.to_thread(receiver.start)
                await _until(delivered, "the last backlog")
                stats = dispatcher.statistics()
            counts = receiver.counts()
            notes.append(
                f"webhooks: {added[0]} recorded, {counts.distinct} distinct webhook-ids "
                f"received ({counts.deliveries - counts.distinct} duplicates), {stats.failed} "
                f"failed attempts, {stats.dead_lettered} dead-lettered, receiver started "
                f"{receiver.starts} times"
            )
            if counts.distinct != added[0] or counts.bad_signatures:
                raise RuntimeError(
                    f"{added[0]} events recorded, {counts.distinct} distinct delivered, "
                    f"{counts.bad_signatures} bad signatures"
                )
        finally:
            receiver.stop()
            await redis.aclose()


async def _until(check: Any, what: str, timeout: float = 120.0) -> None:
    """Poll ``check()`` until it holds; the deadline only guards against a hang."""
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 - the dispatcher offers no event for this
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise RuntimeError(f"{what}: not done within {timeout:.0f} s") from None


# -- resolution ------------------------------------------------------------------------------------


# -- the WhatsApp surface --------------------------------------------------------------------------


@scenario("media-churn", cycles=2000, warmup=200, suite_cycles=1000, long_cycles=5000, timeout=900)
async def media_churn() -> AsyncIterator[Workload]:
    """The WhatsApp surface through the isolated worker: media sends, reactions, replies,
    256 KiB downloads and group queries; the parent stays bounded."""
    async with media_churn_rig() as workload:
        yield workload


@scenario(
    "talkback-burst",
    # The parent's C heap fills for about 800 cycles after the first ones (+40 B/cycle over
    # cycles 100-500, +23 over 500-800, +6 over 800-1,200: docs/harness.md, Findings); a
    # warm-up of 500 puts the measured cycles on the tail of that fill, under the floor.
    cycles=1200,
    warmup=500,
    suite_cycles=1000,
    long_cycles=5000,
    timeout=1800,
    # A healthy cycle takes about a second; a stall is a cycle that never ends.
    cycle_timeout=120.0,
)
async def talkback_burst() -> AsyncIterator[Workload]:
    """Through the isolated worker with a 64-event inbox: a burst of 1,000 messages per cycle,
    a reply to each; every reply answered, the disk overflow empty again after each cycle."""
    async with talkback_rig(name="soak-talkback") as workload:
        yield workload


# -- the host --------------------------------------------------------------------------------------


@scenario(
    "host",
    cycles=6000,
    # A fresh host's RSS fills for about 5,000 cycles (50,000 requests): pymalloc's arenas and
    # the C heap's pages, +0.8 MiB, at a falling rate (docs/host.md, "The host soak"); a run
    # measured on that ramp reads it as a leak. The suite's shorter run cannot resolve the RSS
    # fill either way (rss resolution); its C heap in use still rose by up to 43 B/cycle over
    # cycles 400-1,000 (a leak verdict in 1 of 20 runs), by at most 18 over 1,000-2,000.
    warmup=4000,
    max_cycles=12_000,
    suite_cycles=2000,
    suite_warmup=1000,
    long_cycles=10_000,
    # 12,000 cycles at 8 cycles/s take 25 minutes, and the webhook backlog they leave up to 6
    # more to deliver.
    timeout=3600,
    # memray would track this process (the driver), not the host's: no tracked cycles.
    memray=False,
    requires=(
        "fastapi", "uvicorn", "httptools", "httpx", "redis", "redis-server", "standardwebhooks",
    ),
)  # fmt: skip
def host() -> Iterator[Workload]:
    """The host under uvicorn, its worker reconnected every cycle, Redis cut, hostile load,
    its webhook receiver down for 10 cycles in every 30."""
    from harness.host_soak import host_rig

    with host_rig(summary_path=os.environ.get("WACLIENT_HOST_SOAK_SUMMARY")) as workload:
        yield workload


def builtin_scenarios() -> dict[str, Scenario]:
    """Every built-in scenario by name, mutants included, in suite order."""
    found = [reconnect, burst, redis_outage, scheduler_churn, neonize_storm_raw]
    found += [neonize_storm_isolated, media_churn, talkback_burst, webhook_outage, host]
    found += mutants.MUTANTS
    return {s.name: s for s in found}


def resolve(spec: str) -> Scenario:
    """A built-in scenario name, or ``MODULE:FUNC`` (imported with the current directory on
    ``sys.path``): a Scenario, a generator function yielding a Workload, or a cycle."""
    spec = spec.strip()
    builtins = builtin_scenarios()
    if spec in builtins:
        return builtins[spec]
    if ":" not in spec:
        raise UsageError(
            f"unknown scenario {spec!r}: use one of {', '.join(builtins)} or MODULE:FUNC"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"bad scenario {spec!r}: expected MODULE:FUNC")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for scenario {spec!r}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    return as_scenario(target, name=spec)
