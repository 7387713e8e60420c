"""Shop figures for a period: one SQL statement per figure, over every customer.

Each ``*_query`` returns a SELECT of one row of integer counts (money as
integer cents); the matching dataclass turns the row into figures. The
statements read the interaction log through its indexes and never bring
customers into Python: at shop scale (a million customers, ten million
interactions) each is one pass over the index range it needs.

Boundaries are half-open everywhere: the period is ``[start, end)``, the
previous period ``[previous_start, start)``, and "counted at instant t" for
retention means an order in ``[t - retention_window, t)``. docs/report.md
states every formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.sql import Select

from ..config import Config
from ..customers.facts import at_instant, latest_answers
from ..db.models import Customer, Interaction, PointsLot, PointsRedemption
from .period import Period
from .stats import money, money_per, percent, ratio

LOG = Interaction.__table__  # the interaction log
ORDER = "order"


def _zero(value: Any) -> Any:
    return func.coalesce(value, 0)


def _flag(condition: Any) -> Any:
    return func.max(case((condition, 1), else_=0))


def cents(amount: Any) -> Any:
    """An amount column as whole cents, summed exactly on both backends
    (SQLite stores amounts as REAL: summing them would drift)."""
    return func.round(amount * 100)


# --- retention ----------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """SPEC §10: (E - N) / S x 100, and the cohort retention |S ∩ E| / S x 100."""

    at_start: int  # S: customers with an order in [start - window, start)
    at_end: int  # E: customers with an order in [end - window, end)
    new_buyers: int  # N: customers whose first order ever falls in the period
    retained: int  # |S ∩ E|: counted at the start and still at the end

    @property
    def rate(self) -> float | None:
        return percent(self.at_end - self.new_buyers, self.at_start)

    @property
    def cohort_rate(self) -> float | None:
        return percent(self.retained, self.at_start)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "cohort_rate": self.cohort_rate,
            "at_start": self.at_start,
            "at_end": self.at_end,
            "new_buyers": self.new_buyers,
            "retained": self.retained,
        }


def retention_query(period: Period, window: timedelta) -> Select[Any]:
    """One pass over the orders in ``[start - window, end)``, grouped per
    customer into three flags; the first-order test probes only the
    customers who bought in the period and not in the window before it."""
    s, e = period.start, period.end
    lo = s - window
    per = (
        select(
            LOG.c.customer_id,
            _flag(LOG.c.occurred_at < at_instant(s)).label("at_start"),
            _flag(LOG.c.occurred_at >= at_instant(e - window)).label("at_end"),
            _flag(LOG.c.occurred_at >= at_instant(s)).label("in_period"),
        )
        .where(
            LOG.c.kind == ORDER,
            LOG.c.occurred_at >= at_instant(lo),
            LOG.c.occurred_at < at_instant(e),
        )
        .group_by(LOG.c.customer_id)
        .subquery("buyers")
    )
    j = LOG.alias("earlier")
    ordered_before = exists(
        select(literal(1)).where(
            j.c.customer_id == per.c.customer_id,
            j.c.kind == ORDER,
            j.c.occurred_at < at_instant(lo),
        )
    )
    first = and_(per.c.in_period == 1, per.c.at_start == 0, ~ordered_before)
    return select(
        _zero(func.sum(per.c.at_start)),
        _zero(func.sum(per.c.at_end)),
        _zero(func.sum(case((first, 1), else_=0))),
        _zero(func.sum(per.c.at_start * per.c.at_end)),
    )


# --- activity and churn -------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """Customers with an engagement (config ``engagement_kinds``) in the period
    and in the previous one; churned = active before and not now."""

    active: int
    previously_active: int
    churned: int

    @property
    def churn_rate(self) -> float | None:
        return percent(self.churned, self.previously_active)

    def to_json(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "previously_active": self.previously_active,
            "churned": self.churned,
            "churn_rate": self.churn_rate,
        }


def distinct_values(conn: Connection, column: Any) -> list[Any]:
    """The distinct non-null values of an indexed column, by skipping through
    its index one value at a time (a few seeks per value, whatever the
    table's size; a plain DISTINCT reads every entry on SQLite)."""
    table = column.table
    first = select(func.min(column).label("value")).cte("values_", recursive=True)
    following = table.alias("following")
    after = following.c[column.name]
    step = select(select(func.min(after)).where(after > first.c.value).scalar_subquery()).where(
        first.c.value.is_not(None)
    )
    values = first.union_all(step)
    return list(conn.execute(select(values.c.value).where(values.c.value.is_not(None))).scalars())


def engaged_kinds(conn: Connection, config: Config) -> list[str]:
    """The interaction kinds that count as engagement: config
    ``engagement_kinds``, or every kind found in the log but the ignored ones.

    A list of kinds lets both databases read each kind's time range from the
    (kind, occurred_at, customer_id) index; "kind NOT IN (ignored)" would
    make them scan every interaction."""
    if config.engagement_kinds is not None:
        return list(config.engagement_kinds)
    ignored = set(config.ignored_kinds)
    return sorted(k for k in distinct_values(conn, LOG.c.kind) if k not in ignored)


def activity_query(period: Period, kinds: Sequence[str]) -> Select[Any]:
    """Customers with an engagement in the period and in the previous one:
    one pass over both periods' range of the (kind, occurred_at, customer_id)
    index, per engaged kind."""
    s = at_instant(period.start)
    per = (
        select(
            LOG.c.customer_id,
            _flag(LOG.c.occurred_at >= s).label("now"),
            _flag(LOG.c.occurred_at < s).label("before"),
        )
        .where(
            LOG.c.kind.in_(list(kinds)),
            LOG.c.occurred_at >= at_instant(period.previous_start),
            LOG.c.occurred_at < at_instant(period.end),
        )
        .group_by(LOG.c.customer_id)
        .subquery("engaged")
    )
    return select(
        _zero(func.sum(per.c.now)),
        _zero(func.sum(per.c.before)),
        _zero(func.sum(case((and_(per.c.before == 1, per.c.now == 0), 1), else_=0))),
    )


# --- purchases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Purchases:
    orders: int  # orders in the period
    revenue_cents: int
    buyers: int  # customers with an order in the period
    repeat_buyers: int  # ... who have at least 2 orders ever (as of the period's end)
    loyal_buyers: int  # ... who have at least ``loyal_min_orders`` orders ever
    loyal_min_orders: int

    @property
    def revenue(self) -> Decimal:
        return money(self.revenue_cents)

    @property
    def average_order_value(self) -> Decimal | None:
        return money_per(self.revenue_cents, self.orders)

    @property
    def purchase_frequency(self) -> float | None:
        return ratio(self.orders, self.buyers)

    @property
    def repeat_purchase_rate(self) -> float | None:
        return percent(self.repeat_buyers, self.buyers)

    @property
    def loyal_customer_rate(self) -> float | None:
        return percent(self.loyal_buyers, self.buyers)

    def to_json(self) -> dict[str, Any]:
        aov = self.average_order_value
        return {
            "orders": self.orders,
            "revenue": str(self.revenue),
            "buyers": self.buyers,
            "average_order_value": None if aov is None else str(aov),
            "purchase_frequency": self.purchase_frequency,
            "repeat_buyers": self.repeat_buyers,
            "repeat_purchase_rate": self.repeat_purchase_rate,
            "loyal_buyers": self.loyal_buyers,
            "loyal_min_orders": self.loyal_min_orders,
            "loyal_customer_rate": self.loyal_customer_rate,
        }


def purchases_query(period: Period, loyal_min_orders: int) -> Select[Any]:
    """The period's orders grouped per buyer, then each buyer's earlier orders
    counted through the (customer_id, kind, occurred_at) index."""
    s, e = period.start, period.end
    per = (
        select(
            LOG.c.customer_id,
            func.count().label("orders"),
            _zero(func.sum(cents(LOG.c.amount))).label("cents"),
        )
        .where(
            LOG.c.kind == ORDER,
            LOG.c.occurred_at >= at_instant(s),
            LOG.c.occurred_at < at_instant(e),
        )
        .group_by(LOG.c.customer_id)
        .subquery("buyers")
    )
    j = LOG.alias("earlier")
    earlier = (
        select(func.count())
        .select_from(j)
        .where(
            j.c.customer_id == per.c.customer_id, j.c.kind == ORDER, j.c.occurred_at < at_instant(s)
        )
        .scalar_subquery()
    )
    ever = (per.c.orders + earlier).label("ever")
    # Materialized on PostgreSQL, which would otherwise inline ``ever`` into
    # both sums below and count each buyer's earlier orders twice.
    counted = (
        select(per.c.orders, per.c.cents, ever)
        .cte("counted")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return select(
        _zero(func.sum(counted.c.orders)),
        _zero(func.sum(counted.c.cents)),
        func.count(),
        _zero(func.sum(case((counted.c.ever >= 2, 1), else_=0))),
        _zero(func.sum(case((counted.c.ever >= loyal_min_orders, 1), else_=0))),
    )


# --- points -------------------------------------------------------------------------


@dataclass(frozen=True)
class Points:
    earned: int  # points of lots earned in the period
    redeemed: int  # points of redemptions in the period
    expired: int  # points left on lots whose expiry fell in the period

    @property
    def redemption_rate(self) -> float | None:
        return percent(self.redeemed, self.earned)

    def to_json(self) -> dict[str, Any]:
        return {
            "earned": self.earned,
            "redeemed": self.redeemed,
            "expired": self.expired,
            "redemption_rate": self.redemption_rate,
        }


def points_query(period: Period) -> Select[Any]:
    p, r = PointsLot.__table__, PointsRedemption.__table__
    s, e = at_instant(period.start), at_instant(period.end)
    earned = select(_zero(func.sum(p.c.points))).where(p.c.earned_at >= s, p.c.earned_at < e)
    redeemed = select(_zero(func.sum(r.c.points))).where(r.c.redeemed_at >= s, r.c.redeemed_at < e)
    expired = select(_zero(func.sum(p.c.remaining))).where(
        p.c.expires_at >= s, p.c.expires_at < e, p.c.remaining > 0
    )
    return select(earned.scalar_subquery(), redeemed.scalar_subquery(), expired.scalar_subquery())


# --- net promoter score -------------------------------------------------------------


@dataclass(frozen=True)
class Nps:
    """Over each customer's latest answer in the period."""

    promoters: int  # 9-10
    passives: int  # 7-8
    detractors: int  # 0-6

    @property
    def responses(self) -> int:
        return self.promoters + self.passives + self.detractors

    @property
    def score(self) -> float | None:
        return percent(self.promoters - self.detractors, self.responses)

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "responses": self.responses,
            "promoters": self.promoters,
            "passives": self.passives,
            "detractors": self.detractors,
        }


def nps_query(period: Period) -> Select[Any]:
    latest = latest_answers(period.start, period.end)
    score = latest.c.score
    return select(
        _zero(func.sum(case((score >= 9, 1), else_=0))),
        _zero(func.sum(case((and_(score >= 7, score <= 8), 1), else_=0))),
        _zero(func.sum(case((score <= 6, 1), else_=0))),
    )


# --- the customer base --------------------------------------------------------------


@dataclass(frozen=True)
class Customers:
    total: int  # customers signed up before the period's end
    new: int  # ... of whom in the period

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "new": self.new}


