"""Settings of the host, from the environment (pydantic-settings).

Every setting is an environment variable; ``WACLIENT_API_KEY`` is the only required one. Sizes
accept bytes or a unit (``200MiB``, ``512M``, ``1GiB``). See docs/host.md for the table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from waclient.errors import WaclientError
from waclient.memory import parse_size

__all__ = ["SHUTDOWN_SHARES", "ConfigError", "Settings", "load_settings"]

TransportKind = Literal["isolated", "neonize", "simulated"]
WorkerKind = Literal["neonize", "simulated"]

MIN_KEY_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _size(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_size(value)
    return value


Size = Annotated[int | None, BeforeValidator(_size)]


class ConfigError(WaclientError, RuntimeError):
    """The environment does not make a valid configuration; the message says what to set."""


class Settings(BaseSettings):
    """The host's configuration. Field ``x`` is the variable ``WACLIENT_X`` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="WACLIENT_",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
    )

    api_key: SecretStr = Field(
        description="WACLIENT_API_KEY (required): the key clients send in X-API-Key. Several "
        f"keys separated by commas are all accepted (rotation). At least {MIN_KEY_LENGTH} "
        "characters each."
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "WACLIENT_REDIS_URL"),
        description="REDIS_URL: redis://, rediss:// or unix://. Without it the host runs without "
        "recorders and scheduler (those endpoints answer 503).",
    )
    transport: TransportKind = Field(
        default="isolated",
        description="WACLIENT_TRANSPORT: isolated (neonize in a worker process, recycled on a "
        "memory budget), neonize (in this process) or simulated (a scripted Go side for demos "
        "and tests; needs the harness extra).",
    )
    worker: WorkerKind = Field(
        default="neonize",
        description="WACLIENT_WORKER: what the isolated transport's worker runs; simulated is "
        "for tests and soaks of the process boundary.",
    )
    session_dir: Path = Field(
        default=Path("session"),
        description="WACLIENT_SESSION_DIR: the session database and the recorders' spools "
        "live here; put it on a volume.",
    )
    session_name: str = Field(
        default="waclient",
        description="WACLIENT_SESSION_NAME: the session's name; also the Redis key prefix, so "
        "several numbers can share one Redis.",
    )
    proxy: str | None = Field(default=None, description="WACLIENT_PROXY: e.g. socks5://host:1080")
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "WACLIENT_PORT"),
        description="PORT: the port to serve on.",
    )
    bind: str = Field(default="0.0.0.0", description="WACLIENT_BIND: the address to serve on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # memory
    memory_soft_limit: Size = Field(
        default=None,
        description="WACLIENT_MEMORY_SOFT_LIMIT: PSS of host + worker past which new sends get "
        "503. Default: memory_soft_fraction of the machine's memory.",
    )
    memory_hard_limit: Size = Field(
        default=None,
        description="WACLIENT_MEMORY_HARD_LIMIT: PSS past which the host shuts down gracefully "
        "(exit status 3) so the platform restarts it. Default: memory_hard_fraction.",
    )
    memory_soft_fraction: float = Field(default=0.80, gt=0, lt=1)
    memory_hard_fraction: float = Field(default=0.90, gt=0, lt=1)
    memory_check_interval: float = Field(default=5.0, gt=0)
    memory_log_interval: float = Field(
        default=300.0, ge=0, description="Seconds between memory log lines; 0: none."
    )
    worker_rss_budget: Size = Field(
        default=None,
        description="WACLIENT_WORKER_RSS_BUDGET: the isolated worker is recycled past this RSS. "
        "Default: 40 % of the machine's memory, at most 150 MiB.",
    )

    # requests
    send_rate: float = Field(
        default=2.0, gt=0, description="Sends per second per API key (token bucket refill)."
    )
    send_burst: int = Field(default=20, ge=1, description="Sends a key may make at once.")
    schedule_rate: float = Field(default=1.0, gt=0)
    schedule_burst: int = Field(default=20, ge=1)
    rate_limit_keys: int = Field(
        default=1024, ge=1, description="Buckets kept at most (least recently used go first)."
    )
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_media_bytes: int = Field(
        default=16 * 2**20,
        ge=1024,
        le=64 * 2**20,
        description="WACLIENT_MAX_MEDIA_BYTES: the largest file POST /messages/media takes "
        "(WhatsApp's own limit for images, video and audio is 16 MB).",
    )
    max_text_length: int = Field(default=4096, ge=1, le=65536)
    metrics_public: bool = Field(
        default=False,
        description="WACLIENT_METRICS_PUBLIC: serve /metrics without the API key (for a scraper "
        "that cannot send headers, on a private network).",
    )

    # the client, recorders and scheduler
    backoff_initial: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=60.0, gt=0)
    max_failures: int = Field(default=20, ge=1)
    recorder_buffer: int = Field(default=1000, ge=1)
    spool_max_records: int = Field(default=100_000, ge=1)
    spool_max_bytes: Size = Field(default=64 * 2**20)
    max_scheduled: int = Field(default=1000, ge=1)
    scheduler_poll: float = Field(default=1.0, gt=0)
    shutdown_timeout: float = Field(
        default=10.0,
        gt=0,
        description="WACLIENT_SHUTDOWN_TIMEOUT: seconds the whole graceful shutdown takes at "
        "most (Fly kills after kill_timeout, 15 s in fly.toml); past it the process exits "
        "with status 4. Shared out by SHUTDOWN_SHARES.",
    )

    # hostile input (docs/host.md, "Hostile input"): keep these together
    cron_min_interval: float = Field(
        default=60.0,
        ge=1,
        description="WACLIENT_CRON_MIN_INTERVAL: seconds a cron job waits at least between two "
        "sends; an expression that fires more often is refused with 422.",
    )
    send_timeout: float = Field(
        default=60.0, gt=0, description="WACLIENT_SEND_TIMEOUT: seconds before a send is 504."
    )
    auth_failures: int = Field(
        default=10,
        ge=1,
        description="WACLIENT_AUTH_FAILURES: failed key checks a client address may make in "
        "WACLIENT_AUTH_FAILURE_WINDOW seconds; past that it gets 429 on every keyed route.",
    )
    auth_failure_window: float = Field(default=60.0, gt=0)
    dashboard: bool = Field(
        default=True,
        description="WACLIENT_DASHBOARD: serve the dashboard at /dashboard (the page needs no "
        "key; its data calls send the key the user types).",
    )
    trusted_proxies: str = Field(
        default="127.0.0.1,::1",
        description="WACLIENT_TRUSTED_PROXIES: comma-separated addresses or networks of the "
        "proxies in front of the host, or *; only from these is a client address taken from "
        "WACLIENT_CLIENT_IP_HEADER or X-Forwarded-For (fly.toml: 172.16.0.0/12).",
    )
    client_ip_header: str = Field(
        default="",
        description="WACLIENT_CLIENT_IP_HEADER: the header a trusted proxy writes the client's "
        "address in (Fly-Client-IP on Fly.io); empty: the rightmost untrusted "
        "X-Forwarded-For entry.",
    )
    docs: bool = Field(
        default=False,
        description="WACLIENT_DOCS: serve Swagger UI at /docs and ReDoc at /redoc (they load "
        "their scripts from a CDN into the browser). /openapi.json is always served.",
    )
    max_header_bytes: Size = Field(
        default=16 * 1024,
        description="WACLIENT_MAX_HEADER_BYTES: request line and headers, at most; past it 431.",
    )
    max_headers: int = Field(default=100, ge=8, description="Headers per request; past it 431.")
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to receive a request's line and headers (408)."
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to receive a request's body (408)."
    )
    max_connections_per_client: int = Field(
        default=32, ge=1, description="Open connections per client address; more are closed."
    )
    max_connections: int = Field(
        default=2048, ge=1, description="Open connections in all; more are closed at once."
    )
    max_requests: int = Field(
        default=256, ge=1, description="Requests in progress at once; more are answered 503."
    )

    # self-healing and webhooks (docs/host.md, "Self-healing" and "Webhooks")
    restart_cooldown: float = Field(
        default=300.0,
        ge=0,
        description="WACLIENT_RESTART_COOLDOWN: seconds after FAILED before a fresh client.",
    )
    max_restarts: int = Field(
        default=6,
        ge=0,
        description="WACLIENT_MAX_RESTARTS: fresh clients per hour at most; past that /health "
        "answers 503 so the platform restarts the machine.",
    )
    webhook_urls: str = Field(
        default="",
        description="WACLIENT_WEBHOOK_URLS: comma-separated URLs that receive every event, "
        "signed with WACLIENT_WEBHOOK_SECRET.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="WACLIENT_WEBHOOK_SECRET: whsec_<base64>; several, comma-separated, during "
        "a rotation (each delivery carries one signature per secret).",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="WACLIENT_WEBHOOK_ALLOW_PRIVATE: allow URLs that resolve to loopback, "
        "link-local or private addresses.",
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="Seconds per attempt.")
    webhook_max_attempts: int = Field(
        default=10, ge=1, description="Attempts before an event goes to the dead letters."
    )
    webhook_max_in_flight: int = Field(default=8, ge=1, description="Deliveries per endpoint.")
    webhook_max_endpoints: int = Field(default=16, ge=1, le=256)

    def webhook_url_list(self) -> list[str]:
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]

    def webhook_secrets(self) -> list[str]:
        raw = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        from waclient.webhooks.signing import SecretError, parse_secret
        from waclient.webhooks.urls import WebhookURLError, parse_url

        urls = self.webhook_url_list()
        if urls and not self.webhook_secrets():
            raise ValueError("WACLIENT_WEBHOOK_URLS needs WACLIENT_WEBHOOK_SECRET (whsec_...)")
        try:
            for secret in self.webhook_secrets():
                parse_secret(secret)
            for url in urls:
                parse_url(url)
        except (SecretError, WebhookURLError) as exc:
            raise ValueError(f"webhooks: {exc}") from None
        return self

    @field_validator("api_key")
    @classmethod
    def _check_keys(cls, value: SecretStr) -> SecretStr:
        keys = [k.strip() for k in value.get_secret_value().split(",") if k.strip()]
        if not keys:
            raise ValueError("WACLIENT_API_KEY is empty")
        for i, key in enumerate(keys, 1):
            if len(key) < MIN_KEY_LENGTH:
                raise ValueError(
                    f"WACLIENT_API_KEY: key {i} of {len(keys)} has {len(key)} characters; "
                    f"use at least {MIN_KEY_LENGTH} (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`)"
                )
            if not key.isprintable() or not key.isascii():
                raise ValueError(f"WACLIENT_API_KEY: key {i} must be printable ASCII")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        import ipaddress

        for item in (s.strip() for s in value.split(",")):
            if item and item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"WACLIENT_TRUSTED_PROXIES: {item!r} is not an address or network"
                    ) from None
        return value

    @field_validator("session_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("WACLIENT_SESSION_NAME: 1-64 of A-Z a-z 0-9 _ . - (not first)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value.strip()

    def api_keys(self) -> list[str]:
        """The accepted keys."""
        raw = self.api_key.get_secret_value()
        return [k.strip() for k in raw.split(",") if k.strip()]

    def check(self) -> None:
        """Cross-field checks (limits that must agree)."""
        soft, hard = self.memory_soft_limit, self.memory_hard_limit
        if soft is not None and hard is not None and soft >= hard:
            raise ConfigError("WACLIENT_MEMORY_SOFT_LIMIT must be below WACLIENT_MEMORY_HARD_LIMIT")
        if self.memory_soft_fraction >= self.memory_hard_fraction:
            raise ConfigError(
                "WACLIENT_MEMORY_SOFT_FRACTION must be below WACLIENT_MEMORY_HARD_FRACTION"
            )
        if self.backoff_initial > self.backoff_max:
            raise ConfigError("WACLIENT_BACKOFF_INITIAL must not exceed WACLIENT_BACKOFF_MAX")


SHUTDOWN_SHARES = {"requests": 0.3, "recorder": 0.2, "webhooks": 0.15}
"""Parts of WACLIENT_SHUTDOWN_TIMEOUT: requests in progress (uvicorn), each of the two
recorders' final flush, the webhook workers (stopped at once, after the recorders); the rest
(0.15) is for the client, the scheduler and Redis."""

_ENV_NAMES = {"redis_url": "REDIS_URL", "port": "PORT"}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``overrides``), or :class:`ConfigError` with a
    readable message naming the variables to fix. The key's value never appears in it."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = _ENV_NAMES.get(field, f"WACLIENT_{field.upper()}")
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "is not set" + (
                    f" (required: the API key clients send in X-API-Key, at least "
                    f"{MIN_KEY_LENGTH} characters)"
                    if field == "api_key"
                    else ""
                )
            lines.append(f"{env}: {message}" if err["loc"] else message)
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    settings.check()
    return settings
