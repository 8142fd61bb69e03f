"""Webhooks: recorded events delivered to URLs by a Redis Streams consumer group, signed by the
Standard Webhooks specification. See docs/host.md, "Webhooks"."""

from .dispatcher import DispatcherStats, EndpointStats, WebhookDispatcher
from .endpoints import Endpoint, EndpointStore, TooManyEndpointsError, static_endpoints
from .events import (
    EVENT_TYPES,
    Event,
    EventFilterError,
    Source,
    default_sources,
    parse_event_filter,
    state_fields,
)
from .keys import WebhookKeys, forget_endpoint, replay_dead_letters
from .signing import SecretError, generate_secret, parse_secret, sign, signature_headers
from .urls import PinnedURL, WebhookURLError, check_url, parse_url, pin_url

__all__ = [
    "EVENT_TYPES",
    "DispatcherStats",
    "Endpoint",
    "EndpointStats",
    "EndpointStore",
    "Event",
    "EventFilterError",
    "PinnedURL",
    "SecretError",
    "Source",
    "TooManyEndpointsError",
    "WebhookDispatcher",
    "WebhookKeys",
    "WebhookURLError",
    "check_url",
    "default_sources",
    "forget_endpoint",
    "generate_secret",
    "parse_event_filter",
    "parse_secret",
    "parse_url",
    "pin_url",
    "replay_dead_letters",
    "sign",
    "signature_headers",
    "state_fields",
    "static_endpoints",
]