def customers_query(period: Period) -> Select[Any]:
    c = Customer.__table__
    e = at_instant(period.end)
    return select(
        func.count(),
        _zero(func.sum(case((c.c.created_at >= at_instant(period.start), 1), else_=0))),
    ).where(c.c.created_at < e)


# --- all of them --------------------------------------------------------------------


@dataclass(frozen=True)
class ShopFigures:
    customers: Customers
    retention: Retention
    activity: Activity
    purchases: Purchases
    points: Points
    nps: Nps

    def to_json(self) -> dict[str, Any]:
        return {
            "customers": self.customers.to_json(),
            "retention": self.retention.to_json(),
            "activity": self.activity.to_json(),
            "purchases": self.purchases.to_json(),
            "points": self.points.to_json(),
            "nps": self.nps.to_json(),
        }


def shop_queries(period: Period, config: Config, kinds: Sequence[str]) -> dict[str, Select[Any]]:
    """Every shop figure's statement by name (the benchmark times each one);
    ``kinds``: ``engaged_kinds``."""
    return {
        "customers": customers_query(period),
        "retention": retention_query(period, config.retention_window),
        "activity": activity_query(period, kinds),
        "purchases": purchases_query(period, config.loyal_min_orders),
        "points": points_query(period),
        "nps": nps_query(period),
    }


def _purchases(row: list[int], loyal_min_orders: int) -> Purchases:
    orders, revenue_cents, buyers, repeat_buyers, loyal_buyers = row
    return Purchases(orders, revenue_cents, buyers, repeat_buyers, loyal_buyers, loyal_min_orders)


def _ints(row: Any) -> list[int]:
    return [int(v or 0) for v in row]


def shop_figures(conn: Connection, period: Period, config: Config) -> ShopFigures:
    q = shop_queries(period, config, engaged_kinds(conn, config))
    one = {name: _ints(conn.execute(stmt).one()) for name, stmt in q.items()}
    return ShopFigures(
        customers=Customers(*one["customers"]),
        retention=Retention(*one["retention"]),
        activity=Activity(*one["activity"]),
        purchases=_purchases(one["purchases"], config.loyal_min_orders),
        points=Points(*one["points"]),
        nps=Nps(*one["nps"]),
    )
