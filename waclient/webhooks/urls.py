"""Which URLs a webhook may point at (a guard against server-side request forgery).

Only ``http`` and ``https``, with a host; and unless private targets are allowed, every address
the host name resolves to must be a public one: loopback, link-local (cloud metadata services
live there), private, shared, multicast, reserved and unspecified addresses are refused. The
dispatcher checks again before delivering (a name may have been re-pointed since it was
registered) and connects to the address it checked (:func:`pin_url`), so a name that resolves
differently at connection time (DNS rebinding) cannot send it elsewhere; it never follows
redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from waclient.errors import WaclientError

__all__ = ["PinnedURL", "WebhookURLError", "check_url", "parse_url", "pin_url", "refused_address"]

MAX_URL_LENGTH = 2048


class WebhookURLError(WaclientError, ValueError):
    """The URL may not receive webhooks; the message says why."""


def parse_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an acceptable http(s) URL; :class:`WebhookURLError` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise WebhookURLError("the URL must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("only http:// and https:// URLs can receive webhooks")
    if not parts.hostname:
        raise WebhookURLError("the URL has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refused_address(address: str) -> str | None:
    """Why ``address`` (an IP) may not receive webhooks, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


@dataclass(frozen=True, slots=True)
class PinnedURL:
    """Where to send a webhook for a URL: ``url`` with its host replaced by the address that was
    checked, and what keeps the request addressed to the name (``Host``, TLS SNI)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    """``Host`` when the URL was pinned to an address."""
    extensions: dict[str, str] = field(default_factory=dict)
    """httpx request extensions: ``sni_hostname`` for https (the certificate is checked
    against the name, not the address)."""


async def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse ``url`` (:class:`WebhookURLError`) unless it may receive webhooks.

    Without ``allow_private`` the host name is resolved and every address it resolves to must
    be public; a name that does not resolve is refused too.
    """
    await pin_url(url, allow_private=allow_private)


async def pin_url(url: str, *, allow_private: bool = False) -> PinnedURL:
    """:func:`check_url`, returning where to connect: with ``allow_private`` the URL as it is;
    otherwise the URL pinned to the first of the public addresses its host resolves to."""
    host, port = parse_url(url)
    if allow_private:
        return PinnedURL(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise WebhookURLError(f"the host {host!r} does not resolve ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        reason = refused_address(address)
        if reason is not None:
            raise WebhookURLError(
                f"{host!r} resolves to a non-public address ({reason}); set "
                "WACLIENT_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
            )
    if not addresses:
        raise WebhookURLError(f"the host {host!r} does not resolve")
    return _pinned(url, addresses[0])


def _pinned(url: str, address: str) -> PinnedURL:
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host = parts.hostname or ""
    name = f"[{host}]" if ":" in host else host
    host_header = name if parts.port is None else f"{name}:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return PinnedURL(
        urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        {"host": host_header},
        extensions,
    )
