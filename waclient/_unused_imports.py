"""Imports that waclient's own processes (the isolated worker, ``python -m waclient.host``) never
use but would pay for: :func:`skip_unused_imports` makes them fail at once, so the importing
package takes its own fallback. Never called in a user's process.

- ``httpx._main``: httpx's command line (``httpx`` the program). ``import httpx`` tries it
  whenever click is installed, and imports click, rich and pygments for it. In the worker, whose
  neonize client imports httpx: 1.0-1.2 MiB of PSS with the host extra's packages (click, no
  rich), 4.5 MiB where rich is installed too. Without it httpx's ``main`` prints how to install
  the CLI; nothing else changes.
"""

from __future__ import annotations

import sys

__all__ = ["UNUSED_MODULES", "skip_unused_imports"]

UNUSED_MODULES = ("httpx._main",)


def skip_unused_imports() -> None:
    """Mark :data:`UNUSED_MODULES` as not importable (``None`` in ``sys.modules``), unless one
    was imported already."""
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
