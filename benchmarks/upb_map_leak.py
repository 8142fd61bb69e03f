"""Record a soak of upb's map-lookup leak (protobuf 4.24.4): tests/data/staircases.json.

protobuf 4.24.4's upb backend copies the key of every ``map[key]`` / ``map.get(key)`` into the
message's arena (protobuf#14571, fixed in 4.25): about 400 B per lookup with a 384-character
key, taken from arena blocks that double in size. The C heap rises in steps (144, 288, 576 KiB,
1.13 MiB...), flat between them: a staircase. Run in a fresh process, with protobuf 4.24.4
first on the path::

    pip install --target /tmp/pb424 protobuf==4.24.4
    PYTHONPATH=/tmp/pb424:. python benchmarks/upb_map_leak.py out.json 10000

The harness's heap probe reads glibc's ``mallinfo2`` through ``waclient.memory``, whose package
imports neonize, which needs protobuf >= 5; until the measured process stops importing it
(issue 22, item 1), this script gives the soak a heap probe of its own, the same reading.
"""

from __future__ import annotations

import ctypes
import sys

import harness.probes
from harness.probes import FLOORS, Probe


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def heap_probe(threshold: float | None = None) -> Probe:
    """The harness's heap channel (``uordblks + hblkhd``) without importing waclient."""

    def read() -> float:
        info = _libc.mallinfo2()
        return float(info.uordblks + info.hblkhd)

    return Probe("heap", read, "bytes", threshold, 0.0, "C heap in use (mallinfo2)", FLOORS["heap"])


def main(out: str, cycles: int) -> None:
    harness.probes.heap_probe = heap_probe
    import google.protobuf
    from google.protobuf import struct_pb2

    from harness import soak

    assert google.protobuf.__version__ == "4.24.4", google.protobuf.__version__
    key = "k" * 384
    message = struct_pb2.Struct()
    message.fields["a"].string_value = "x"

    def cycle(i: int) -> None:
        message.fields.get(key)  # the leak: the key copied into the message's arena

    verdict = soak(cycle, cycles=cycles, memray=False, name="upb-map-get")
    with open(out, "w", encoding="utf-8") as f:
        f.write(verdict.to_json())
    print(verdict.summary())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
