"""Planted leaks at several rates, and the cycles of the other figures of docs/harness.md.

Each name is a cycle or a scenario for ``python -m harness soak``, run from the repository's
root: ``python -m harness soak --no-memray --scenario benchmarks.soak_cases:object_every_10``.
"""

from __future__ import annotations

import ctypes
import functools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

kept: list[Any] = []
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def _every(n: int, leak: Callable[[], object]) -> Callable[[int], None]:
    def cycle(i: int) -> None:
        if i % n == 0:
            leak()

    return cycle


def _malloc(size: int) -> Callable[[int], None]:
    def cycle(i: int) -> None:
        _libc.malloc(size - 16)  # size bytes of C heap: malloc's chunk, its header included

    return cycle


def _touch(size: int) -> Callable[[int], None]:
    def cycle(i: int) -> None:
        ctypes.memset(_libc.malloc(size - 16), 1, size - 16)  # written: resident

    return cycle


def _in_reconnect(every: int, leak: Callable[[], object]) -> Callable[[], AsyncIterator[Any]]:
    """The reconnect scenario with a leak planted every ``every`` cycles: a noisy host."""

    async def setup() -> AsyncIterator[Any]:
        from harness.model import Workload, open_async
        from harness.scenarios import resolve

        async with open_async(resolve("reconnect")) as inner:

            async def cycle(i: int) -> None:
                await inner.cycle(i)
                if i % every == 0:
                    leak()

            yield Workload(cycle, registries=inner.registries)

    return setup


# One leak every n cycles: 0.01 to 0.1 per cycle; an object (py_blocks), a list (gc_objects too).
object_every_100 = _every(100, lambda: kept.append(object()))
object_every_50 = _every(50, lambda: kept.append(object()))
object_every_20 = _every(20, lambda: kept.append(object()))
object_every_10 = _every(10, lambda: kept.append(object()))
list_every_100 = _every(100, lambda: kept.append([]))
list_every_50 = _every(50, lambda: kept.append([]))
list_every_20 = _every(20, lambda: kept.append([]))
list_every_10 = _every(10, lambda: kept.append([]))
# Bytes of C heap per cycle; touch_*: written, so RSS can see them.
malloc_32 = _malloc(32)
malloc_64 = _malloc(64)
malloc_128 = _malloc(128)
malloc_256 = _malloc(256)
touch_64 = _touch(64)
touch_128 = _touch(128)
touch_256 = _touch(256)
touch_1024 = _touch(1024)
touch_4096 = _touch(4096)
# The same leaks inside the reconnect scenario.
reconnect_object_every_10 = _in_reconnect(10, lambda: kept.append(object()))
reconnect_list_every_10 = _in_reconnect(10, lambda: kept.append([]))
reconnect_malloc_64 = _in_reconnect(1, lambda: _libc.malloc(64 - 16))
reconnect_malloc_128 = _in_reconnect(1, lambda: _libc.malloc(128 - 16))
# Staircases: a block kept every n cycles (a bytearray: malloc'ed, zeroed, so heap and rss).
blocks_256k_every_500 = _every(500, lambda: kept.append(bytearray(256 * 1024)))
blocks_256k_every_900 = _every(900, lambda: kept.append(bytearray(256 * 1024)))
blocks_256k_every_1500 = _every(1500, lambda: kept.append(bytearray(256 * 1024)))
blocks_512k_every_500 = _every(500, lambda: kept.append(bytearray(512 * 1024)))
blocks_512k_every_900 = _every(900, lambda: kept.append(bytearray(512 * 1024)))
blocks_512k_every_1500 = _every(1500, lambda: kept.append(bytearray(512 * 1024)))


def _arena(per_cycle: int, low: int, high: int) -> Callable[[int], None]:
    """upb's pattern: ``per_cycle`` bytes a cycle taken from a C arena whose blocks of ``low``
    to ``high`` bytes (drawn from a seeded generator) are malloc'ed and never written: the C
    heap steps by a block when the current one is used up, RSS does not move."""
    sizes = random.Random(22)
    room = [0]

    def cycle(i: int) -> None:
        if room[0] < per_cycle:
            size = sizes.randrange(low, high)
            _libc.malloc(size)
            room[0] = size
        room[0] -= per_cycle

    return cycle


# 400 B a cycle from blocks of 445 to 594 KiB: a block every 1,140 to 1,520 cycles.
arena_400 = _arena(400, 445 * 1024, 594 * 1024)


def clean(i: int) -> None:
    d = {"cycle": i, "text": str(i)}
    d.clear()


@functools.lru_cache(maxsize=1000)
def _lookup(key: int) -> str:
    return f"value {key} " + "x" * 100


def lru(i: int) -> None:
    _lookup(i * 2 // 3 if i < 1500 else i % 1000)  # 1,000 keys over the first 1,500 cycles


def compiled(i: int) -> None:  # a new code object every cycle
    namespace: dict[str, Any] = {}
    exec(compile(f"def f(x):\n    return x + {i}\n", "<cycle>", "exec"), namespace)
    namespace["f"](1)
