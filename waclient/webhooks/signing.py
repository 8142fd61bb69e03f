"""Signatures by the Standard Webhooks specification (https://www.standardwebhooks.com).

Each delivery carries three headers:

- ``webhook-id``: the event's id, the same on every retry (the receiver's idempotency key);
- ``webhook-timestamp``: seconds since the epoch when this attempt was signed;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one per
  secret, separated by spaces, so a receiver that knows either the old or the new secret
  accepts the delivery while a secret is being rotated.

A secret is ``whsec_`` followed by the base64 of its key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

from waclient.errors import WaclientError

__all__ = [
    "SECRET_PREFIX",
    "SecretError",
    "generate_secret",
    "parse_secret",
    "sign",
    "signature_headers",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64


class SecretError(WaclientError, ValueError):
    """A webhook secret is not ``whsec_<base64>`` of 16 to 64 bytes."""


def generate_secret() -> str:
    """A new random secret, ``whsec_<base64 of 32 bytes>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def parse_secret(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>``; :class:`SecretError` with the reason otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("a webhook secret is whsec_ followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise SecretError(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """``v1,<base64 signature>`` of one delivery with one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(parse_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    msg_id: str, body: bytes, secrets: Sequence[str], *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, signed with every secret."""
    if not secrets:
        raise SecretError("at least one secret is needed to sign")
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(msg_id, ts, body, s) for s in secrets),
    }
