"""The one base of every error waclient raises on purpose: ``except WaclientError`` catches
them all (a transport's, a call's, a lifetime's, the scheduler's, the webhooks', the host's
configuration), and each keeps the builtin base it had (``TransportError`` is still a
``RuntimeError``, ``CallError`` a ``TypeError``, the scheduler's a ``ValueError``).

Nothing here imports anything: any module can use it.
"""

from __future__ import annotations

__all__ = ["WaclientError"]


class WaclientError(Exception):
    """The base of waclient's errors."""
