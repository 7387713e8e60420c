"""Audience conditions -> one set-based SQL select, evaluated as of an instant.

Every condition of SPEC §3 becomes a WHERE clause over the customer table:
EXISTS probes and correlated counts over the interaction indexes, and a
semi-join from the points lots. Nothing is filtered in Python: the database
returns exactly the matching customers, streamed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    String,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Select
from sqlalchemy.sql.util import find_tables
from sqlalchemy.sql.visitors import InternalTraversal

from ..config import Config
from ..customers.facts import (
    DEFAULT_EXPIRING_WINDOW,
    FACTS,
    LOG,
    SPLIT,
    at_instant,
    engagement_filter,
    facts_reading,
    latest_answers,
    lifetime_cents_of,
    order_count_of,
    orders_where,
    read_from_facts,
    read_from_log,
)
from ..customers.recipients import (
    Recipient,
    decision_query,
    decision_row_to_recipient,
    recipients_query,
    row_to_recipient,
)
from ..db.models import Customer, CustomerFacts, Interaction, PointsLot


def expiring_window(audience: Any) -> timedelta:
    """The window that ``points.expiring`` refers to for this audience."""
    return getattr(audience, "points_expiring_within", None) or DEFAULT_EXPIRING_WINDOW


def _where_attributes(where: dict[str, Any]) -> list[ColumnElement[bool]]:
    """``where: {country: [US, CA], vip: true}`` on the JSON ``attributes`` column."""
    return [
        _AttributeIn(key, wanted if isinstance(wanted, list) else [wanted])
        for key, wanted in where.items()
    ]


class _AttributeIn(ColumnElement[bool]):
    """An attribute equals one of ``values``, JSON types included (docs:
    ``"3"`` is not ``3``, ``true`` is not ``1``), the same on both backends.

    SQLAlchemy's JSON accessors did not keep types apart: PostgreSQL's
    ``->>`` reads the number 3 and the text "3" alike (and its integer cast
    failed on text that is no number), SQLite's ``json_extract`` reads
    ``true`` as 1. PostgreSQL now compares ``jsonb`` values; SQLite checks
    ``json_type`` beside the value. Every value is a bound parameter of the
    element, so statements using it are cached like any other.
    """

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_clauseelement),
        ("path", InternalTraversal.dp_clauseelement),
        ("raw", InternalTraversal.dp_clauseelement_list),
        ("encoded", InternalTraversal.dp_clauseelement_list),
        ("kinds", InternalTraversal.dp_plain_obj),
    ]

    def __init__(self, key: str, values: list[Any]) -> None:
        self.column = Customer.__table__.c.attributes
        self.name = bindparam(None, key, String())  # PostgreSQL: jsonb -> name
        self.path = bindparam(None, f'$."{key}"', String())  # SQLite: the JSON path
        self.raw: list[Any] = [bindparam(None, v) for v in values]
        self.encoded = [bindparam(None, json.dumps(v), String()) for v in values]
        # The SQL's shape (and SQLite's true/false, written into it) by value.
        self.kinds = tuple(
            ("true" if v else "false")
            if isinstance(v, bool)
            else "number"
            if isinstance(v, int | float)
            else "text"
            for v in values
        )

    @property
    def _from_objects(self) -> list[Any]:  # type: ignore[override]
        return self.column._from_objects

    def self_group(self, against: Any = None) -> Any:
        return self


@compiles(_AttributeIn)
def _attribute_in_sqlite(element: _AttributeIn, compiler: Any, **kw: Any) -> str:
    attrs = compiler.process(element.column, **kw)

    def of(fn: str) -> str:
        return f"{fn}({attrs}, {compiler.process(element.path, **kw)})"

    terms = []
    for kind, raw in zip(element.kinds, element.raw, strict=True):
        if kind in ("true", "false"):
            terms.append(f"{of('json_type')} = '{kind}'")
        elif kind == "number":
            value = compiler.process(raw, **kw)
            terms.append(
                f"({of('json_type')} IN ('integer', 'real') AND {of('json_extract')} = {value})"
            )
        else:
            value = compiler.process(raw, **kw)
            terms.append(f"({of('json_type')} = 'text' AND {of('json_extract')} = {value})")
    return "(" + " OR ".join(terms) + ")" if terms else "(1 = 0)"


@compiles(_AttributeIn, "postgresql")
def _attribute_in_pg(element: _AttributeIn, compiler: Any, **kw: Any) -> str:
    if not element.encoded:
        return "(1 = 0)"
    attrs = compiler.process(element.column, **kw)
    name = compiler.process(element.name, **kw)
    wanted = ", ".join(f"CAST({compiler.process(v, **kw)} AS jsonb)" for v in element.encoded)
    return f"(CAST({attrs} AS jsonb) -> {name}) IN ({wanted})"


def _engaged(config: Config, as_of: datetime, after: Any = None, upto: Any = None) -> Any:
    """EXISTS an engagement of the customer in (after, upto] (upto defaults to as_of)."""
    c, i = Customer.__table__, Interaction.__table__
    q = (
        select(literal(1))
        .select_from(i)
        .where(
            i.c.customer_id == c.c.id,
            i.c.occurred_at <= (upto if upto is not None else at_instant(as_of)),
            engagement_filter(config),
        )
    )
    if after is not None:
        q = q.where(i.c.occurred_at > after)
    return exists(q)


def _lots_with(
    as_of: datetime, minimum: int, horizon: datetime | None, customer_id: Any = None
) -> ColumnElement[bool]:
    """The customer has at least ``minimum`` live points (expiring by ``horizon``).

    A semi-join from the lots side: the expiring lots are a small range of the
    (expires_at) index, so the database finds the few customers from there.
    ``customer_id`` is the column it tests (``customer.id`` unless given).
    """
    c, p = Customer.__table__, PointsLot.__table__
    q = select(p.c.customer_id).where(
        p.c.earned_at <= at_instant(as_of), p.c.expires_at > at_instant(as_of), p.c.remaining > 0
    )
    if horizon is not None:
        q = q.where(p.c.expires_at <= at_instant(horizon))
    q = q.group_by(p.c.customer_id).having(func.sum(p.c.remaining) >= minimum)
    return (c.c.id if customer_id is None else customer_id).in_(q)


def conditions(
    audience: Any, config: Config, as_of: datetime, *, facts: bool = False
) -> list[ColumnElement[bool]]:
    """WHERE clauses for an audience, as of ``as_of``.

    Two exact readings of the same definitions. From the interaction log
    (``facts=False``, any instant; clauses over ``customer``): "last
    activity" is the latest engagement, or ``created_at`` when there is none
    (SPEC §2). Each condition on it is rewritten exactly into EXISTS probes of
    the (customer_id, occurred_at) index, which stop at the first matching
    row instead of aggregating every interaction of every customer:
    ``last <= t``  ==  no engagement in (t, as_of] and (created_at <= t or an
    engagement <= t); ``last >= t``  ==  an engagement in [t, as_of] or (none
    at all and created_at >= t).

    From ``customer_facts`` (``facts=True``, only where ``facts_reading`` says
    they answer ``as_of``): the conditions the facts cover become comparisons
    of a facts column, the others (points expiring soon, tiers, attributes)
    stay as they are; clauses are over ``customer_facts`` and, for those,
    ``customer`` (see ``audience_select``). A condition without a facts
    reading is written as on the log: it is exact either way.
    """
    c, f = Customer.__table__.c, CustomerFacts.__table__.c
    created = f.created_at if facts else c.created_at
    out: list[ColumnElement[bool]] = [created <= at_instant(as_of)]
    # When the audience requires an order and orders count as engagement, every
    # member has engaged, so last activity is the latest engagement and the
    # created_at branches below are decided: leaving them out gives the
    # database plain probes instead of ORs (PostgreSQL planned the OR form as a
    # hash semi-join over every order: 6.8x the time of the same set without).
    engaged = _requires_order(audience) and _order_is_engagement(config)

    def ago(d: timedelta) -> Any:
        return at_instant(as_of - d)

    if audience.quiet_for is not None:
        t = ago(audience.quiet_for)
        if facts:
            out.append(f.last_activity_at <= t)
        else:
            out.append(~_engaged(config, as_of, after=t))
            if not engaged:  # else: some engagement <= as_of, none after t, so one <= t
                out.append(or_(c.created_at <= t, _engaged(config, as_of, upto=t)))
    if audience.active_within is not None:
        t = ago(audience.active_within)
        if facts:
            out.append(f.last_activity_at >= t)
        elif engaged:
            out.append(_engaged_since(config, as_of, t))
        else:
            out.append(
                or_(
                    _engaged_since(config, as_of, t),
                    and_(c.created_at >= t, ~_engaged(config, as_of)),
                )
            )
    if audience.min_orders is not None and audience.min_orders > 0:
        if facts:
            out.append(f.orders >= audience.min_orders)
        elif audience.min_orders == 1:
            out.append(exists(select(literal(1)).where(orders_where(as_of))))
        else:
            out.append(order_count_of(as_of) >= audience.min_orders)
    if audience.max_orders is not None:
        if facts:
            out.append(f.orders <= audience.max_orders)
        elif audience.max_orders == 0:
            out.append(~exists(select(literal(1)).where(orders_where(as_of))))
        else:
            out.append(order_count_of(as_of) <= audience.max_orders)
    if audience.min_lifetime_value is not None:
        threshold = int(_cents_up(audience.min_lifetime_value) * 100)
        if facts:
            out.append(f.lifetime_cents >= threshold)
        else:
            out.append(func.coalesce(lifetime_cents_of(as_of), 0) >= threshold)
    if audience.last_order_within is not None:
        since = as_of - audience.last_order_within
        if facts:
            out.append(f.last_order_at >= at_instant(since))
        else:
            out.append(exists(select(literal(1)).where(orders_where(as_of, since))))
    if audience.points_expiring_within is not None:
        minimum = getattr(audience, "min_expiring_points", None) or 1
        horizon = as_of + audience.points_expiring_within
        out.append(_lots_with(as_of, minimum, horizon, f.customer_id if facts else None))
    if audience.min_points_balance is not None and audience.min_points_balance > 0:
        minimum = audience.min_points_balance
        if facts:
            # points_left bounds the balance at any instant, and equals it
            # until the customer's first lot with points left expires; past
            # that, the lots say.
            out.append(f.points_left >= minimum)
            out.append(
                or_(
                    f.points_next_expiry > at_instant(as_of),
                    _lots_with(as_of, minimum, None, f.customer_id),
                )
            )
        else:
            out.append(_lots_with(as_of, minimum, None))
    if audience.signed_up_within is not None:
        out.append(created >= ago(audience.signed_up_within))
    if audience.tiers is not None:
        out.append(c.tier.in_(audience.tiers))
    if audience.where:
        out.extend(_where_attributes(audience.where))
    if audience.nps_at_most is not None or audience.nps_at_least is not None:
        out.append(_nps_answer(audience, as_of))
    return out


DEFAULT_NPS_WITHIN = timedelta(days=180)


def _nps_answer(audience: Any, as_of: datetime) -> ColumnElement[bool]:
    """The customer's latest survey answer in ``[as_of - nps_within, as_of]``
    scores within ``nps_at_least``..``nps_at_most``: a semi-join from the
    window's answers (a range of the (kind, occurred_at) index), ranked per
    customer, so customers who never answered cost nothing."""
    within = audience.nps_within or DEFAULT_NPS_WITHIN
    latest = latest_answers(as_of - within, as_of, until_inclusive=True)
    q = select(latest.c.customer_id)
    if audience.nps_at_most is not None:
        q = q.where(latest.c.score <= audience.nps_at_most)
    if audience.nps_at_least is not None:
        q = q.where(latest.c.score >= audience.nps_at_least)
    return Customer.__table__.c.id.in_(q)


def _requires_order(audience: Any) -> bool:
    """Whether every member of the audience has at least one order by ``as_of``."""
    return bool(
        (audience.min_orders or 0) >= 1
        or audience.last_order_within is not None
        or (audience.min_lifetime_value is not None and audience.min_lifetime_value > 0)
    )


def _cents_up(amount: Decimal) -> Decimal:
    """A threshold in whole cents, rounded up: amounts are cents, so
    ``value >= x`` and ``value >= _cents_up(x)`` agree (``Money`` would round
    0.004 down to 0.00 and let every customer through)."""
    return amount.quantize(_CENT, rounding=ROUND_CEILING)


_CENT = Decimal("0.01")


def _order_is_engagement(config: Config) -> bool:
    """Whether an ``order`` interaction counts as activity (see ``engagement_filter``)."""
    if config.engagement_kinds is not None:
        return "order" in config.engagement_kinds
    return "order" not in config.ignored_kinds


def _engaged_since(config: Config, as_of: datetime, since: Any) -> Any:
    """EXISTS an engagement of the customer in [since, as_of]."""
    c, i = Customer.__table__, Interaction.__table__
    return exists(
        select(literal(1))
        .select_from(i)
        .where(
            i.c.customer_id == c.c.id,
            i.c.occurred_at >= since,
            i.c.occurred_at <= at_instant(as_of),
            engagement_filter(config),
        )
    )


def audience_select(
    columns: list[Any], clauses: list[ColumnElement[bool]], *, facts: bool
) -> Select[Any]:
    """``SELECT columns WHERE clauses`` from the tables they read.

    From the log: ``customer``. From the facts: ``customer_facts``, joined to
    ``customer`` when a column or a clause reads a customer column (tiers,
    attributes, a condition without a facts reading): an audience that the
    facts decide alone is an index range over them, no customer row read.
    """
    if not facts:
        return select(*columns).where(and_(*clauses))
    c, f = Customer.__table__, CustomerFacts.__table__
    source = c.join(f, f.c.customer_id == c.c.id) if _reads_customer(*columns, *clauses) else f
    return select(*columns).select_from(source).where(and_(*clauses))


def _reads_customer(*elements: Any) -> bool:
    """Whether any of these SQL elements reads a ``customer`` column (also
    inside a subquery correlated to it)."""
    customer = Customer.__table__
    return any(
        customer in find_tables(e, check_columns=True, include_aliases=True) for e in elements
    )


Facts = bool | str | None  # True / FACTS, False / LOG, SPLIT; None: decide (facts_reading)


def _reading(facts: Facts) -> str:
    if facts is True:
        return FACTS
    if facts is False or facts is None:
        return LOG
    if facts not in (FACTS, LOG, SPLIT):
        raise ValueError(f"unknown facts reading {facts!r}")
    return facts


def _read(build: Callable[[bool], Select[Any]], facts: Facts, as_of: datetime) -> Any:
    """The query ``build`` makes for a reading: from the facts, from the log,
    or (split) from the facts for the customers they answer ``as_of`` for
    and from the log for the others, as one ``UNION ALL`` of disjoint parts."""
    reading = _reading(facts)
    if reading != SPLIT:
        return build(reading == FACTS)
    return union_all(
        build(True).where(read_from_facts(as_of)), build(False).where(read_from_log(as_of))
    )


def _by_id(query: Any) -> Any:
    """In customer id order (the id is the first column)."""
    if isinstance(query, Select):
        return query.order_by(Customer.__table__.c.id)
    return query.order_by(text("1"))


def audience_ids(audience: Any, config: Config, as_of: datetime, *, facts: Facts = False) -> Any:
    """``SELECT id`` of everyone matching (``facts``: ``customers.facts.facts_reading``;
    True and False force the facts or the log)."""

    def build(from_facts: bool) -> Select[Any]:
        clauses = conditions(audience, config, as_of, facts=from_facts)
        if from_facts and not _reads_customer(*clauses):
            f = CustomerFacts.__table__
            return audience_select([f.c.customer_id.label("id")], clauses, facts=True)
        return audience_select([Customer.__table__.c.id], clauses, facts=from_facts)

    return _read(build, facts, as_of)


def audience_recipients_query(
    audience: Any, config: Config, as_of: datetime, *, facts: Facts = False
) -> Any:
    """The matching customers with every Recipient fact, ordered by id."""

    def build(from_facts: bool) -> Select[Any]:
        window = expiring_window(audience)
        q = recipients_query(config, as_of, expiring_within=window, facts=from_facts)
        return q.where(and_(*conditions(audience, config, as_of, facts=from_facts)))

    return _by_id(_read(build, facts, as_of))


def audience_decisions_query(
    audience: Any, config: Config, as_of: datetime, *, facts: Facts = False
) -> Any:
    """The matching customers with what ``policy.decide`` reads, ordered by id."""

    def build(from_facts: bool) -> Select[Any]:
        q = decision_query(config, as_of, facts=from_facts)
        return q.where(and_(*conditions(audience, config, as_of, facts=from_facts)))

    return _by_id(_read(build, facts, as_of))


def count_audience(
    engine: Engine, audience: Any, config: Config, as_of: datetime, *, facts: Facts = None
) -> int:
    """How many customers match; ``facts``: None reads ``customer_facts``
    as far as they answer ``as_of`` (``facts_reading``), True/False forces a path."""
    with engine.connect() as conn:
        reading = facts_reading(conn, config, as_of) if facts is None else facts
        ids = audience_ids(audience, config, as_of, facts=reading).subquery()
        return int(conn.execute(select(func.count()).select_from(ids)).scalar_one())


def stream_audience(
    engine: Engine,
    audience: Any,
    config: Config,
    as_of: datetime,
    *,
    batch: int = 2000,
    limit: int | None = None,
    decision_only: bool = False,
    facts: Facts = None,
) -> Iterator[list[Recipient]]:
    """Matching recipients in batches, streamed with a server-side cursor.

    ``decision_only`` reads just what ``policy.decide`` needs (see
    ``recipients.decision_query``): the planner's shape, about a third of the
    cost of the full facts that rendering needs. ``facts`` as in
    ``count_audience``.
    """
    with engine.connect() as conn:
        reading = facts_reading(conn, config, as_of) if facts is None else facts
        if decision_only:
            q = audience_decisions_query(audience, config, as_of, facts=reading)
            convert = decision_row_to_recipient
        else:
            q = audience_recipients_query(audience, config, as_of, facts=reading)
            convert = row_to_recipient
        if limit is not None:
            q = q.limit(limit)
        if conn.dialect.name == "postgresql":
            # A server-side cursor is planned for its first 10% of rows by default
            # (fast start over an index in id order); we always read every row.
            conn.execute(text("SET LOCAL cursor_tuple_fraction = 1.0"))
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
        for rows in result.partitions(batch):
            yield [convert(r, config) for r in rows]
