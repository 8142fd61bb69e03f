"""The host soak's fault process: ``python -P harness/host_soak/fault_process.py IDS_FILE
SESSION``.

A real redis-server behind a :class:`~harness.faults.FaultProxy`, and the webhook receiver
(:class:`~harness.webhook_receiver.ReceiverProcess`, a child of this process) with its control:
the proxy's pump threads, the receiver's subprocess and the Redis reads that count the backlog
stay out of the processes measured. Commands come on stdin, one JSON line each, answered on
stdout: ``cut``, ``heal``, ``receiver_down``, ``receiver_up``, ``tally``, ``quit``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

    from harness.webhook_receiver import ReceiverProcess

BACKLOG_CAP = 10_000


def main(argv: list[str]) -> int:
    """``fault_process.py IDS_FILE SESSION``: a real redis-server behind a FaultProxy (``cut``
    refuses and resets, ``heal`` heals) and the webhook receiver, recording to ``IDS_FILE``
    (``receiver_down`` kills it, ``receiver_up`` starts it again; both answer the backlog in
    Redis just before; ``tally`` counts what reached it in the streams of the host's session
    ``SESSION``)."""
    if len(argv) != 2:
        print("usage: fault_process.py IDS_FILE SESSION", file=sys.stderr)
        return 2
    ids_file, session = argv
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the harness's root
    import redis

    from harness.faults import FaultProxy, RedisServer
    from harness.webhook_receiver import ReceiverProcess
    from waclient.webhooks.signing import generate_secret

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the receiver is stopped on the way
    receiver = ReceiverProcess(generate_secret(), ids_file)
    with RedisServer() as server, FaultProxy((server.host, server.port)) as proxy:
        server.start()
        direct = redis.Redis.from_url(server.url)
        try:
            receiver.start()
            print(json.dumps({"url": proxy.url, "direct": server.url, "webhook_url": receiver.url,
                              "webhook_secret": receiver.secret}), flush=True)  # fmt: skip
            for line in sys.stdin:
                cmd = json.loads(line)["cmd"]
                reply: dict[str, Any] = {"done": cmd}
                if cmd == "cut":
                    proxy.refuse(True)
                    proxy.reset()
                elif cmd == "heal":
                    proxy.heal()
                elif cmd == "receiver_down":
                    reply["backlog"] = _backlog(direct, session)
                    receiver.stop()
                elif cmd == "receiver_up":
                    reply["backlog"] = _backlog(direct, session)
                    receiver.start()
                elif cmd == "tally":
                    reply |= _tally(direct, session, receiver)
                elif cmd == "quit":
                    break
                print(json.dumps(reply), flush=True)
        finally:
            receiver.stop()
            direct.close()
    return 0


def _source_streams(session: str) -> dict[str, str]:
    """The streams the host's dispatcher delivers, by source name (``webhook-id`` prefix)."""
    from waclient.webhooks import default_sources

    return {source.name: source.stream for source in default_sources(session)}


def _backlog(r: Redis, session: str) -> int:
    """Entries of the source streams that the webhook groups have pending or not read yet
    (counted, as Redis < 7 reports no ``lag``; up to :data:`BACKLOG_CAP` per stream)."""
    from redis.exceptions import ResponseError

    total = 0
    for stream in _source_streams(session).values():
        try:
            groups: Any = r.xinfo_groups(stream)
        except ResponseError:  # the stream does not exist yet
            continue
        for group in groups:
            if group["name"].startswith(b"webhook:"):
                after = b"(" + group["last-delivered-id"]
                unread: Any = r.xrange(stream, after, "+", count=BACKLOG_CAP)
                total += group["pending"] + len(unread)
    return int(total)


def _tally(r: Redis, session: str, receiver: ReceiverProcess) -> dict[str, Any]:
    """Every event now in the source streams (its ``webhook-id``) against what the receiver
    answered 2xx."""
    expected: set[str] = set()
    for name, stream in _source_streams(session).items():
        entries: Any = r.xrange(stream)
        expected.update(f"{name}_{entry_id.decode()}" for entry_id, _ in entries)
    received = receiver.ids()
    counts = receiver.counts()
    return {
        "webhook_events": len(expected),
        "webhook_missing": len(expected - received.keys()),
        "webhook_deliveries": counts.deliveries,
        "webhook_distinct": counts.distinct,
        "webhook_bad_signatures": counts.bad_signatures,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
