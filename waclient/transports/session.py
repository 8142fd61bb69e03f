"""``NeonizeSession``: one real neonize ``NewClient``, driven by blocking calls.

The same object serves the in-process transport (its blocking calls run on threads of the
parent) and the worker process of the isolated transport. It forwards every event the Go side
delivers (all of :data:`~waclient.events.SUPPORTED_EVENTS`) as ``(code, protobuf bytes)`` or,
for the in-process transport, decoded through neonize's own ``Event.execute`` path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from waclient.events import SUPPORTED_EVENTS, Event, event_code, event_type
from waclient.pairing import qr_event
from waclient.transports import calls
from waclient.transports.base import TransportError
from waclient.transports.failures import call_failed

__all__ = ["NeonizeSession", "install_bridge"]

RawSink = Callable[[int, bytes], None]


class NeonizeSession:
    """A neonize client for one database, connected by :meth:`run_blocking`.

    Exactly one of ``deliver`` (decoded events, through neonize's ``Event.execute``) and
    ``deliver_raw`` (the Go side's bytes as they are, for a parent process to decode) is given.
    """

    def __init__(
        self,
        database: str,
        *,
        name: str,
        proxy: str | None,
        deliver: Callable[[Event], None] | None = None,
        deliver_raw: RawSink | None = None,
    ) -> None:
        if (deliver is None) == (deliver_raw is None):
            raise ValueError("give exactly one of deliver and deliver_raw")
        from neonize.client import NewClient

        self.proxy = proxy
        self.client = NewClient(database, uuid=name)
        if deliver is not None:
            install_bridge(self.client, deliver)
            deliver_qr = deliver
        else:
            assert deliver_raw is not None
            install_bridge(self.client, lambda _event: None)  # subscribes the event codes
            _forward_raw(self.client, deliver_raw)
            raw = deliver_raw

            def deliver_qr(event: Event) -> None:
                raw(event_code(type(event)), event.SerializeToString())

        # neonize hands QR codes to a callback of their own (and prints them): here each one is
        # a QREv event, delivered as every other event is.
        self.client.event.qr(lambda _c, data: deliver_qr(qr_event(data.decode(errors="replace"))))

    def run_blocking(self) -> None:
        """Connect and block until the Go side stops; :class:`TransportError` if it could not."""
        from neonize.client import ProxySettings

        proxy = ProxySettings(proxy_address=self.proxy) if self.proxy else None
        try:
            self.client.connect(proxy)
        except Exception as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def stop(self) -> None:
        self.client.stop()

    def call(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call a public ``NewClient`` method; the Go side's errors become TransportError (and
        stay neonize's class: :func:`~waclient.transports.failures.call_failed`)."""
        calls.check_method(method)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except TypeError as exc:
            raise calls.CallError(f"{method}: {exc}") from exc
        except Exception as exc:
            raise call_failed(method, type(exc).__name__, str(exc)) from exc


def install_bridge(neonize_client: Any, deliver: Callable[[Event], None]) -> None:
    """Install ONE bridge handler per supported event type on a neonize ``NewClient``.

    The handlers are plain closures (neonize would keep only a weak reference to a bound
    method) and are installed before ``connect()``, because the set of subscribed event codes
    is passed to Go at connect time. neonize's ``execute`` keeps the ``Device`` event (code 0)
    for itself; it is decoded and delivered here too, so every one of the 42 types arrives.
    """

    def bridge(_client: object, message: Event) -> None:
        deliver(message)

    for kind in SUPPORTED_EVENTS:
        neonize_client.event.list_func[event_code(kind)] = bridge
    execute = neonize_client.event.execute
    device = event_type(0)

    def execute_and_deliver_device(uuid: Any, binary: int, size: int, code: int) -> None:
        execute(uuid, binary, size, code)
        if code == 0:
            deliver(device.FromString(ctypes.string_at(binary, size)))

    neonize_client.event.execute = execute_and_deliver_device


def _forward_raw(neonize_client: Any, deliver_raw: RawSink) -> None:
    """Make the Go side's callback forward each event's bytes without decoding them.

    ``connect()`` wraps ``client.event.execute`` in the ctypes callback, so replacing it before
    connecting is enough. The ``Device`` event still sets ``client.me`` as neonize expects.
    """
    execute = neonize_client.event.execute

    def raw_execute(uuid: Any, binary: int, size: int, code: int) -> None:
        if code == 0:
            execute(uuid, binary, size, code)
        deliver_raw(code, ctypes.string_at(binary, size))

    neonize_client.event.execute = raw_execute
