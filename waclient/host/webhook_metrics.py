"""The webhook dispatcher's figures as Prometheus metric families, one sample per endpoint."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from waclient.webhooks import DispatcherStats

__all__ = ["webhook_metrics"]

_COUNTERS = (
    ("delivered", "Deliveries answered with a 2xx."),
    ("failed", "Delivery attempts that failed (non-2xx, timeout, connection error)."),
    ("retried", "Failed attempts followed by another attempt."),
    ("dead_lettered", "Events moved to the dead-letter stream."),
)
_GAUGES = (
    ("backlog", "Events pending or not read yet for the endpoint (last measured)."),
    ("dead_letters", "Events in the endpoint's dead-letter stream (last measured)."),
    ("in_flight", "Deliveries in progress."),
    ("last_success", "Unix time of the last 2xx (0: none yet)."),
)


def webhook_metrics(stats: DispatcherStats) -> Iterable[Metric]:
    endpoints = list(stats.endpoints.values())
    for name, doc in _COUNTERS:
        counter = CounterMetricFamily(f"waclient_webhook_{name}", doc, labels=["endpoint"])
        for e in endpoints:
            counter.add_metric([e.id], getattr(e, name))
        yield counter
    for name, doc in _GAUGES:
        gauge = GaugeMetricFamily(f"waclient_webhook_{name}", doc, labels=["endpoint"])
        for e in endpoints:
            gauge.add_metric([e.id], getattr(e, name) or 0)
        yield gauge
