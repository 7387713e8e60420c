"""What engage knows about a customer at one instant, loaded in bulk with SQL.

``Recipient`` is the single shape that the policy rules, the template context
and the channels read; ``load_recipients`` fills it for many customers in a
few set-based queries (never one query per customer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Select,
    Subquery,
    case,
    func,
    literal,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects import sqlite as _sqlite_dialect
from sqlalchemy.orm import Session

from .config import Config
from .db.models import Customer, Interaction, Money, PointsLot, UTCDateTime
from .timeutil import ensure_utc

_SQLITE = _sqlite_dialect.dialect()


@dataclass(frozen=True)
class PointsSummary:
    balance: int = 0  # unexpired points left, as of the instant
    expiring: int = 0  # of those, points whose lot expires within the window asked for
    next_expiry: datetime | None = None  # earliest expires_at of a lot with points left


@dataclass(frozen=True)
class Recipient:
    customer_id: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    timezone: str  # IANA, config default already applied
    locale: str  # config default already applied
    tier: str | None
    attributes: dict[str, Any]
    email_opt_in: bool
    sms_opt_in: bool
    created_at: datetime
    last_activity: datetime  # latest engagement, or created_at when none
    orders: int = 0
    lifetime_value: Decimal = Decimal("0.00")
    points: PointsSummary = field(default_factory=PointsSummary)


# --- set-based facts about customers --------------------------------------------------

DEFAULT_EXPIRING_WINDOW = timedelta(days=30)


def engagement_filter(config: Config) -> ColumnElement[bool]:
    """Which interaction kinds count as activity (config ``engagement_kinds``)."""
    kind = Interaction.__table__.c.kind
    if config.engagement_kinds is not None:
        return kind.in_(config.engagement_kinds)
    if config.ignored_kinds:
        return kind.not_in(config.ignored_kinds)
    return true()


def interaction_facts(
    config: Config, as_of: datetime, customer_ids: Sequence[str] | None = None
) -> Subquery:
    """One pass over ``interaction`` up to ``as_of``, grouped per customer:
    ``last_engagement``, ``orders``, ``lifetime_value``, ``last_order``."""
    i = Interaction.__table__
    is_order = i.c.kind == "order"
    q = select(
        i.c.customer_id,
        type_coerce(
            func.max(case((engagement_filter(config), i.c.occurred_at))), UTCDateTime()
        ).label("last_engagement"),
        func.sum(case((is_order, 1), else_=0)).label("orders"),
        type_coerce(func.sum(case((is_order, i.c.amount))), Money()).label("lifetime_value"),
        type_coerce(func.max(case((is_order, i.c.occurred_at))), UTCDateTime()).label("last_order"),
    ).where(i.c.occurred_at <= _at(as_of))
    if customer_ids is not None:
        q = q.where(i.c.customer_id.in_(customer_ids))
    return q.group_by(i.c.customer_id).subquery("ifacts")


def points_facts(
    as_of: datetime,
    expiring_within: timedelta = DEFAULT_EXPIRING_WINDOW,
    customer_ids: Sequence[str] | None = None,
) -> Subquery:
    """Unexpired lots with points left as of ``as_of``, grouped per customer:
    ``balance``, ``expiring`` (lots expiring in (as_of, as_of + window]),
    ``next_expiry``. Redemptions already reduced ``remaining`` FIFO."""
    p = PointsLot.__table__
    horizon = as_of + expiring_within
    q = select(
        p.c.customer_id,
        func.sum(p.c.remaining).label("balance"),
        func.sum(case((p.c.expires_at <= _at(horizon), p.c.remaining), else_=0)).label("expiring"),
        type_coerce(func.min(p.c.expires_at), UTCDateTime()).label("next_expiry"),
    ).where(
        p.c.earned_at <= _at(as_of),
        p.c.expires_at > _at(as_of),
        p.c.remaining > 0,
    )
    if customer_ids is not None:
        q = q.where(p.c.customer_id.in_(customer_ids))
    return q.group_by(p.c.customer_id).subquery("pfacts")


def _at(value: datetime) -> BindParameter[datetime]:
    return literal(value, UTCDateTime())


class RecipientsSelect(NamedTuple):
    query: Select[Any]
    ifacts: Subquery
    pfacts: Subquery


def recipients_query(
    config: Config,
    as_of: datetime,
    *,
    customer_ids: Sequence[str] | None = None,
    expiring_within: timedelta = DEFAULT_EXPIRING_WINDOW,
) -> RecipientsSelect:
    """Customers with every fact a Recipient needs, as one select.

    Callers add WHERE clauses over the returned fact subqueries (the audience
    compiler does) and turn rows into Recipients with ``row_to_recipient``.
    """
    c = Customer.__table__
    ifacts = interaction_facts(config, as_of, customer_ids)
    pfacts = points_facts(as_of, expiring_within, customer_ids)
    q = (
        select(
            c,
            func.coalesce(ifacts.c.last_engagement, c.c.created_at).label("last_activity"),
            func.coalesce(ifacts.c.orders, 0).label("orders"),
            ifacts.c.lifetime_value,
            ifacts.c.last_order,
            func.coalesce(pfacts.c.balance, 0).label("points_balance"),
            func.coalesce(pfacts.c.expiring, 0).label("points_expiring"),
            pfacts.c.next_expiry,
        )
        .select_from(c)
        .outerjoin(ifacts, ifacts.c.customer_id == c.c.id)
        .outerjoin(pfacts, pfacts.c.customer_id == c.c.id)
        .where(c.c.created_at <= _at(as_of))
    )
    if customer_ids is not None:
        q = q.where(c.c.id.in_(customer_ids))
    return RecipientsSelect(q, ifacts, pfacts)


def row_to_recipient(row: Any, config: Config) -> Recipient:
    m = row._mapping
    last_activity = m["last_activity"]
    if isinstance(last_activity, str):  # coalesce() of two text instants on SQLite
        last_activity = UTCDateTime().process_result_value(last_activity, _SQLITE)
    return Recipient(
        customer_id=m["id"],
        email=m["email"],
        phone=m["phone"],
        first_name=m["first_name"],
        last_name=m["last_name"],
        timezone=m["timezone"] or config.timezone,
        locale=m["locale"] or config.locale,
        tier=m["tier"],
        attributes=dict(m["attributes"] or {}),
        email_opt_in=bool(m["email_opt_in"]),
        sms_opt_in=bool(m["sms_opt_in"]),
        created_at=m["created_at"],
        last_activity=ensure_utc(last_activity),
        orders=int(m["orders"] or 0),
        lifetime_value=m["lifetime_value"] or Decimal("0.00"),
        points=PointsSummary(
            balance=int(m["points_balance"] or 0),
            expiring=int(m["points_expiring"] or 0),
            next_expiry=m["next_expiry"],
        ),
    )


def load_recipients(
    conn: Connection | Session,
    config: Config,
    customer_ids: Sequence[str],
    as_of: datetime,
    *,
    expiring_within: timedelta = DEFAULT_EXPIRING_WINDOW,
) -> dict[str, Recipient]:
    """Recipients for the given ids (in chunks that every backend accepts)."""
    out: dict[str, Recipient] = {}
    ids = list(dict.fromkeys(customer_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        q = recipients_query(config, as_of, customer_ids=chunk, expiring_within=expiring_within)
        for row in conn.execute(q.query):
            r = row_to_recipient(row, config)
            out[r.customer_id] = r
    return out
