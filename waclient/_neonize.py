"""neonize's protobuf types without its Go core.

``import neonize`` (any submodule: the package's ``__init__`` imports its client) loads the Go
core, about 55 MiB of RSS. The parent of an :class:`~waclient.transports.IsolatedTransport`
only decodes protobufs (``neonize.proto``, ``neonize.events``) and never calls Go. So, unless
neonize is imported already, waclient's modules that import neonize (``waclient.events``,
``messages``, ``whatsapp``, ``transports``: whatever ``from waclient import Client`` loads)
first register neonize's package without running its ``__init__``: its submodules import as
usual through the package path, and the ``__init__`` runs on the first use of a name it defines
(``from neonize import NewClient``), so nothing that needs the full package notices. Only code
that uses the Go core (``neonize.client``: the in-process and simulated transports, the worker)
loads it. ``import waclient`` alone imports nothing (its names load on first use).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["go_core_loaded", "install"]

_GO_CORE = "neonize-linux"


def install() -> None:
    """Register neonize's package, its ``__init__`` deferred, unless it is imported already."""
    if "neonize" in sys.modules:
        return
    spec = importlib.util.find_spec("neonize")
    if spec is None or not spec.submodule_search_locations or spec.origin is None:
        return  # not an installed package as we know it: import it the usual way
    package = _DeferredPackage("neonize")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "neonize"
    package.__loader__ = spec.loader
    sys.modules["neonize"] = package


def go_core_loaded() -> bool:
    """Whether this process has mapped neonize's Go core (Linux: read from /proc)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any(_GO_CORE in line for line in maps)
    except OSError:
        return "neonize.client" in sys.modules


class _DeferredPackage(types.ModuleType):
    """neonize's package whose ``__init__`` runs when a name it defines is first asked for."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self.__dict__.get("_waclient_initialised"):
            raise AttributeError(f"module 'neonize' has no attribute {name!r}")
        self.__dict__["_waclient_initialised"] = True
        init = Path(str(self.__file__))
        exec(compile(init.read_text(encoding="utf-8"), str(init), "exec"), self.__dict__)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'neonize' has no attribute {name!r}") from None


install()
