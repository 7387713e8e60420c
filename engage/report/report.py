"""``engage report``: the shop's figures and every campaign's, for a period,
as one plain data structure.

``build_report`` reads (it writes nothing) and returns a ``Report``; the CLI
prints it as tables, JSON or CSV, and a web page can chart it: ``series``
holds the period cut into local days (or weeks, months) with orders,
revenue, average order value and sign-ups per bucket, and each campaign's
planned, sent, delivered, held-out and converted messages per bucket.
``to_json`` is the documented, stable shape (docs/report.md, ``version``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, func, select

from ..config import Config
from ..customers.facts import at_instant
from ..db.models import Customer, Interaction, Message
from ..timeutil import format_duration, isoformat_z
from .campaigns import MIN_HOLDOUT, CampaignFigures, bucket_of, campaign_figures
from .period import Period
from .shop import ShopFigures, cents, distinct_values, shop_figures
from .stats import money, money_per

VERSION = 1
log = logging.getLogger(__name__)


def duration_text(value: timedelta) -> str:
    """``7d``, ``365d`` (whole days as days, not weeks), else ``12h``, ``90m``..."""
    if value % timedelta(days=1) == timedelta(0):
        return f"{value.days}d"
    return format_duration(value)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    orders: int = 0
    revenue_cents: int = 0
    new_customers: int = 0

    def to_json(self, zone: Any, unit: str) -> dict[str, Any]:
        aov = money_per(self.revenue_cents, self.orders)
        local = self.start.astimezone(zone)
        label = local.strftime("%Y-%m" if unit == "month" else "%Y-%m-%d")
        return {
            "label": label,
            "start": isoformat_z(self.start),
            "end": isoformat_z(self.end),
            "orders": self.orders,
            "revenue": str(money(self.revenue_cents)),
            "average_order_value": None if aov is None else str(aov),
            "new_customers": self.new_customers,
        }


def orders_series_query(period: Period, marks: Sequence[datetime]) -> Select[Any]:
    i = Interaction.__table__
    bucket = bucket_of(i.c.occurred_at, marks).label("bucket")
    return (
        select(bucket, func.count(), func.coalesce(func.sum(cents(i.c.amount)), 0))
        .where(
            i.c.kind == "order",
            i.c.occurred_at >= at_instant(period.start),
            i.c.occurred_at < at_instant(period.end),
        )
        .group_by(bucket)
    )


def signups_series_query(period: Period, marks: Sequence[datetime]) -> Select[Any]:
    c = Customer.__table__
    bucket = bucket_of(c.c.created_at, marks).label("bucket")
    return (
        select(bucket, func.count())
        .where(c.c.created_at >= at_instant(period.start), c.c.created_at < at_instant(period.end))
        .group_by(bucket)
    )


@dataclass(frozen=True)
class Report:
    period: Period
    generated_at: datetime
    config: Config
    shop: ShopFigures
    campaigns: list[CampaignFigures]
    unit: str  # the buckets of the series: day | week | month
    buckets: list[Bucket]

    def to_json(self) -> dict[str, Any]:
        p, c = self.period, self.config
        return {
            "version": VERSION,
            "generated_at": isoformat_z(self.generated_at),
            "period": {
                "start": isoformat_z(p.start),
                "end": isoformat_z(p.end),
                "previous_start": isoformat_z(p.previous_start),
                "timezone": p.zone.key,
                "from": p.first_day.isoformat() if p.first_day else None,
                "to": p.last_day.isoformat() if p.last_day else None,
                "partial": p.partial,
            },
            "settings": {
                "retention_window": duration_text(c.retention_window),
                "attribution_window": duration_text(c.attribution_window),
                "loyal_min_orders": c.loyal_min_orders,
                "min_holdout": MIN_HOLDOUT,
                "engagement_kinds": c.engagement_kinds,
                "ignored_kinds": c.ignored_kinds if c.engagement_kinds is None else [],
            },
            "shop": self.shop.to_json(),
            "campaigns": [f.to_json() for f in self.campaigns],
            "series": {
                "unit": self.unit,
                "buckets": [b.to_json(p.zone, self.unit) for b in self.buckets],
            },
        }

    def rows(self) -> Iterator[tuple[str, str, str, Any]]:
        """``(section, campaign, figure, value)``: one row per figure, for CSV.
        Nested figures are dotted (``retention.rate``, ``lift.ci_low``); the
        per-bucket series are left to the JSON."""
        data = self.to_json()
        for key, value in data["period"].items():
            yield "period", "", key, value
        for key, value in data["settings"].items():
            if not isinstance(value, list) and value is not None:
                yield "settings", "", key, value
        for figure, value in _flat(data["shop"]):
            yield "shop", "", figure, value
        for campaign in data["campaigns"]:
            name = campaign["name"]
            for figure, value in _flat(campaign, skip=("name", "series")):
                yield "campaign", name, figure, value


def _flat(data: dict[str, Any], prefix: str = "", skip: Sequence[str] = ()) -> Iterator[Any]:
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def campaign_names(engine: Engine) -> set[str]:
    """Every campaign with a message in the outbox."""
    with engine.connect() as conn:
        return set(distinct_values(conn, Message.__table__.c.campaign))


def build_report(
    engine: Engine,
    config: Config,
    period: Period,
    now: datetime,
    *,
    campaigns: Sequence[str] | None = None,
) -> Report:
    """Every figure for ``period``, read in one repeatable-read snapshot on
    PostgreSQL (one transaction on SQLite), so the figures agree with each
    other. ``campaigns`` limits the campaign section to those names."""
    started = time.perf_counter()
    unit, marks = period.buckets()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            version = conn.dialect.server_version_info or (0,)
            if conn.dialect.name == "postgresql" and version >= (11,):
                # Each statement runs once over a big range: compiling it to
                # machine code (JIT, on above a cost estimate that a million
                # customers exceed) costs more than it saves.
                conn.exec_driver_sql("SET LOCAL jit = off")
            shop = shop_figures(conn, period, config)
            figures = campaign_figures(
                conn, period, config.attribution_window, marks, now, campaigns
            )
            orders = {
                int(b): (int(n), int(c))
                for b, n, c in conn.execute(orders_series_query(period, marks))
            }
            signups = {int(b): int(n) for b, n in conn.execute(signups_series_query(period, marks))}
    log.info(
        "report for %s to %s: %d campaigns",
        isoformat_z(period.start),
        isoformat_z(period.end),
        len(figures),
        extra={
            "event": "report_built",
            "start": isoformat_z(period.start),
            "end": isoformat_z(period.end),
            "campaigns": len(figures),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    buckets = [
        Bucket(
            marks[k],
            marks[k + 1],
            *orders.get(k, (0, 0)),
            new_customers=signups.get(k, 0),
        )
        for k in range(len(marks) - 1)
    ]
    return Report(period, now, config, shop, figures, unit, buckets)
