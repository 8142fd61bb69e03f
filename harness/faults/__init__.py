"""Loopback fault injection: a real Redis server, a faulty TCP proxy, a refusing SOCKS5 server.

Everything here listens on 127.0.0.1 only and sends nothing off the machine. One module per tool,
over the listener they share (:mod:`harness.faults.loopback`):

- ``RedisServer`` (:mod:`~harness.faults.redis_server`): a real ``redis-server`` child process
  (start, stop, kill -9, restart on the same port and data dir; AOF with ``appendfsync always``
  so acknowledged writes survive kill -9).
- ``FaultProxy`` (:mod:`~harness.faults.proxy`): a thread-based TCP proxy with ``reset()``,
  ``blackhole()``, ``latency()`` and ``refuse()`` controls, each synchronous, and
  ``wait_for(predicate)`` to wait for its counters without polling.
- ``Socks5Refuser`` (:mod:`~harness.faults.socks5`): a SOCKS5 server that answers every CONNECT
  with "connection refused" (0x05), which makes neonize's real Go client fail its websocket dial
  without leaving the machine.
"""

from harness.faults.loopback import LOOPBACK
from harness.faults.proxy import FaultProxy, ProxyStats
from harness.faults.redis_server import REDIS_SERVER_ENV, RedisServer, find_redis_server
from harness.faults.socks5 import Socks5Refuser

__all__ = [
    "LOOPBACK",
    "REDIS_SERVER_ENV",
    "FaultProxy",
    "ProxyStats",
    "RedisServer",
    "Socks5Refuser",
    "find_redis_server",
]
