"""``Lifetime``: ``async with component:`` for every long-lived component with ``start()`` and
``close()`` (the client, the recorders, the scheduler, the webhook dispatcher, the host)."""

from __future__ import annotations

from typing import Self

__all__ = ["Lifetime"]


class Lifetime:
    """Entering starts the component; leaving closes it, whatever ended the block."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
