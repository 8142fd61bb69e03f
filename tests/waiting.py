"""Waiting for a condition in tests: poll it until it holds, failing with what was awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["eventually", "until_waiting"]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Return once ``check()`` holds; fail naming ``what`` after ``timeout`` seconds (a hang,
    not a slow machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.005)


async def until_waiting(stats: Callable[[], object], producers: int = 1) -> None:
    """Wait until ``producers`` producers wait for room (``stats().producers_waiting``)."""
    await eventually(
        lambda: stats().producers_waiting >= producers,
        f"{producers} producer(s) waiting for room",
    )
