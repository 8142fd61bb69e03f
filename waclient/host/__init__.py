"""The FastAPI host (extra ``waclient[host]``): ``create_app(settings)``, ``python -m
waclient.host``. See docs/host.md."""

from waclient.host.app import create_app
from waclient.host.config import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "create_app", "load_settings"]
