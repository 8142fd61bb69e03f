"""The Redis names the webhook machinery uses, and the operations on one endpoint's data that
need no running dispatcher (replaying its dead letters, forgetting it)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = ["WebhookKeys", "forget_endpoint", "replay_dead_letters"]

REPLAY_BATCH = 256


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    prefix: str = "waclient"

    def group(self, endpoint_id: str) -> str:
        """The endpoint's consumer group, on every stream it reads."""
        return f"webhook:{endpoint_id}"

    def dead(self, endpoint_id: str) -> str:
        """The endpoint's dead-letter stream."""
        return f"{self.prefix}:webhooks:dead:{endpoint_id}"

    def replay(self, endpoint_id: str) -> str:
        """The endpoint's replay stream: dead letters sent back for another round."""
        return f"{self.prefix}:webhooks:replay:{endpoint_id}"

    def attempts(self, endpoint_id: str) -> str:
        """Hash of failed attempts per pending entry (``stream|entry-id`` -> count)."""
        return f"{self.prefix}:webhooks:attempts:{endpoint_id}"


async def replay_dead_letters(
    redis: Redis, keys: WebhookKeys, endpoint_id: str, *, limit: int | None = None
) -> int:
    """Move the endpoint's dead letters (oldest first, at most ``limit``) to its replay
    stream, where its dispatcher delivers them again with their original ``webhook-id``.
    Returns how many moved. Each batch moves atomically (XADD and XDEL in one transaction)."""
    dead, replay = keys.dead(endpoint_id), keys.replay(endpoint_id)
    moved = 0
    start = "-"
    while limit is None or moved < limit:
        count = REPLAY_BATCH if limit is None else min(REPLAY_BATCH, limit - moved)
        entries: list[Any] = await redis.xrange(dead, min=start, count=count) or []
        if not entries:
            break
        async with redis.pipeline(transaction=True) as pipe:
            for _entry_id, fields in entries:
                pipe.xadd(
                    replay,
                    {k: fields[k] for k in (b"webhook_id", b"type", b"body") if k in fields},
                )
            pipe.xdel(dead, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
        moved += len(entries)
        start = "(" + _text(entries[-1][0])
    return moved


async def forget_endpoint(
    redis: Redis, keys: WebhookKeys, endpoint_id: str, streams: Sequence[str]
) -> None:
    """Drop the endpoint's consumer groups on ``streams``, its dead letters, replay stream and
    attempt counts (after it was deleted)."""
    group = keys.group(endpoint_id)
    for stream in (*streams, keys.replay(endpoint_id)):
        with contextlib.suppress(ResponseError):  # no such stream or group
            await redis.xgroup_destroy(stream, group)
    await redis.delete(keys.dead(endpoint_id), keys.replay(endpoint_id), keys.attempts(endpoint_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
