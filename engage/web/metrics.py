"""``GET /metrics``: Prometheus text format with ``prometheus_client``.

* ``engage_messages{status,channel}``: the outbox by state, read from the
  database at scrape time (cached for a few seconds), so every ``serve``
  process reports the same numbers;
* ``engage_webhook_events_total{provider,kind,outcome}``: provider events by
  kind and what became of them (``applied``, ``duplicate``, ``unknown_message``,
  ``stale``, ``deferred``, ``ignored``, ``invalid``);
* ``engage_ingest_items_total{kind,outcome}``: ingest API items (``inserted``,
  ``updated``, ``unchanged``, ``rejected``);
* ``engage_http_request_duration_seconds{method,route,status}``: latency per
  route pattern.

Several worker processes (``engage serve --workers N``) share their counters
through prometheus_client's multiprocess mode: ``engage serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, and
each scrape adds up every process's files. Under another ASGI server with
several workers, set ``PROMETHEUS_MULTIPROC_DIR`` yourself (an empty folder,
cleared at each start).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Table, func, select

from ..db.models import Message

M = cast(Table, Message.__table__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # no ``*_created`` series: Prometheus does not need them
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Outbox(Collector):
    """Messages by status and channel, from the database."""

    def __init__(self, engine: Engine, ttl: float = 5.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._rows: list[tuple[str, str, int]] = []

    def _counts(self) -> list[tuple[str, str, int]]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                q = select(M.c.status, M.c.channel, func.count()).group_by(M.c.status, M.c.channel)
                with self.engine.connect() as conn:
                    self._rows = [(s, c, int(n)) for s, c, n in conn.execute(q)]
                self._at = time.monotonic()
            return self._rows

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "engage_messages", "Outbox messages by status and channel", labels=["status", "channel"]
        )
        for status, channel, n in self._counts():
            family.add_metric([status, channel], n)
        yield family


class Metrics:
    """The metrics of one app (one registry per app, or shared files across
    processes in multiprocess mode)."""

    def __init__(self, engine: Engine) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        own = None if self.multiprocess else CollectorRegistry()
        self.webhook_events = Counter(
            "engage_webhook_events",
            "Provider webhook events by kind and outcome",
            ["provider", "kind", "outcome"],
            registry=own,
        )
        self.ingest_items = Counter(
            "engage_ingest_items",
            "Ingest API items by kind and outcome",
            ["kind", "outcome"],
            registry=own,
        )
        self.latency = Histogram(
            "engage_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=own,
        )
        self._own = own
        self._outbox = _Outbox(engine)
        if own is not None:
            own.register(self._outbox)

    def _registry(self) -> CollectorRegistry:
        if self._own is not None:
            return self._own
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self._outbox)
        return registry

    def exposition(self) -> bytes:
        """The text format (blocking: reads the outbox counts)."""
        return generate_latest(self._registry())

    def count_webhook(self, provider: str, outcomes: Iterable[tuple[tuple[str, str], int]]) -> None:
        for (kind, outcome), n in outcomes:
            if n > 0:
                self.webhook_events.labels(provider, kind, outcome).inc(n)

    def count_ingest(self, kind: str, counts: Iterator[tuple[str, int]]) -> None:
        for outcome, n in counts:
            if n:
                self.ingest_items.labels(kind, outcome).inc(n)
