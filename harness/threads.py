"""Where threads start: memray sees a new thread's own memory with no Python stack."""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections.abc import Iterator

__all__ = ["Frames", "thread_starts"]

Frames = list[tuple[str, str, int]]
"""(function, file, line), innermost first, as memray gives them."""


@contextlib.contextmanager
def thread_starts() -> Iterator[dict[str, Frames]]:
    """While open, where each ``threading.Thread`` was started: thread name -> the frames of
    the ``start()`` call. The leak sites give a thread's frameless memory to that line."""
    starts: dict[str, Frames] = {}
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        stack = traceback.extract_stack(sys._getframe(1), limit=16)
        starts[thread.name] = [(f.name, f.filename, f.lineno or 0) for f in reversed(stack)]
        original(thread)

    threading.Thread.start = start  # type: ignore[method-assign,assignment]
    try:
        yield starts
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
