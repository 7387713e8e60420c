"""What the interaction log and the points ledger say about a customer as of
an instant, as SQL expressions.

The audience compiler (``campaigns.audience``) builds its conditions from
these, and ``customers.recipients`` reads them per customer; this module owns
what "engagement" means (config ``engagement_kinds``), so both read it the
same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Subquery,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    true,
    type_coerce,
)

from ..config import Config
from ..db import facts as stored
from ..db.bulk import in_values, no_index
from ..db.models import Customer, CustomerFacts, Interaction, Money, PointsLot, UTCDateTime

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


def rule_of(config: Config) -> stored.EngagementRule:
    """The engagement rule of ``config``, as the stored facts record it."""
    return stored.EngagementRule.of(config.engagement_kinds, config.ignored_kinds)


def ensure_facts(engine: Engine, config: Config, now: datetime) -> bool:
    """Make ``customer_facts`` follow ``config``'s engagement rule (``engage db
    upgrade`` and every import call this); True when they were rebuilt."""
    with engine.begin() as conn:
        return stored.ensure(conn, rule_of(config), now)


# How an audience reads a customer's facts as of an instant (``facts_reading``).
LOG = "log"  # from the interaction log and the lots, for every customer
FACTS = "facts"  # from customer_facts, for every customer
SPLIT = "split"  # customer_facts for the customers with nothing recorded after the
#                  instant, the log for the few others (late events of a live shop)
SPLIT_MAX = 10_000  # customers read from the log at most in a split reading


def facts_reading(conn: Connection, config: Config, as_of: datetime) -> str:
    """How ``customer_facts`` answer ``as_of``: ``FACTS``, ``SPLIT`` or ``LOG``.

    The facts are a customer's facts as of ``as_of`` when they are complete,
    follow ``config``'s engagement rule, and nothing is recorded after
    ``as_of`` for the customer (``horizon``). ``FACTS`` when that holds for
    every customer signed up by then (an index probe); ``SPLIT`` when only a
    few (at most ``SPLIT_MAX``) have later data, such as the interactions
    webhooks record while the daemon plans an occurrence that just passed;
    ``LOG`` otherwise (an instant in the shop's past, a rule just changed, a
    first import still loading).
    """
    state = stored.state(conn)
    if not state.valid or state.engagement != rule_of(config).to_json():
        return LOG
    f = CustomerFacts.__table__
    late = (
        select(f.c.customer_id)
        .where(f.c.horizon > at_instant(as_of), f.c.created_at <= at_instant(as_of))
        .limit(SPLIT_MAX + 1)
        .subquery()
    )
    n = int(conn.execute(select(func.count()).select_from(late)).scalar_one())
    if n == 0:
        return FACTS
    return SPLIT if n <= SPLIT_MAX else LOG


def facts_usable(conn: Connection, config: Config, as_of: datetime) -> bool:
    """Whether ``customer_facts`` are every customer's facts as of ``as_of``
    (``facts_reading`` is ``FACTS``)."""
    return facts_reading(conn, config, as_of) == FACTS


def read_from_facts(as_of: datetime) -> ColumnElement[bool]:
    """The customers whose facts answer ``as_of`` (a split reading's first part)."""
    f = CustomerFacts.__table__
    return or_(f.c.horizon.is_(None), f.c.horizon <= at_instant(as_of))


def read_from_log(as_of: datetime) -> ColumnElement[bool]:
    """The other customers (over ``customer``): a split reading's second part."""
    c, f = Customer.__table__, CustomerFacts.__table__
    return c.c.id.in_(select(f.c.customer_id).where(f.c.horizon > at_instant(as_of)))


def interaction_facts(
    config: Config, as_of: datetime, customer_ids: Sequence[str] | None = None
) -> Subquery:
    """One pass over ``interaction`` up to ``as_of``, grouped per customer:
    ``last_engagement``, ``orders``, ``lifetime_value``, ``last_order``.

    For reports over the whole table; reading recipients uses the correlated
    per-customer forms below, which cost nothing for customers not read."""
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
    ).where(i.c.occurred_at <= at_instant(as_of))
    if customer_ids is not None:
        q = q.where(in_values(i.c.customer_id, customer_ids))
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
        func.sum(case((p.c.expires_at <= at_instant(horizon), p.c.remaining), else_=0)).label(
            "expiring"
        ),
        type_coerce(func.min(p.c.expires_at), UTCDateTime()).label("next_expiry"),
    ).where(
        p.c.earned_at <= at_instant(as_of),
        p.c.expires_at > at_instant(as_of),
        p.c.remaining > 0,
    )
    if customer_ids is not None:
        q = q.where(in_values(p.c.customer_id, customer_ids))
    return q.group_by(p.c.customer_id).subquery("pfacts")


