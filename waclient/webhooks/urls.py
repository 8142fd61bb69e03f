"""Which URLs a webhook may point at (a guard against server-side request forgery).

Only ``http`` and ``https``, with a host; and unless private targets are allowed, every address
the host name resolves to must be a public one: loopback, link-local (cloud metadata services
live there), private, shared, multicast, reserved and unspecified addresses are refused. The
dispatcher checks again before delivering (a name may have been re-pointed since it was
registered), and never follows redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["WebhookURLError", "check_url", "parse_url", "refused_address"]

MAX_URL_LENGTH = 2048


class WebhookURLError(ValueError):
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


async def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse ``url`` (:class:`WebhookURLError`) unless it may receive webhooks.

    Without ``allow_private`` the host name is resolved and every address it resolves to must
    be public; a name that does not resolve is refused too.
    """
    host, port = parse_url(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise WebhookURLError(f"the host {host!r} does not resolve ({exc})") from None
    for info in infos:
        reason = refused_address(str(info[4][0]))
        if reason is not None:
            raise WebhookURLError(
                f"{host!r} resolves to a non-public address ({reason}); set "
                "WACLIENT_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
            )
