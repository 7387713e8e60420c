"""Audience estimates for the calendar, computed once and kept for a while.

An estimate is ``count_audience`` as of one occurrence: one SQL count over
the customer base, about a second at a million customers. A month of twenty
campaigns holds hundreds of occurrences, so the calendar never counts on
the request's clock: it asks this cache, which answers what it has, queues
what it lacks (nearest occurrence first) for one background thread, and waits
a short while for them. The page shows each estimate's age, and a pending
one as pending; the browser re-fetches the page until none is.

Entries are keyed by the campaign's audience definition as well as its name
and instant, so an edited audience is counted anew. An entry older than
``ttl`` is still shown (with its age) while it is recounted.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from ...campaigns.audience import count_audience
from ...campaigns.schema import Campaign
from ...config import Config
from ...db.session import shared_across_threads
from ...timeutil import utcnow

log = logging.getLogger(__name__)

Key = tuple[str, str, datetime]  # campaign name, audience definition, occurrence (UTC)


@dataclass(frozen=True)
class Estimate:
    size: int
    computed_at: datetime


def key_of(campaign: Campaign, at: datetime) -> Key:
    return (campaign.name, campaign.audience.model_dump_json(), at)


class EstimateCache:
    """Thread-safe cache of audience sizes per (campaign audience, occurrence)."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        *,
        ttl: timedelta = timedelta(hours=1),
        max_entries: int = 50_000,
        clock: Callable[[], datetime] = utcnow,
        count: Callable[[Campaign, datetime], int] | None = None,
    ):
        self.engine = engine
        self.config = config
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._count = count or (lambda c, at: count_audience(engine, c.audience, config, at))
        self._entries: dict[Key, Estimate] = {}
        self._queue: list[tuple[datetime, int, Key, Campaign]] = []
        self._queued: set[Key] = set()
        self._seq = 0
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._threaded = shared_across_threads(engine)
        self.failures = 0

    def get(self, campaign: Campaign, at: datetime) -> Estimate | None:
        with self._cond:
            return self._entries.get(key_of(campaign, at))

    def lookup(
        self, wanted: Iterable[tuple[Campaign, datetime]], *, wait: float = 0.0
    ) -> dict[Key, Estimate]:
        """Estimates for ``wanted``; queue the missing and stale ones, and wait up
        to ``wait`` seconds for the missing ones. A missing key is pending."""
        wanted = list(wanted)
        now = self.clock()
        with self._cond:
            for campaign, at in wanted:
                key = key_of(campaign, at)
                found = self._entries.get(key)
                if (found is None or now - found.computed_at > self.ttl) and (
                    key not in self._queued
                ):
                    self._queued.add(key)
                    self._seq += 1
                    heapq.heappush(self._queue, (at, self._seq, key, campaign))
            if self._queue:
                self._cond.notify_all()
        if not self._threaded:  # in-memory SQLite: count here, on this thread
            self._drain(deadline=None)
        else:
            self._ensure_worker()
            deadline = time.monotonic() + wait
            with self._cond:
                while True:
                    missing = [k for c, at in wanted if (k := key_of(c, at)) not in self._entries
                               and k in self._queued]
                    left = deadline - time.monotonic()
                    if not missing or left <= 0:
                        break
                    self._cond.wait(left)
        with self._cond:
            return {k: e for c, at in wanted if (e := self._entries.get(k := key_of(c, at)))}

    def pending(self) -> int:
        with self._cond:
            return len(self._queued)

    def clear(self) -> None:
        with self._cond:
            self._entries.clear()

    # -- the worker -------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._cond:
            if self._worker is not None and self._worker.is_alive():
                return
            self._worker = threading.Thread(
                target=self._run, name="engage-ui-estimates", daemon=True
            )
            self._worker.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
            self._drain(deadline=None)

    def _drain(self, deadline: float | None) -> None:
        """Count queued occurrences until the queue is empty (or the deadline passes)."""
        while deadline is None or time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    return
                _, _, key, campaign = heapq.heappop(self._queue)
            try:
                size: int | None = self._count(campaign, key[2])
            except Exception:  # a database hiccup must not kill the worker
                self.failures += 1
                log.exception(
                    "audience estimate failed",
                    extra={"event": "ui_estimate_failed", "campaign": key[0]},
                )
                size = None
            with self._cond:
                self._queued.discard(key)
                if size is not None:
                    self._entries[key] = Estimate(size, self.clock())
                    if len(self._entries) > self.max_entries:
                        oldest = sorted(self._entries.items(), key=lambda kv: kv[1].computed_at)
                        for stale, _ in oldest[: len(oldest) // 2]:
                            del self._entries[stale]
                self._cond.notify_all()
