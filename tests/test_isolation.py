"""IsolatedTransport: the session in a worker process, recycled on a memory budget."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from harness.faults import Socks5Refuser
from waclient import Backoff, Client, ClientState, TransportError
from waclient.events import ConnectedEv, Event, MessageEv
from waclient.transports.isolated import IsolatedTransport
from waclient.transports.simulated import message_event

NO_WAIT = Backoff(0, 0, jitter=0)


def _zombies() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.status() == psutil.STATUS_ZOMBIE
    ]


async def test_events_and_sends_cross_the_process_boundary(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated")
    texts: list[str] = []
    async with Client(transport, backoff=NO_WAIT) as client:
        client.on(MessageEv, lambda ev: texts.append(ev.Message.conversation))
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        assert transport.worker_pid not in (None, os.getpid())
        await transport.emit(message_event(text="over the pipe", id="A1"), repeat=3)
        await client.idle()
        sent = await client.send_text("15550000003@s.whatsapp.net", "reply")
        assert sent.text == "reply" and sent.kind == "text" and sent.chat.startswith("1555")
        assert await transport.pair_phone("+1 555 000 1234") == "50001234"
    assert texts == ["over the pipe"] * 3
    assert transport.worker_pid is None and not _zombies()


async def test_sigkill_of_the_worker_reconnects_through_a_new_one(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated")
    async with Client(transport, backoff=NO_WAIT) as client:
        seen: list[str] = []
        client.on(MessageEv, lambda ev: seen.append(ev.Message.conversation))

        def per_connection(ev: Event) -> None:
            for _ in range(3):
                client.connection.on(MessageEv, lambda ev: None)

        client.on(ConnectedEv, per_connection)
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await client.idle()
        assert client.listener_count() == 5
        first = transport.worker_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # The pipe closes at once: the client leaves CONNECTED and comes back on a new worker.
        await client.wait_for(ClientState.BACKOFF, ClientState.CONNECTING, timeout=10)
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        await client.idle()
        assert transport.worker_pid not in (None, first)
        assert transport.crashes == 1 and transport.starts == 2
        assert client.listener_count() == 5 and client.generation == 2
        await transport.emit(message_event(text="after"))
        await client.idle()
        assert seen == ["after"]
    assert not _zombies()


async def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    transport = IsolatedTransport(
        tmp_path / "s.db", worker="simulated", heartbeat_interval=0.1, heartbeat_timeout=0.5
    )
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        hung = transport.worker_pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        await client.wait_for(ClientState.BACKOFF, ClientState.CONNECTING, timeout=30)
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        assert transport.hangs == 1 and transport.worker_pid not in (None, hung)
        assert not psutil.pid_exists(hung) or psutil.Process(hung).status() != "stopped"
    assert not _zombies()


async def test_a_request_to_a_stuck_worker_fails_instead_of_hanging(tmp_path: Path) -> None:
    transport = IsolatedTransport(
        tmp_path / "s.db",
        worker="simulated",
        request_timeout=0.5,
        heartbeat_interval=60,  # keep the hang detector out of this test
    )
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        pid = transport.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(TransportError, match="timed out"):
                await client.send_text("15550000004@s.whatsapp.net", "stuck")
        finally:
            os.kill(pid, signal.SIGCONT)
        sent = await client.send_text("15550000004@s.whatsapp.net", "unstuck")
        assert sent.text == "unstuck"


async def test_requests_in_flight_fail_when_the_worker_dies(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated", heartbeat_interval=60)
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        pid = transport.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        send = asyncio.ensure_future(client.send_text("15550000005@s.whatsapp.net", "lost"))
        await asyncio.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TransportError, match="died"):
            await send
    with pytest.raises(TransportError, match="no session"):
        await transport.call("send_message", "15550000005@s.whatsapp.net", "closed")


async def test_recycles_on_the_rss_budget_with_real_neonize_failures(
    tmp_path: Path, socks5_refuser: Socks5Refuser
) -> None:
    probe = IsolatedTransport(tmp_path / "s.db", proxy=socks5_refuser.address)
    budget_headroom = 12 * 2**20
    async with Client(probe, backoff=NO_WAIT, max_failures=1) as client:
        await client.wait_for(ClientState.FAILED, timeout=60)
        idle_rss = probe.max_worker_rss
    budget = idle_rss + budget_headroom  # about 60 failed connects of room, at FACTS.md's rate
    transport = IsolatedTransport(
        tmp_path / "s.db", proxy=socks5_refuser.address, rss_budget=budget
    )
    fds_before = psutil.Process().num_fds()
    async with Client(transport, backoff=NO_WAIT, max_failures=400) as client:
        await client.wait_for(ClientState.FAILED, timeout=300)
    assert socks5_refuser.attempts >= 400
    assert transport.recycles >= 1, f"no recycle; worker peaked at {transport.max_worker_rss}"
    assert transport.max_worker_rss <= budget
    assert transport.crashes == 0 and transport.worker_pid is None
    assert not _zombies()
    assert psutil.Process().num_fds() <= fds_before


async def test_recycles_after_a_number_of_failed_attempts(
    tmp_path: Path, socks5_refuser: Socks5Refuser
) -> None:
    transport = IsolatedTransport(
        tmp_path / "s.db", proxy=socks5_refuser.address, rss_budget=None, recycle_after_failures=5
    )
    async with Client(transport, backoff=NO_WAIT, max_failures=21) as client:
        await client.wait_for(ClientState.FAILED, timeout=120)
        assert "failed to dial" in (client.last_error or "")
    assert transport.recycles == 4 and transport.starts == 5


async def test_recycles_before_the_leaked_descriptors_pile_up(
    tmp_path: Path, socks5_refuser: Socks5Refuser
) -> None:
    transport = IsolatedTransport(
        tmp_path / "s.db", proxy=socks5_refuser.address, rss_budget=None, max_worker_fds=40
    )
    async with Client(transport, backoff=NO_WAIT, max_failures=120) as client:
        await client.wait_for(ClientState.FAILED, timeout=120)
    # neonize leaks one descriptor per failed connect; the worker starts with fewer than 40.
    assert transport.recycles >= 2 and transport.crashes == 0


def test_the_worker_dies_with_its_parent(tmp_path: Path) -> None:
    program = textwrap.dedent(
        f"""
        import asyncio, sys
        from waclient.transports.isolated import IsolatedTransport
        from waclient import Client, ClientState, Backoff

        async def main():
            t = IsolatedTransport({str(tmp_path / "s.db")!r}, worker="simulated")
            c = Client(t, backoff=Backoff(0, 0, jitter=0))
            await c.start()
            await c.wait_for(ClientState.CONNECTED, timeout=60)
            print(t.worker_pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        worker = psutil.Process(worker_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone, _ = psutil.wait_procs([worker], timeout=30)
        assert gone, "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_debug_hooks_need_the_simulated_worker(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db")
    with pytest.raises(TransportError, match="simulated"):
        await transport.emit(message_event())
    await transport.close()


async def test_stop_while_the_worker_is_starting_waits_for_run_to_return(tmp_path: Path) -> None:
    """stop() during the worker's spawn holds until run() has returned (it runs no session), so
    Client.close() never waits on a session nothing stops."""
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated")
    delivered: list[Event] = []
    run = asyncio.ensure_future(transport.run(delivered.append))
    await asyncio.sleep(0)  # run() is now starting the worker process
    async with asyncio.timeout(60):
        await transport.stop()
    assert run.done() and run.exception() is None
    assert delivered == []  # no session was started
    async with asyncio.timeout(60):
        await transport.close()
    assert transport.worker_pid is None and not _zombies()


async def test_close_during_a_worker_restart_is_prompt(tmp_path: Path) -> None:
    """The worker dies; the client closes while the transport is spawning the next one."""
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated", heartbeat_interval=60)
    client = Client(transport, backoff=NO_WAIT)
    await client.start()
    await client.wait_for(ClientState.CONNECTED, timeout=60)
    first = transport.worker_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await client.wait_for(ClientState.CONNECTING, ClientState.BACKOFF, timeout=30)
    async with asyncio.timeout(60):
        await client.close()
    assert client.state is ClientState.STOPPED and not _zombies()


async def test_the_transport_has_one_lifetime(tmp_path: Path) -> None:
    transport = IsolatedTransport(tmp_path / "s.db", worker="simulated")
    async with Client(transport, backoff=NO_WAIT) as client:
        await client.wait_for(ClientState.CONNECTED, timeout=60)
        assert transport.tasks() == 1  # the worker's heartbeat
    assert transport.tasks() == 0 and transport.worker_pid is None
    await transport.close()  # idempotent
    with pytest.raises(TransportError, match="closed"):
        await transport.run(lambda ev: None)