def at_instant(value: datetime) -> BindParameter[datetime]:
    return literal(value, UTCDateTime())


# --- per-customer facts as correlated subqueries ----------------------------------------
#
# Why correlated subqueries rather than the grouped ``*_facts`` joins above: a
# grouped subquery aggregates every interaction up to ``as_of`` (10 million rows
# at shop scale) before the first customer comes out, whatever the audience.
# A correlated subquery probes the (customer_id, occurred_at) and (customer_id,
# kind, occurred_at) indexes for just the customers being read, so streaming
# 2,000 recipients costs 2,000 short index range scans, and ``--at`` keeps its
# exact as-of meaning (every probe is bounded by ``as_of``).


def last_engagement_of(config: Config, as_of: datetime) -> Any:
    """The customer's latest engagement up to ``as_of`` (NULL when none)."""
    c, i = Customer.__table__, Interaction.__table__
    return (
        select(i.c.occurred_at)
        .where(
            i.c.customer_id == c.c.id,
            i.c.occurred_at <= at_instant(as_of),
            engagement_filter(config),
        )
        .order_by(i.c.occurred_at.desc())
        .limit(1)
        .scalar_subquery()
    )


def orders_where(as_of: datetime, since: datetime | None = None) -> ColumnElement[bool]:
    """The customer's orders up to ``as_of`` (and from ``since``), for subqueries.

    ``kind`` is kept from driving SQLite's plan (``no_index``): without
    statistics SQLite preferred the report's covering ``(kind, occurred_at,
    customer_id, amount)`` index for a per-customer sum of amounts, a scan of
    every order in the log for each customer (2,000 recipients took 236 s at
    1M customers); by ``customer_id`` it reads that customer's few rows."""
    c, i = Customer.__table__, Interaction.__table__
    clause = and_(
        i.c.customer_id == c.c.id,
        no_index(i.c.kind) == "order",
        i.c.occurred_at <= at_instant(as_of),
    )
    if since is not None:
        clause = and_(clause, i.c.occurred_at >= at_instant(since))
    return clause


def order_count_of(as_of: datetime) -> Any:
    i = Interaction.__table__
    return select(func.count()).select_from(i).where(orders_where(as_of)).scalar_subquery()


def lifetime_value_of(as_of: datetime) -> Any:
    i = Interaction.__table__
    return (
        select(type_coerce(func.sum(i.c.amount), Money()))
        .where(orders_where(as_of))
        .scalar_subquery()
    )


NPS_KIND = "nps"


def latest_answers(since: datetime, until: datetime, *, until_inclusive: bool = False) -> Subquery:
    """Each customer's latest survey answer (kind ``nps`` with a 0-10 score)
    that occurred in ``[since, until)`` (``[since, until]`` when
    ``until_inclusive``): ``customer_id``, ``score``. Answers at the same
    instant are told apart by their id (the later row wins); a score outside
    0-10, or none, is not an answer.

    Read from the (kind, occurred_at) index: only the range's answers are ranked.
    """
    i = Interaction.__table__
    upto = (
        i.c.occurred_at <= at_instant(until)
        if until_inclusive
        else (i.c.occurred_at < at_instant(until))
    )
    rank = func.row_number().over(
        partition_by=i.c.customer_id, order_by=(i.c.occurred_at.desc(), i.c.id.desc())
    )
    ranked = (
        select(i.c.customer_id, i.c.score, rank.label("rank"))
        .where(
            i.c.kind == NPS_KIND,
            i.c.occurred_at >= at_instant(since),
            upto,
            i.c.score >= 0,
            i.c.score <= 10,
        )
        .subquery("answers")
    )
    return (
        select(ranked.c.customer_id, ranked.c.score)
        .where(ranked.c.rank == 1)
        .subquery("latest_answers")
    )
def lifetime_cents_of(as_of: datetime) -> Any:
    """The customer's order amounts up to ``as_of`` in whole cents (NULL when
    none): exact on every backend (SQLite keeps amounts as REAL, whose sums
    can land a hair below a threshold), and what ``customer_facts`` sums."""
    i = Interaction.__table__
    return select(func.sum(cents(i.c.amount))).where(orders_where(as_of)).scalar_subquery()


def cents(amount: Any) -> Any:
    """An amount in whole cents, as SQL (``engage.db.facts`` rounds the same way)."""
    return cast(func.round(amount * 100), BigInteger)


def live_lots(as_of: datetime) -> ColumnElement[bool]:
    """Lots of the customer with points left, earned by and unexpired at ``as_of``."""
    c, p = Customer.__table__, PointsLot.__table__
    return and_(
        p.c.customer_id == c.c.id,
        p.c.earned_at <= at_instant(as_of),
        p.c.expires_at > at_instant(as_of),
        p.c.remaining > 0,
    )
