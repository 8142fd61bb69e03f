"""The worker process of :class:`~waclient.transports.IsolatedTransport`.

``python -m waclient.transports._worker CONTROL EVENTS SPEC``: reads requests from the parent
over the socket ``CONTROL`` and answers them there; forwards the Go side's events as
``(code, protobuf bytes)`` frames over the socket ``EVENTS`` without decoding them, followed by
the session's end. Replies never queue behind events: a Go callback that waits for room on the
event socket (the parent's inbox and its disk budget full) holds up no reply, and the main
thread, which reads requests and answers heartbeats, never waits for either.

The Go side is the real neonize client
(:class:`~waclient.transports.session.NeonizeSession`) or, with ``kind="simulated"``, a
script whose calls :class:`~waclient.transports.simulated.SimulatedWhatsApp` answers.

Frames: ``E`` + event code (u16) + protobuf bytes; ``C`` + a pickled control tuple. A reply
larger than the frame limit is not sent: the request fails with a message saying so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from waclient._unused_imports import skip_unused_imports
from waclient.transports import calls
from waclient.transports._wire import (
    CODE,
    EVENT_FRAME,
    FRAME_OVERHEAD,
    WorkerSpec,
    control_frame,
)
from waclient.transports.base import TransportError


def main(argv: list[str]) -> None:
    skip_unused_imports()  # before neonize imports httpx
    control, events, spec = int(argv[0]), int(argv[1]), WorkerSpec(**json.loads(argv[2]))
    serve(Connection(control), Connection(events), spec)


def serve(control_conn: Connection, events_conn: Connection, spec: WorkerSpec) -> None:
    """The worker's main thread: read requests until told to exit or the parent is gone."""
    _die_with_parent()
    control_send = _sender(control_conn)
    event_send = _sender(events_conn)

    def control(*message: Any) -> None:
        control_send(control_frame(*message))

    def emit(code: int, data: bytes) -> None:
        event_send(bytes((EVENT_FRAME,)) + CODE.pack(code) + data)

    go: GoSide = NeonizeGo(spec, emit, control) if spec.kind == "neonize" else SimulatedGo(emit)

    def session() -> None:
        try:
            go.run_blocking()
        except TransportError as exc:
            event_send(control_frame("ended", str(exc)))
        else:
            event_send(control_frame("ended", None))

    def reply(send: Callable[[bytes], None], request_id: int, fn: Callable[[], Any]) -> None:
        try:
            frame = control_frame("reply", request_id, True, calls.encode_value(fn()))
        except Exception as exc:
            frame = control_frame("reply", request_id, False, _describe(exc))
        if len(frame) > spec.max_frame + FRAME_OVERHEAD:
            failure = (False, _too_large(len(frame), spec.max_frame), None)
            frame = control_frame("reply", request_id, False, failure)
        send(frame)

    # The parent sends at most max_in_flight requests at once: a pool that size never queues.
    calls_pool = ThreadPoolExecutor(spec.max_in_flight, thread_name_prefix="worker-call")
    # The simulated Go side's scripted events, one job after another, off the main thread;
    # each job's reply follows its events on the event socket.
    debug_jobs = ThreadPoolExecutor(1, thread_name_prefix="worker-debug")
    control("ready", os.getpid())
    while True:
        try:
            message = pickle.loads(control_conn.recv_bytes(spec.max_frame + FRAME_OVERHEAD))
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "run":
            threading.Thread(target=session, name="worker-session", daemon=True).start()
        elif kind == "stop":
            go.stop()
        elif kind == "ping":
            control("pong", message[1])
        elif kind == "call":
            _, request_id, wire = message
            calls_pool.submit(reply, control_send, request_id, functools.partial(go.call, wire))
        elif kind in ("emit", "disconnect", "fail", "heal"):
            job = functools.partial(go.debug, kind, *message[2:])
            debug_jobs.submit(reply, event_send, message[1], job)
        elif kind == "exit":
            break
    go.stop()
    os._exit(0)


class GoSide:
    def run_blocking(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def call(self, wire: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def debug(self, kind: str, *args: Any) -> None:
        raise TransportError(f"{kind} is only for a simulated worker")


class NeonizeGo(GoSide):
    """The real neonize client, forwarding raw (code, bytes) events without decoding them."""

    def __init__(
        self,
        spec: WorkerSpec,
        emit: Callable[[int, bytes], None],
        control: Callable[..., None],
    ) -> None:
        from waclient.transports.session import NeonizeSession

        self.session = NeonizeSession(
            spec.database,
            name=spec.name,
            proxy=spec.proxy,
            deliver_raw=emit,
        )

    def run_blocking(self) -> None:
        self.session.run_blocking()

    def stop(self) -> None:
        self.session.stop()

    def call(self, wire: tuple[Any, ...]) -> Any:
        method, args, kwargs = calls.decode(wire)
        return self.session.call(method, args, kwargs)


class SimulatedGo(GoSide):
    """A scripted Go side: connects at once, emits what it is asked, answers every call."""

    def __init__(self, emit: Callable[[int, bytes], None]) -> None:
        from waclient.transports.simulated import SimulatedWhatsApp

        self.emit = emit
        self.ended = threading.Event()
        self.whatsapp = SimulatedWhatsApp()

    def run_blocking(self) -> None:
        from waclient.events import ConnectedEv, event_code

        self.ended.clear()
        self.emit(event_code(ConnectedEv), ConnectedEv(status=True).SerializePartialToString())
        self.ended.wait()

    def stop(self) -> None:
        self.ended.set()

    def call(self, wire: tuple[Any, ...]) -> Any:
        method, args, kwargs = calls.decode(wire)
        return self.whatsapp.answer(method, args, kwargs)

    def debug(self, kind: str, *args: Any) -> None:
        from waclient.events import DisconnectedEv, event_code

        if kind == "emit":
            batch, repeat = args
            for _ in range(repeat):
                for code, data in batch:
                    self.emit(code, data)
        elif kind == "fail":
            method, error, error_type = args
            self.whatsapp.fail(method, error, error_type=error_type)
        elif kind == "heal":
            self.whatsapp.heal(*args)
        else:
            data = DisconnectedEv(status=True).SerializePartialToString()
            self.emit(event_code(DisconnectedEv), data)
            self.ended.set()


def _sender(conn: Connection) -> Callable[[bytes], None]:
    """Send whole frames on ``conn`` from any thread, one at a time."""
    lock = threading.Lock()

    def send(frame: bytes) -> None:
        with lock:
            conn.send_bytes(frame)

    return send


def _describe(exc: Exception) -> tuple[bool, str, tuple[str, str | None, str] | None]:
    """(whether it is a CallError, the message, and for a failed call what
    :func:`~waclient.transports.failures.call_failed` rebuilds it from) of a failed request."""
    if isinstance(exc, TransportError) and exc.method is not None:
        return False, str(exc), (exc.method, exc.error_type, exc.detail)
    if isinstance(exc, calls.CallError | TransportError):
        return isinstance(exc, calls.CallError), str(exc), None
    return False, f"{type(exc).__name__}: {exc}", None


def _too_large(size: int, limit: int) -> str:
    return (
        f"the reply ({size >> 20} MiB) is larger than the frame limit ({limit >> 20} MiB); "
        "download media of this size to a path"
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
