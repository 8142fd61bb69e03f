"""The door: who a request comes from and whether its API key is right, decided from its
headers alone, before its body is read and before it takes a request or upload slot.

:class:`Door` is checked twice on one rule: by the HTTP guard (:mod:`.http_guard`) when a
request's headers are complete, so that a keyless or wrong-key request is answered 401 (or 429)
at once and never runs, and by the ``require_key`` dependency for apps served some other way
(ASGI tests), which also hands a route the key's id.

The failed-key throttle counts failures per client address, and the right key is checked
first: it is never refused, whoever failed before it from the same address. The client
address is the peer's, unless the peer is a trusted proxy (``WACLIENT_TRUSTED_PROXIES``):
then it is the proxy's own client header (``WACLIENT_CLIENT_IP_HEADER``, ``Fly-Client-IP`` on
Fly.io) or else the rightmost ``X-Forwarded-For`` entry that is not a trusted proxy (the one
the nearest trusted proxy wrote; entries to its left are the client's to write).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from .config import Settings
from .limits import RateLimiter
from .query_keys import has_key_in_query

__all__ = ["API_KEY_HEADER", "Door", "DoorStats", "Refusal"]

API_KEY_HEADER = "X-API-Key"
_KEY_HEADER = API_KEY_HEADER.lower().encode()
_XFF = b"x-forwarded-for"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the door turns away: its status, error code, message and extra headers."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DoorStats:
    """What :meth:`Door.statistics` returns."""

    unauthorized: int
    """Requests answered 401 (missing or wrong key)."""
    throttled: int
    """Requests answered 429 (their address failed too often)."""
    throttled_clients: int
    """Client addresses with a failure bucket kept now."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Door:
    """The API key check and the failed-key throttle, on one set of settings.

    ``open_paths`` (set by the app once its routes exist, :meth:`open`) are served without a
    key; every other path needs one, unknown paths included (401 before 404).
    """

    def __init__(self, settings: Settings, on_failure: Callable[[], None] | None = None) -> None:
        self._digests = [(f"key{i}", _digest(k)) for i, k in enumerate(settings.api_keys())]
        self.throttle = RateLimiter(
            settings.auth_failures / settings.auth_failure_window,
            settings.auth_failures,
            max_keys=settings.rate_limit_keys,
        )
        self._trust_all, self._trusted = _networks(settings.trusted_proxies)
        header = settings.client_ip_header.strip().lower()
        self._client_header = header.encode() if header else None
        self._open: list[re.Pattern[str]] = []
        self._on_failure = on_failure
        self.unauthorized = 0
        self.throttled = 0

    def open(self, patterns: Iterable[re.Pattern[str]]) -> None:
        """The path patterns served without a key (``/health``, ``/openapi.json``...)."""
        self._open = list(patterns)

    def is_open(self, path: str) -> bool:
        return any(p.match(path) for p in self._open)

    def key_id(self, presented: str | None) -> str | None:
        """The id (``key0``, ``key1``...) of a valid key, else None. Constant-time: every
        configured key is compared, as SHA-256 digests, with ``hmac.compare_digest``."""
        if not presented:
            return None
        given = _digest(presented)
        found: str | None = None
        for key_id, digest in self._digests:
            if hmac.compare_digest(given, digest) and found is None:
                found = key_id
        return found

    def authenticate(self, presented: str | None, address: str) -> str | Refusal:
        """The key's id, or why the request is refused: 429 when ``address`` has failed too
        often (only for a wrong or missing key: the right one always passes), else 401."""
        key_id = self.key_id(presented)
        if key_id is not None:
            return key_id
        if self._on_failure is not None:
            self._on_failure()
        wait = self.throttle.acquire(address)
        if wait > 0:
            self.throttled += 1
            retry = RateLimiter.retry_after(wait)
            return Refusal(
                429,
                "rate_limited",
                f"too many failed API key checks from this address; retry after {retry} s",
                (("retry-after", retry),),
            )
        self.unauthorized += 1
        message = "missing X-API-Key header" if not presented else "wrong API key"
        return Refusal(401, "unauthorized", message, (("www-authenticate", "APIKey"),))

    def check(
        self, path: str, query: bytes, peer: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[str, str | Refusal | None]:
        """The client address of a request whose headers are complete, and the door's verdict:
        None for an open path (or a key in the query string, which the app answers 400 at
        once, :mod:`.query_keys`), the key's id, or a :class:`Refusal`."""
        address = self.client_address(peer, headers)
        if self.is_open(path) or has_key_in_query(query):
            return address, None
        keys = _values(headers, _KEY_HEADER)  # the first, as the app's header lookup reads it
        presented = keys[0] if keys else None
        return address, self.authenticate(presented, address)

    def client_address(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        """Who the request comes from (module docstring)."""
        if not self._is_trusted(peer):
            return peer
        if self._client_header is not None:
            given = _values(headers, self._client_header)  # the last: the proxy's own
            if given and _parse(given[-1].strip()) is not None:
                return given[-1].strip()
        hops = [h.strip() for n, v in headers if n == _XFF for h in v.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if hop and not self._is_trusted(hop):
                return hop
        return peer

    def statistics(self) -> DoorStats:
        return DoorStats(
            unauthorized=self.unauthorized,
            throttled=self.throttled,
            throttled_clients=len(self.throttle),
        )

    def _is_trusted(self, address: str) -> bool:
        if self._trust_all:
            return True
        ip = _parse(address)
        return ip is not None and any(ip in net for net in self._trusted)


def _networks(spec: str) -> tuple[bool, list[Network]]:
    """``*`` or comma-separated addresses and networks (checked by the settings)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if "*" in items:
        return True, []
    return False, [ipaddress.ip_network(s, strict=False) for s in items]


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for n, v in headers if n == name]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
