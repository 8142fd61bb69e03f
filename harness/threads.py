"""Where threads start (memray sees a new thread's own memory with no Python stack), and where
every thread and task waits (a stalled cycle)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from types import FrameType

__all__ = ["Frames", "Stacks", "stacks_now", "thread_starts"]

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


Stacks = dict[str, list[str]]
"""``"thread NAME"``/``"task NAME"`` -> its frames, ``"path:line in function"``, outermost first."""


def stacks_now(interrupted: FrameType | None = None) -> Stacks:
    """Where every other thread, and every other task of the running loop, is now.

    ``interrupted``: the frame a signal interrupted in this thread, whose stack is included
    (this thread's own stack is the caller's otherwise, and left out).
    """
    out: Stacks = {}
    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident == me:
            if interrupted is None:
                continue
            frame = interrupted
        summary = traceback.extract_stack(frame)
        out[f"thread {names.get(ident, ident)}"] = _lines(
            (f.filename, f.lineno or 0, f.name) for f in summary
        )
    try:
        current = asyncio.current_task()
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        return out
    for task in tasks:
        if task is not current:
            out[f"task {task.get_name()}"] = _lines(_awaiting(task.get_coro()))
    return out


def _awaiting(coro: object) -> Iterator[tuple[str, int, str]]:
    """The frames of a suspended coroutine and of what it awaits, down the chain, outermost
    first (``Task.get_stack`` gives only the outermost)."""
    for _ in range(1000):  # a chain of awaits, never a cycle; bounded all the same
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is None:
            return
        yield frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )


def _lines(frames: Iterable[tuple[str, int, str]]) -> list[str]:
    return [f"{filename}:{line} in {name}" for filename, line, name in frames]
