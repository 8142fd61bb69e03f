"""harness.faults against real processes and sockets: redis-server, proxy, SOCKS5 refuser."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.faults import FaultProxy, RedisServer, Socks5Refuser


def client(url: str, timeout: float = 2.0) -> redis.Redis:
    """A redis-py client that does not retry, so each fault shows up as an exception."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def assert_port_closed(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def assert_reaped(pid: int) -> None:
    """The child ``pid`` is gone and reaped: not a zombie, not waitable."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    zombies = [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() == psutil.STATUS_ZOMBIE
    ]
    assert zombies == []


# -- RedisServer --------------------------------------------------------------------------


def test_server_set_get(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with client(redis_url) as r:
        assert r.set("k", "v")
        assert r.get("k") == b"v"


def test_fresh_redis_is_empty(fresh_redis: RedisServer) -> None:
    with client(fresh_redis.url) as r:
        assert r.dbsize() == 0
        r.set("left-behind", "1")


def test_kill_then_restart_keeps_acknowledged_write(killable_redis: RedisServer) -> None:
    port = killable_redis.port
    with client(killable_redis.url) as r:
        assert r.set("acked", "yes")
        assert r.xadd("stream", {"n": "1"})
    pid = killable_redis.pid
    assert pid is not None

    killable_redis.kill()

    assert not killable_redis.running
    assert killable_redis.pid is None
    assert_reaped(pid)
    assert_port_closed(port)

    killable_redis.restart()

    assert killable_redis.port == port
    assert killable_redis.pid != pid
    with client(killable_redis.url) as r:
        assert r.get("acked") == b"yes"
        assert r.xlen("stream") == 1


def test_twenty_kill_restart_loops_lose_nothing(killable_redis: RedisServer) -> None:
    port = killable_redis.port
    pids = []
    for i in range(20):
        with client(killable_redis.url) as r:
            assert r.set(f"record:{i}", i)
        pid = killable_redis.pid
        assert pid is not None
        pids.append(pid)
        killable_redis.kill()
        killable_redis.restart()
        assert killable_redis.port == port
    with client(killable_redis.url) as r:
        assert [r.get(f"record:{i}") for i in range(20)] == [str(i).encode() for i in range(20)]
    for pid in pids:
        assert_reaped(pid)


def test_stop_is_graceful_idempotent_and_restartable(killable_redis: RedisServer) -> None:
    with client(killable_redis.url) as r:
        r.set("k", "v")
    pid = killable_redis.pid
    assert pid is not None
    killable_redis.stop()
    killable_redis.stop()
    killable_redis.kill()
    assert not killable_redis.running
    assert_reaped(pid)
    killable_redis.restart()
    assert killable_redis.ping()
    with client(killable_redis.url) as r:
        assert r.get("k") == b"v"


def test_close_removes_its_temp_dir_and_reaps() -> None:
    server = RedisServer().start()
    data_dir, pid = server.data_dir, server.pid
    assert pid is not None
    assert data_dir.is_dir()
    server.close()
    server.close()
    assert not data_dir.exists()
    assert_reaped(pid)
    with pytest.raises(RuntimeError, match="closed"):
        server.start()


def test_given_data_dir_and_port_are_kept(tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path / "redis") as first:
        port = first.port
        with client(first.url) as r:
            r.set("k", "v")
        first.kill()
    assert (tmp_path / "redis").is_dir()
    with RedisServer(port=port, data_dir=tmp_path / "redis") as second:
        assert second.port == port
        with client(second.url) as r:
            assert r.get("k") == b"v"


def test_bad_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WACLIENT_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RuntimeError, match="WACLIENT_REDIS_SERVER"):
        RedisServer()


# -- FaultProxy ---------------------------------------------------------------------------


def test_proxy_passes_commands_through(fault_proxy: FaultProxy, fresh_redis: RedisServer) -> None:
    assert fault_proxy.url == f"redis://127.0.0.1:{fault_proxy.port}/0"
    assert fault_proxy.redis_url(3).endswith(f":{fault_proxy.port}/3")
    with client(fault_proxy.url) as r:
        assert r.set("k", "v")
        assert r.get("k") == b"v"
    with client(fresh_redis.url) as direct:
        assert direct.get("k") == b"v"
    stats = fault_proxy.stats
    assert stats.accepted >= 1
    assert stats.bytes_up > 0
    assert stats.bytes_down > 0


def test_proxy_forwards_large_values_intact(fault_proxy: FaultProxy) -> None:
    value = os.urandom(3_000_000)
    with client(fault_proxy.url, timeout=10) as r:
        r.set("big", value)
        assert r.get("big") == value


def test_proxy_reset_breaks_existing_connection(fault_proxy: FaultProxy) -> None:
    """reset() returns once the connection is closed and its RSTs are sent."""
    with socket.create_connection(fault_proxy.address, timeout=10) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(64) == b"+PONG\r\n"
        assert fault_proxy.stats.active == 1
        assert fault_proxy.reset() == 1
        assert fault_proxy.stats.active == 0  # closed before reset() returned
        with pytest.raises(ConnectionResetError):
            raw.recv(64)
    assert fault_proxy.reset() == 0
    assert fault_proxy.stats.resets == 1


def test_proxy_reset_never_lets_a_redis_client_reuse_the_connection(
    fault_proxy: FaultProxy,
) -> None:
    """A reset connection carries no further command: redis-py's next command either fails, or
    (when its pool has already seen the RST, which is what a synchronous reset allows) runs on
    a new connection. Either way the client then works, over exactly one new connection."""
    with client(fault_proxy.url) as r:
        assert r.ping()
        assert fault_proxy.reset() == 1
        try:
            r.set("k", "v")
        except redis.ConnectionError:
            r.set("k", "v")
        assert r.get("k") == b"v"
    stats = fault_proxy.stats
    assert stats.accepted == 2 and stats.resets == 1


def test_proxy_reset_does_not_wait_for_an_upstream_connect() -> None:
    """A connection still connecting upstream (the target's accept queue is full, so its SYNs
    are dropped) is reset at once: the connect is not counted as failed, and the client gets
    its RST although the connect timeout is ten minutes."""
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(0)  # queue of one, never accepted
        fillers = [socket.socket() for _ in range(2)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(target.getsockname())
            with (
                FaultProxy(target.getsockname(), connect_timeout=600) as proxy,
                socket.create_connection(proxy.address, timeout=30) as raw,
            ):
                proxy.wait_for(lambda s: s.active == 1)
                assert proxy.reset() == 1
                with pytest.raises(ConnectionResetError):
                    raw.recv(64)
                stats = proxy.stats
                assert stats.upstream_failures == 0 and stats.active == 0
        finally:
            for filler in fillers:
                filler.close()


def test_proxy_wait_for_is_woken_by_changes_and_has_a_guard(fault_proxy: FaultProxy) -> None:
    with socket.create_connection(fault_proxy.address, timeout=10) as raw:
        assert fault_proxy.wait_for(lambda s: s.active == 1).accepted == 1
        raw.sendall(b"PING\r\n")
        stats = fault_proxy.wait_for(lambda s: s.bytes_up >= 6 and s.bytes_down >= 7)
        assert (stats.bytes_up, stats.bytes_down) == (len(b"PING\r\n"), len(b"+PONG\r\n"))
    assert fault_proxy.wait_for(lambda s: s.active == 0).resets == 0  # closed by the client
    with pytest.raises(TimeoutError, match="never matched"):
        fault_proxy.wait_for(lambda s: s.refused > 0, timeout=0.01)


def test_proxy_blackhole_times_out_then_recovers(fault_proxy: FaultProxy) -> None:
    with client(fault_proxy.url, timeout=0.5) as r:
        assert r.ping()
        fault_proxy.blackhole(True)
        with pytest.raises(redis.TimeoutError):
            r.get("k")
    with client(fault_proxy.url, timeout=0.5) as during, pytest.raises(redis.TimeoutError):
        during.ping()
    assert fault_proxy.stats.bytes_dropped > 0

    fault_proxy.blackhole(False)

    with client(fault_proxy.url, timeout=2) as after:
        assert after.set("k", "v")
        assert after.get("k") == b"v"


def test_proxy_blackhole_off_resets_hung_connections(fault_proxy: FaultProxy) -> None:
    fault_proxy.blackhole(True)
    raw = socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5)
    with raw:
        raw.sendall(b"PING\r\n")
        fault_proxy.wait_for(lambda s: s.bytes_dropped >= len(b"PING\r\n"))
        fault_proxy.blackhole(False)
        # The hung connection ends (reset) instead of staying open forever.
        with pytest.raises(ConnectionResetError):
            while raw.recv(1024):
                pass
    assert fault_proxy.stats.resets >= 1


def test_proxy_latency_still_works(fault_proxy: FaultProxy) -> None:
    fault_proxy.latency(0.2)
    with client(fault_proxy.url) as r:
        assert r.set("k", "v")
        assert r.get("k") == b"v"
    fault_proxy.latency(0)
    with pytest.raises(ValueError):
        fault_proxy.latency(-1)


def test_proxy_refuse_makes_connecting_fail(fault_proxy: FaultProxy) -> None:
    fault_proxy.refuse(True)
    with client(fault_proxy.url) as r, pytest.raises(redis.ConnectionError):
        r.ping()
    assert fault_proxy.stats.refused >= 1
    fault_proxy.refuse(False)
    with client(fault_proxy.url) as r:
        assert r.ping()


def test_proxy_in_front_of_a_killed_server(killable_redis: RedisServer) -> None:
    with FaultProxy((killable_redis.host, killable_redis.port)) as proxy:
        with client(proxy.url) as r:
            r.set("k", "v")
        killable_redis.kill()
        with client(proxy.url) as r, pytest.raises(redis.ConnectionError):
            r.get("k")
        assert proxy.stats.upstream_failures >= 1
        killable_redis.restart()
        with client(proxy.url) as r:
            assert r.get("k") == b"v"


def test_proxy_stop_leaves_no_threads_fds_or_port(fresh_redis: RedisServer) -> None:
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    fds_before = me.num_fds()

    proxy = FaultProxy((fresh_redis.host, fresh_redis.port)).start()
    port = proxy.port
    open_conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(64) == b"+PONG\r\n"
    open_conn.sendall(b"PING\r\n")
    assert open_conn.recv(64) == b"+PONG\r\n"
    assert set(threading.enumerate()) - threads_before

    proxy.stop()
    proxy.stop()

    with open_conn, pytest.raises(ConnectionResetError):
        open_conn.recv(64)  # stop() resets open connections
    assert set(threading.enumerate()) - threads_before == set()
    assert me.num_fds() <= fds_before
    assert proxy.stats.active == 0
    assert_port_closed(port)


# -- Socks5Refuser ------------------------------------------------------------------------


def socks5_connect(port: int, request_address: bytes) -> bytes:
    """Raw SOCKS5: greeting with no-auth, then CONNECT; returns the server's reply header."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00" + request_address + struct.pack("!H", 443))
        reply = b""
        while len(reply) < 10:
            chunk = s.recv(10 - len(reply))
            if not chunk:
                break
            reply += chunk
        return reply


