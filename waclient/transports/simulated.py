"""``SimulatedTransport``: a scripted Go side for tests, soaks and local try-outs.

Shipped with the library as httpx ships ``MockTransport``. Every event is a real
``neonize.proto`` message serialized to bytes, put in a ctypes buffer and delivered through
neonize's own ctypes callback type and ``Event.execute`` decoding path, on a thread of its own
(as Go's would be), into the same bridge that ``NeonizeTransport`` installs. Every call is
answered by :class:`SimulatedWhatsApp` with real neonize protobuf responses. Only the network is
missing: connects succeed or fail as the script says.

    sim = SimulatedTransport(auto_connect=False)
    async with Client(sim, backoff=Backoff(0, 0, jitter=0)) as client:
        session = await sim.wait_session()
        await sim.connect()                  # Connected
        await sim.emit(message_event(text="hi"))
        await sim.disconnect()               # Disconnected, then the session ends
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import os
import queue
import random
import threading
import time
import typing
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from neonize.proto import Neonize_pb2 as pb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from waclient.events import Event, event_code
from waclient.pairing import qr_code
from waclient.transports import calls
from waclient.transports.base import EventSink, TransportError
from waclient.transports.failures import call_failed
from waclient.transports.session import install_bridge

__all__ = [
    "MEDIA_KINDS",
    "ReceiptKind",
    "SimSession",
    "SimulatedTransport",
    "SimulatedWhatsApp",
    "client_outdated_event",
    "connected_event",
    "disconnected_event",
    "logged_out_event",
    "media_message_event",
    "message_event",
    "receipt_event",
    "simulated_media",
    "stream_replaced_event",
    "temporary_ban_event",
]

T = TypeVar("T")
Outcome = Literal["ok", "fail"]
MediaKind = Literal["image", "video", "audio", "document", "sticker"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("image", "video", "audio", "document", "sticker")
_MIMETYPES = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg; codecs=opus",
    "document": "application/octet-stream",
    "sticker": "image/webp",
}
_SIM_PATH = "/simulated/"


@dataclass(eq=False)
class SimSession:
    """One simulated session (one ``Transport.run`` call)."""

    number: int
    sink: EventSink
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: int = 0


class SimulatedTransport:
    """A :class:`~waclient.transports.Transport` whose Go side is a script.

    ``outcomes`` scripts the attempts in order (``"ok"`` or ``"fail"``); after it runs out every
    attempt is ``default_outcome``. With ``auto_connect`` a successful attempt emits Connected by
    itself; without it the test calls :meth:`connect`. Calls are answered by :attr:`whatsapp`.
    """

    def __init__(
        self,
        *,
        outcomes: Iterable[Outcome] = (),
        default_outcome: Outcome = "ok",
        auto_connect: bool = True,
        call_log: int = 1000,
        name: str = "simulated",
    ) -> None:
        from neonize._binder import func_callback_bytes
        from neonize.client import NewClient

        self.default_outcome: Outcome = default_outcome
        self.auto_connect = auto_connect
        self.whatsapp = SimulatedWhatsApp(call_log=call_log)
        self.latest_qr: str | None = None
        self.sessions_started = 0
        self.live_sessions = 0
        self.max_live_sessions = 0
        self.failed_attempts = 0
        self._outcomes: deque[Outcome] = deque(outcomes)
        self._session: SimSession | None = None
        self._changed = asyncio.Event()
        # The neonize client is only a decoder here: it is never connected.
        self._neonize = NewClient(f"{name}.db", uuid=name)
        self._uuid = name.encode()
        self._target: EventSink | None = None
        install_bridge(self._neonize, self._to_target)
        self._callback = func_callback_bytes(self._neonize.event.execute)
        self._go = JobThread("sim-go")
        """The Go side's event thread: emits in order, may wait while the client is full."""
        self._answers = JobThread("sim-calls")
        """Where calls are answered: never behind events (whatsmeow reads a request's answer
        on its own path, not through the event handlers)."""

    # -- Transport --------------------------------------------------------------------------

    async def run(self, sink: EventSink) -> None:
        outcome = self._outcomes.popleft() if self._outcomes else self.default_outcome
        self.sessions_started += 1
        if outcome == "fail":
            self.failed_attempts += 1
            raise TransportError("simulated connect failure")
        session = SimSession(self.sessions_started, sink)
        self.live_sessions += 1
        self.max_live_sessions = max(self.max_live_sessions, self.live_sessions)
        self._session = session
        self._notify()
        try:
            if self.auto_connect:
                await self._emit_to(session, (connected_event(),))
            await session.ended.wait()
        finally:
            self.live_sessions -= 1
            session.ended.set()
            if self._session is session:
                self._session = None
            self._notify()

    async def stop(self) -> None:
        session = self._session
        if session is not None:
            session.ended.set()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # The same validation and round trip through the wire form as every transport.
        _, wire_args, wire_kwargs = calls.encode(method, args, kwargs)
        if self._session is None:
            raise TransportError("not connected: no session is running")

        def answer() -> Any:
            args = [calls.decode_value(a) for a in wire_args]
            kwargs = {k: calls.decode_value(v) for k, v in wire_kwargs.items()}
            return calls.encode_value(self.whatsapp.answer(method, args, kwargs))

        # Off the loop, as neonize's blocking calls are in the in-process transport, and off
        # the event thread: an answer never waits behind events.
        return calls.decode_value(await self._answers.run(answer))

    async def pair_phone(self, phone: str) -> str:
        return str(await self.call("PairPhone", phone, True))

    async def close(self) -> None:
        await self.stop()
        await self._go.close()
        await self._answers.close()

    # -- the script -------------------------------------------------------------------------

    @property
    def session(self) -> SimSession | None:
        """The live session, if any."""
        return self._session

    def script(self, *outcomes: Outcome) -> None:
        """Append outcomes for the next attempts."""
        self._outcomes.extend(outcomes)

    async def wait_session(self, number: int | None = None, timeout: float = 30.0) -> SimSession:
        """Wait for a live session (numbered ``number`` or later) and return it."""

        async def until_live() -> SimSession:
            while True:
                session = self._session
                if session is not None and (number is None or session.number >= number):
                    return session
                await self._changed.wait()

        return await asyncio.wait_for(until_live(), timeout)

    async def emit(self, *events: Event) -> None:
        """Deliver events in the live session, through neonize's decoding path."""
        session = self._session
        if session is None:
            raise TransportError("no live session to emit in")
        await self._emit_to(session, events)

    async def emit_late(self, session: SimSession, *events: Event) -> None:
        """Deliver events through the sink of a session that may have ended: a late callback."""
        await self._emit_to(session, events)

    async def connect(self) -> None:
        """Connected, in the live session."""
        await self.emit(connected_event())

    async def drop(self) -> None:
        """Disconnected, but the session stays: whatsmeow is reconnecting it."""
        await self.emit(disconnected_event())

    async def disconnect(self) -> None:
        """Disconnected, then the session ends (the Go side stopped)."""
        session = self._session
        if session is None:
            raise TransportError("no live session to disconnect")
        await self._emit_to(session, (disconnected_event(),))
        session.ended.set()

    async def fail(
        self, method: str, error: str = "simulated failure", *, error_type: str | None = None
    ) -> None:
        """Every call of ``method`` fails with ``error`` until :meth:`heal`
        (:meth:`SimulatedWhatsApp.fail`)."""
        self.whatsapp.fail(method, error, error_type=error_type)

    async def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (or every method)."""
        self.whatsapp.heal(method)

    async def on_event_thread(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the simulated Go side's event thread, after every event emitted so far
        (it waits while they wait for room in the client); its result or its exception."""
        return await self._go.run(job)

    # -- helpers ----------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _emit_to(self, session: SimSession, events: Iterable[Event]) -> None:
        batch = [(event_code(type(e)), e.SerializePartialToString()) for e in events]
        session.events += len(batch)
        await self._go.run(lambda: self._execute(session.sink, batch))

    def _execute(self, sink: EventSink, batch: list[tuple[int, bytes]]) -> None:
        self._target = sink
        try:
            for code, data in batch:
                buffer = ctypes.create_string_buffer(data, max(1, len(data)))
                self._callback(self._uuid, ctypes.addressof(buffer), len(data), code)
        finally:
            self._target = None

    def _to_target(self, event: Event) -> None:
        if (qr := qr_code(event)) is not None:
            self.latest_qr = qr
        target = self._target
        if target is not None:
            target(event)


