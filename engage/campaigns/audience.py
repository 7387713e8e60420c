"""Audience conditions -> one set-based SQL select, evaluated as of an instant.

Every condition of SPEC §3 becomes a WHERE clause over the customer table and
two grouped subqueries (interaction facts, points facts). Nothing is filtered
in Python: the database returns exactly the matching customers, streamed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, false, func, literal, or_, select
from sqlalchemy.sql import Select

from ..config import Config
from ..db.models import Customer, Money
from ..recipients import (
    DEFAULT_EXPIRING_WINDOW,
    Recipient,
    _at,
    interaction_facts,
    points_facts,
    recipients_query,
    row_to_recipient,
)

_INTERACTION_CONDITIONS = (
    "quiet_for",
    "active_within",
    "min_orders",
    "max_orders",
    "min_lifetime_value",
    "last_order_within",
)
_POINTS_CONDITIONS = ("points_expiring_within", "min_points_balance")


def expiring_window(audience: Any) -> timedelta:
    """The window that ``points.expiring`` refers to for this audience."""
    return getattr(audience, "points_expiring_within", None) or DEFAULT_EXPIRING_WINDOW


def _needs(audience: Any, names: tuple[str, ...]) -> bool:
    return any(getattr(audience, n, None) is not None for n in names)


def _where_attributes(where: dict[str, Any]) -> list[ColumnElement[bool]]:
    """``where: {country: [US, CA], vip: true}`` on the JSON ``attributes`` column."""
    attrs = Customer.__table__.c.attributes
    clauses: list[ColumnElement[bool]] = []
    for key, wanted in where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        by_type: list[ColumnElement[bool]] = []
        for typ, accessor in (
            (bool, lambda e: e.as_boolean()),
            (int, lambda e: e.as_integer()),
            (float, lambda e: e.as_float()),
            (str, lambda e: e.as_string()),
        ):
            group = [v for v in values if type(v) is typ]
            if group:
                by_type.append(accessor(attrs[key]).in_(group))
        clauses.append(or_(*by_type) if by_type else false())
    return clauses


def conditions(
    audience: Any,
    config: Config,
    as_of: datetime,
    ifacts: Any | None,
    pfacts: Any | None,
) -> list[ColumnElement[bool]]:
    """WHERE clauses for an audience, given the (optional) joined fact subqueries."""
    c = Customer.__table__.c
    out: list[ColumnElement[bool]] = [c.created_at <= _at(as_of)]

    def ago(d: timedelta) -> Any:
        return _at(as_of - d)

    if ifacts is not None:
        last = func.coalesce(ifacts.c.last_engagement, c.created_at)
        orders = func.coalesce(ifacts.c.orders, 0)
        if audience.quiet_for is not None:
            out.append(last <= ago(audience.quiet_for))
        if audience.active_within is not None:
            out.append(last >= ago(audience.active_within))
        if audience.min_orders is not None:
            out.append(orders >= audience.min_orders)
        if audience.max_orders is not None:
            out.append(orders <= audience.max_orders)
        if audience.min_lifetime_value is not None:
            ltv = func.coalesce(ifacts.c.lifetime_value, 0)
            out.append(ltv >= literal(audience.min_lifetime_value, Money()))
        if audience.last_order_within is not None:
            out.append(ifacts.c.last_order >= ago(audience.last_order_within))
    if pfacts is not None:
        if audience.points_expiring_within is not None:
            minimum = getattr(audience, "min_expiring_points", None) or 1
            out.append(func.coalesce(pfacts.c.expiring, 0) >= minimum)
        if audience.min_points_balance is not None:
            out.append(func.coalesce(pfacts.c.balance, 0) >= audience.min_points_balance)
    if audience.signed_up_within is not None:
        out.append(c.created_at >= ago(audience.signed_up_within))
    if audience.tiers is not None:
        out.append(c.tier.in_(audience.tiers))
    if audience.where:
        out.extend(_where_attributes(audience.where))
    return out


def audience_ids(audience: Any, config: Config, as_of: datetime) -> Select[Any]:
    """``SELECT customer.id`` of everyone matching, joining only the facts needed."""
    c = Customer.__table__
    q = select(c.c.id).select_from(c)
    ifacts = pfacts = None
    if _needs(audience, _INTERACTION_CONDITIONS):
        ifacts = interaction_facts(config, as_of)
        q = q.outerjoin(ifacts, ifacts.c.customer_id == c.c.id)
    if _needs(audience, _POINTS_CONDITIONS):
        pfacts = points_facts(as_of, expiring_window(audience))
        q = q.outerjoin(pfacts, pfacts.c.customer_id == c.c.id)
    return q.where(and_(*conditions(audience, config, as_of, ifacts, pfacts)))


def audience_recipients_query(audience: Any, config: Config, as_of: datetime) -> Select[Any]:
    """The matching customers with every Recipient fact, ordered by id."""
    q, ifacts, pfacts = recipients_query(config, as_of, expiring_within=expiring_window(audience))
    return q.where(and_(*conditions(audience, config, as_of, ifacts, pfacts))).order_by(
        Customer.__table__.c.id
    )


def count_audience(engine: Engine, audience: Any, config: Config, as_of: datetime) -> int:
    q = select(func.count()).select_from(audience_ids(audience, config, as_of).subquery())
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def stream_audience(
    engine: Engine,
    audience: Any,
    config: Config,
    as_of: datetime,
    *,
    batch: int = 2000,
    limit: int | None = None,
) -> Iterator[list[Recipient]]:
    """Matching recipients in batches, streamed with a server-side cursor."""
    q = audience_recipients_query(audience, config, as_of)
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
        for rows in result.partitions(batch):
            yield [row_to_recipient(r, config) for r in rows]