def test_refuser_answers_connection_refused(socks5_refuser: Socks5Refuser) -> None:
    name = b"web.whatsapp.com"
    domain = socks5_connect(socks5_refuser.port, b"\x03" + bytes([len(name)]) + name)
    assert domain[:2] == b"\x05\x05"
    assert socks5_refuser.last_target == ("web.whatsapp.com", 443)

    ipv4 = socks5_connect(socks5_refuser.port, b"\x01" + socket.inet_aton("192.0.2.1"))
    assert ipv4[:2] == b"\x05\x05"
    assert socks5_refuser.last_target == ("192.0.2.1", 443)

    ipv6 = socks5_connect(
        socks5_refuser.port, b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    )
    assert ipv6[:2] == b"\x05\x05"
    assert socks5_refuser.last_target == ("2001:db8::1", 443)

    assert socks5_refuser.attempts == 3
    assert socks5_refuser.address == f"socks5://127.0.0.1:{socks5_refuser.port}"


def test_refuser_rejects_auth_only_clients(socks5_refuser: Socks5Refuser) -> None:
    with socket.create_connection(("127.0.0.1", socks5_refuser.port), timeout=5) as s:
        s.sendall(b"\x05\x01\x02")  # username/password only
        assert s.recv(2) == b"\x05\xff"
    assert socks5_refuser.attempts == 0


def test_refuser_fails_a_real_neonize_connect(
    socks5_refuser: Socks5Refuser, tmp_path: Path
) -> None:
    from neonize.client import NewClient, ProxySettings

    wa = NewClient(str(tmp_path / "s.db"), uuid="t")
    with pytest.raises(Exception, match="failed to dial"):
        wa.connect(ProxySettings(proxy_address=socks5_refuser.address))
    assert socks5_refuser.attempts >= 1
    assert socks5_refuser.last_target is not None
    assert socks5_refuser.last_target[0] == "web.whatsapp.com"


def test_refuser_stop_joins_thread_and_closes_port() -> None:
    threads_before = set(threading.enumerate())
    refuser = Socks5Refuser().start()
    port = refuser.port
    socks5_connect(port, b"\x01" + socket.inet_aton("192.0.2.1"))
    refuser.stop()
    refuser.stop()
    assert set(threading.enumerate()) - threads_before == set()
    assert_port_closed(port)