class JobThread:
    """One thread, started on first use, that runs jobs in order off the event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                outcome: tuple[BaseException | None, Any] = (None, job())
            except BaseException as exc:
                outcome = (exc, None)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, done, *outcome)

        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put(run)
        return await done

    async def close(self) -> None:
        """End the thread after the jobs queued so far."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


class SimulatedWhatsApp:
    """The far side of a simulated session: answers every public ``NewClient`` method with
    what neonize would return (real protobuf responses), keeps a bounded log of the calls, and
    fails the methods it is told to fail.

    Sent media is kept (a bounded store) so it can be downloaded again; inbound media built by
    :func:`media_message_event` is regenerated from its seed on download.
    """

    def __init__(self, *, call_log: int = 1000, media_store: int = 16) -> None:
        self.calls: deque[tuple[str, int]] = deque(maxlen=call_log)
        """The last ``call_log`` calls: method and payload bytes."""
        self.call_count = 0
        self.me = _jid("15550000000")
        self._failing: dict[str, tuple[str, str | None]] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex().upper()  # unique per instance: restarts never reuse
        self._media: OrderedDict[str, bytes] = OrderedDict()
        self._media_store = media_store
        self._groups: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def fail(
        self, method: str, error: str = "simulated failure", *, error_type: str | None = None
    ) -> None:
        """Every call of ``method`` fails with ``error`` until :meth:`heal`; raised on the Go
        side as neonize's ``error_type`` (``"SendMessageError"``, ...) when given, as
        neonize would (``error="server returned error 463"`` is WhatsApp's refusal)."""
        calls.check_method(method)
        self._failing[method] = (error, error_type)

    def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (or every method)."""
        if method is None:
            self._failing.clear()
        else:
            self._failing.pop(method, None)

    def count(self, method: str) -> int:
        """How many of the logged calls were to ``method``."""
        return sum(1 for name, _ in self.calls if name == method)

    def answer(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """What the Go side would return for this call (or the error it would raise)."""
        calls.check_method(method)
        with self._lock:
            self.call_count += 1
            self.calls.append((method, calls.payload_size(args)))
        failing = self._failing.get(method)
        if failing is not None:
            error, error_type = failing
            raise call_failed(method, error_type, error)
        answerer = _ANSWERS.get(method)
        if answerer is not None:
            return answerer(self, *args, **kwargs)
        return _default_answer(method)

    # -- answers ----------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"SIM{self._prefix}{next(self._ids):08X}"

    def sent(self, to: Any, message: Any) -> Any:
        """A ``SendResponse`` for ``message`` sent to ``to``, as neonize builds it."""
        if isinstance(message, str):
            message = e2e.Message(conversation=message)
        return pb.SendResponse(
            ID=self.new_id(),
            Timestamp=int(time.time()),
            Message=message,
            Sender=self.me,
            Chat=_as_jid(to),
        )

    def keep_media(self, data: bytes) -> str:
        """Store sent media (bounded) and return its direct path."""
        path = f"{_SIM_PATH}sent/{hashlib.sha256(data).hexdigest()}"
        with self._lock:
            self._media[path] = data
            self._media.move_to_end(path)
            while len(self._media) > self._media_store:
                self._media.popitem(last=False)
        return path

    def media(self, path: str) -> bytes:
        with self._lock:
            data = self._media.get(path)
        if data is not None:
            return data
        seed, size = _seeded_path(path)
        return simulated_media(seed, size)

    def remember_group(self, info: Any) -> Any:
        key = _jid_key(info.JID)
        with self._lock:
            self._groups[key] = info
            while len(self._groups) > 256:
                self._groups.popitem(last=False)
        return info

    def group(self, jid: Any) -> Any:
        with self._lock:
            found = self._groups.get(_jid_key(_as_jid(jid)))
        if found is not None:
            return found
        return pb.GroupInfo(JID=_as_jid(jid), GroupName=pb.GroupName(Name="simulated group"))

    def forget_group(self, jid: Any) -> None:
        with self._lock:
            self._groups.pop(_jid_key(_as_jid(jid)), None)


# -- how each method answers ------------------------------------------------------------------


def _send_message(wa: SimulatedWhatsApp, to: Any, message: Any, *_: Any, **__: Any) -> Any:
    return wa.sent(to, message)


def _media_sender(kind: MediaKind) -> Callable[..., Any]:
    def send(
        wa: SimulatedWhatsApp,
        to: Any,
        file: str | bytes,
        caption: str | None = None,
        *_: Any,
        quoted: Any = None,
        filename: str | None = None,
        mimetype: str | None = None,
        ptt: bool = False,
        **__: Any,
    ) -> Any:
        data = Path(file).read_bytes() if isinstance(file, str) else file
        fields: dict[str, Any] = {
            "mimetype": mimetype or _MIMETYPES[kind],
            "fileLength": len(data),
            "fileSHA256": hashlib.sha256(data).digest(),
            "directPath": wa.keep_media(data),
        }
        if kind in ("image", "video", "document") and caption:
            fields["caption"] = caption
        if kind == "document" and filename:
            fields["fileName"] = filename
        if kind == "audio":
            fields["PTT"] = ptt
        if quoted is not None:
            fields["contextInfo"] = _quote(quoted)
        media = getattr(e2e, f"{kind.capitalize()}Message")(**fields)
        return wa.sent(to, e2e.Message(**{f"{kind}Message": media}))

    return send


def _reply(
    wa: SimulatedWhatsApp, message: Any, quoted: Any, to: Any = None, *_: Any, **__: Any
) -> Any:
    text = message if isinstance(message, str) else ""
    reply = e2e.Message(
        extendedTextMessage=e2e.ExtendedTextMessage(text=text, contextInfo=_quote(quoted))
    )
    return wa.sent(to if to is not None else quoted.Info.MessageSource.Chat, reply)


def _edit(wa: SimulatedWhatsApp, chat: Any, message_id: str, new_message: Any) -> Any:
    from neonize.builder import build_edit

    return wa.sent(chat, build_edit(_as_jid(chat), message_id, new_message))


def _revoke(wa: SimulatedWhatsApp, chat: Any, sender: Any, message_id: str) -> Any:
    from neonize.builder import build_revoke

    return wa.sent(chat, build_revoke(_as_jid(chat), _as_jid(sender), message_id, wa.me))


def _download(wa: SimulatedWhatsApp, message: Any, path: str | None = None) -> bytes | None:
    media = _media_of(message)
    if media is None:
        raise TransportError("download_any failed: the message has no media")
    data = wa.media(media.directPath)
    if path:
        Path(path).write_bytes(data)
        return None
    return data


def _create_group(wa: SimulatedWhatsApp, name: str, participants: Any = (), **_: Any) -> Any:
    info = pb.GroupInfo(
        JID=pb.JID(User=f"120363{next(wa._ids):012d}", Server="g.us"),
        OwnerJID=wa.me,
        GroupName=pb.GroupName(Name=name),
        GroupCreated=int(time.time()),
        Participants=[pb.GroupParticipant(JID=_as_jid(p)) for p in participants],
    )
    return wa.remember_group(info)


def _set_group_name(wa: SimulatedWhatsApp, jid: Any, name: str) -> None:
    info = wa.group(jid)
    info.GroupName.Name = name
    wa.remember_group(info)


def _set_group_topic(wa: SimulatedWhatsApp, jid: Any, _prev: str, _new: str, topic: str) -> None:
    info = wa.group(jid)
    info.GroupTopic.Topic = topic
    wa.remember_group(info)


def _update_participants(wa: SimulatedWhatsApp, jid: Any, people: Any, action: Any) -> Any:
    return [pb.GroupParticipant(JID=_as_jid(p)) for p in people]


def _pair(_wa: SimulatedWhatsApp, phone: str, *_: Any, **__: Any) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    return (digits[-8:] or "0").rjust(8, "0")


_ANSWERS: dict[str, Callable[..., Any]] = {
    "send_message": _send_message,
    **{f"send_{kind}": _media_sender(kind) for kind in MEDIA_KINDS},
    "reply_message": _reply,
    "edit_message": _edit,
    "revoke_message": _revoke,
    "download_any": _download,
    "is_on_whatsapp": lambda wa, *numbers: [
        pb.IsOnWhatsAppResponse(Query=n, JID=_as_jid(n), IsIn=True) for n in numbers
    ],
    "get_user_info": lambda wa, *jids: [
        pb.GetUserInfoSingleReturnFunction(JID=_as_jid(j), UserInfo=pb.UserInfo(Status="simulated"))
        for j in jids
    ],
    "get_profile_picture": lambda wa, jid, *_a, **_k: pb.ProfilePictureInfo(
        URL=f"https://pps.whatsapp.net/simulated/{_jid_key(_as_jid(jid))}", ID="1", Type="image"
    ),
    "get_me": lambda wa: pb.Device(JID=wa.me, PushName="simulated", Initialized=True),
    "create_group": _create_group,
    "get_group_info": lambda wa, jid: wa.group(jid),
    "get_joined_groups": lambda wa: list(wa._groups.values()),
    "update_group_participants": _update_participants,
    "leave_group": lambda wa, jid: wa.forget_group(jid),
    "get_group_invite_link": lambda wa, jid, revoke=False: (
        f"https://chat.whatsapp.com/SIM{_jid_key(_as_jid(jid)).split('@')[0]}"
    ),
    "set_group_name": _set_group_name,
    "set_group_topic": _set_group_topic,
    "generate_message_id": lambda wa: wa.new_id(),
    "PairPhone": _pair,
}


def _default_answer(method: str) -> Any:
    """What a method returns when nothing special is scripted: an empty value of its
    annotated return type (a default protobuf message, an empty list, ``""``, ...)."""
    kind = _return_type(method)
    if kind is None:
        return None
    origin = typing.get_origin(kind)
    if origin is not None and origin is not typing.Union:
        return []  # Sequence[...] and the repeated containers
    if isinstance(kind, type):
        if kind in (str, bytes, int, float, bool):
            return kind()
        if hasattr(kind, "DESCRIPTOR"):
            return kind()
    return None


@cache
def _return_type(method: str) -> Any:
    from neonize.client import NewClient

    try:
        return typing.get_type_hints(getattr(NewClient, method)).get("return")
    except Exception:  # an annotation neonize cannot resolve at run time
        return None


# -- media -------------------------------------------------------------------------------------


def simulated_media(seed: int, size: int) -> bytes:
    """The bytes of simulated inbound media: the same for the same seed and size."""
    return random.Random(seed).randbytes(size)


def _seeded_path(path: str) -> tuple[int, int]:
    try:
        _, seed, size = path.rsplit("/", 2)
        return int(seed), int(size)
    except ValueError:
        raise TransportError(f"download_any failed: no media at {path!r}") from None


def _media_of(message: Any) -> Any:
    body = getattr(message, "Message", message)  # a Message event or a bare Message
    for kind in MEDIA_KINDS:
        if body.HasField(f"{kind}Message"):
            return getattr(body, f"{kind}Message")
    return None


# -- event builders: real neonize protobuf messages --------------------------------------------


def _jid(address: str) -> Any:
    user, _, server = address.partition("@")
    return pb.JID(User=user, Server=server or "s.whatsapp.net", RawAgent=0, Device=0, Integrator=0)


def _as_jid(value: Any) -> Any:
    return _jid(value) if isinstance(value, str) else value


def _jid_key(jid: Any) -> str:
    return f"{jid.User}@{jid.Server}"


def _quote(quoted: Any) -> Any:
    info = quoted.Info
    return e2e.ContextInfo(
        stanzaID=info.ID,
        participant=_jid_key(info.MessageSource.Sender),
        quotedMessage=quoted.Message,
    )


def _message_info(chat: str, sender: str | None, id: str | None, timestamp: int | None) -> Any:
    source = pb.MessageSource(
        Chat=_jid(chat),
        Sender=_jid(sender or chat),
        IsFromMe=False,
        IsGroup=chat.endswith("@g.us"),
    )
    return pb.MessageInfo(
        MessageSource=source,
        ID=id or f"MSG{time.monotonic_ns():X}",
        Type="text",
        Pushname="",
        Timestamp=timestamp if timestamp is not None else int(time.time()),
    )


def message_event(
    chat: str = "15550000001@s.whatsapp.net",
    text: str = "hello",
    *,
    id: str | None = None,
    sender: str | None = None,
    timestamp: int | None = None,
) -> Event:
    """An inbound text ``Message`` event."""
    info = _message_info(chat, sender, id, timestamp)
    event: Event = pb.Message(Info=info, Message=e2e.Message(conversation=text))
    return event


def media_message_event(
    kind: MediaKind = "image",
    size: int = 256 * 1024,
    *,
    seed: int = 1,
    chat: str = "15550000001@s.whatsapp.net",
    caption: str = "",
    id: str | None = None,
    sender: str | None = None,
) -> Event:
    """An inbound media ``Message`` event whose media a simulated side can download: the
    bytes are :func:`simulated_media` of ``seed`` and ``size`` (their SHA-256 is in the event)."""
    data = simulated_media(seed, size)
    fields: dict[str, Any] = {
        "mimetype": _MIMETYPES[kind],
        "fileLength": size,
        "fileSHA256": hashlib.sha256(data).digest(),
        "directPath": f"{_SIM_PATH}{seed}/{size}",
    }
    if caption and kind in ("image", "video", "document"):
        fields["caption"] = caption
    media = getattr(e2e, f"{kind.capitalize()}Message")(**fields)
    info = _message_info(chat, sender, id, None)
    info.Type = "media"
    event: Event = pb.Message(Info=info, Message=e2e.Message(**{f"{kind}Message": media}))
    return event


ReceiptKind = Literal["delivered", "read", "played", "read_self", "played_self", "sender"]


def receipt_event(
    ids: Iterable[str],
    kind: ReceiptKind = "read",
    *,
    chat: str = "15550000001@s.whatsapp.net",
    sender: str | None = None,
    timestamp: int | None = None,
) -> Event:
    """A ``Receipt`` event: ``chat`` (by ``sender``) got or read the messages ``ids``."""
    source = pb.MessageSource(
        Chat=_jid(chat),
        Sender=_jid(sender or chat),
        IsFromMe=False,
        IsGroup=chat.endswith("@g.us"),
    )
    event: Event = pb.Receipt(
        MessageSource=source,
        MessageIDs=list(ids),
        Timestamp=timestamp if timestamp is not None else int(time.time()),
        Type=pb.Receipt.ReceiptType.Value(kind.upper()),
    )
    return event


def connected_event() -> Event:
    event: Event = pb.Connected(status=True)
    return event


def disconnected_event() -> Event:
    event: Event = pb.Disconnected(status=True)
    return event


def logged_out_event() -> Event:
    event: Event = pb.LoggedOut(OnConnect=False)
    return event


def stream_replaced_event() -> Event:
    event: Event = pb.StreamReplaced()
    return event


def temporary_ban_event() -> Event:
    event: Event = pb.TemporaryBan(Expire=3600)
    return event


def client_outdated_event() -> Event:
    event: Event = pb.ClientOutdated()
    return event


def _settle(future: asyncio.Future[T], exc: BaseException | None, result: Any) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)
