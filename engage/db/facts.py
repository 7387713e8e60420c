"""``customer_facts`` kept current by the database itself.

Every write to ``customer``, ``interaction`` or ``points_lot`` updates the
written customers' facts in the same transaction, whoever writes: engage's
imports and webhooks, a shop's own system writing the documented tables, a
test inserting rows. Triggers do it:

- PostgreSQL: statement-level triggers with transition tables, so a bulk
  statement costs one set-based update of the facts, not one per row.
- SQLite (row-level triggers only): one small upsert per written row. Bulk
  loads pause them for their own transaction (``facts_paused``) and update the
  facts set-based instead (``refresh_inserted``, ``refresh``), or rebuild them
  once at the end (``rebuild``).

An inserted interaction is merged into the facts (max, sum); anything else
(an update, a delete, a points lot) recomputes the customers it touched
from the log. The engagement rule (which kinds count, config
``engagement_kinds`` / ``ignored_kinds``) is written into the triggers:
``install`` rewrites them for another rule and ``facts_state`` records which
rule the facts follow, so a query never uses facts computed under another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, event, text

from .models import Base

VERSION = 1  # of the trigger code below: a new version reinstalls them
COLUMNS = (
    "customer_id", "created_at", "last_engagement_at", "last_activity_at", "orders",
    "lifetime_cents", "first_order_at", "last_order_at", "points_left", "points_next_expiry",
    "horizon",
)  # fmt: skip
_PREFIX = "engage_facts_"


@dataclass(frozen=True)
class EngagementRule:
    """Which interaction kinds count as engagement (SPEC §2): the ``only``
    kinds when given (config ``engagement_kinds``), else every kind but the
    ``ignored`` ones (config ``ignored_kinds``)."""

    only: tuple[str, ...] | None = None
    ignored: tuple[str, ...] = ()

    @classmethod
    def of(cls, only: Sequence[str] | None, ignored: Sequence[str]) -> EngagementRule:
        if only is not None:
            return cls(tuple(sorted(set(only))), ())
        return cls(None, tuple(sorted(set(ignored))))

    def to_json(self) -> str:
        return json.dumps(
            {"version": VERSION, "only": self.only, "ignored": list(self.ignored)},
            sort_keys=True,
        )

    def predicate(self, column: str) -> str:
        """SQL: ``column`` (a kind) counts as engagement."""
        if self.only is not None:
            return f"{column} IN ({_literals(self.only)})" if self.only else "(1 = 0)"
        return f"{column} NOT IN ({_literals(self.ignored)})" if self.ignored else "(1 = 1)"


DEFAULT_RULE = EngagementRule(None, ("email_open",))  # Config's defaults


def _literals(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class _Sql:
    """The few spellings that differ between the two backends."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values, NULL only when both are."""
        return f"GREATEST({a}, {b})" if self.pg else f"COALESCE(MAX({a}, {b}), {a}, {b})"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})" if self.pg else f"COALESCE(MIN({a}, {b}), {a}, {b})"

    def cents(self, amount: str) -> str:
        if self.pg:
            return f"CAST(ROUND({amount} * 100) AS BIGINT)"
        return f"CAST(ROUND({amount} * 100) AS INTEGER)"


def _interaction_aggregates(sql: _Sql, rule: EngagementRule, source: str, where: str) -> str:
    """Per customer of ``source`` rows (customer_id, kind, occurred_at, amount)."""
    order = "kind = 'order'"
    return (
        "SELECT customer_id,"
        f" MAX(CASE WHEN {rule.predicate('kind')} THEN occurred_at END) AS le,"
        f" SUM(CASE WHEN {order} THEN 1 ELSE 0 END) AS n,"
        f" SUM(CASE WHEN {order} THEN {sql.cents('amount')} END) AS cents,"
        f" MIN(CASE WHEN {order} THEN occurred_at END) AS fo,"
        f" MAX(CASE WHEN {order} THEN occurred_at END) AS lo,"
        " MAX(occurred_at) AS h"
        f" FROM {source} {where} GROUP BY customer_id"
    )


def _points_aggregates(where: str) -> str:
    return (
        "SELECT customer_id,"
        " SUM(CASE WHEN remaining > 0 THEN remaining ELSE 0 END) AS pl,"
        " MIN(CASE WHEN remaining > 0 THEN expires_at END) AS nx,"
        " MAX(CASE WHEN remaining > 0 THEN earned_at END) AS h"
        f" FROM points_lot {where} GROUP BY customer_id"
    )


_ALL = ", ".join(COLUMNS)
_SET_ALL = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])


def recompute_sql(dialect: str, rule: EngagementRule, ids: str | None) -> str:
    """Recompute the facts of the customers whose ids ``ids`` (SQL, usable as
    ``IN (ids)``) selects, from the log; every customer when ``ids`` is None."""
    sql = _Sql(dialect)
    where = f"WHERE customer_id IN ({ids})" if ids is not None else ""
    outer = f"WHERE c.id IN ({ids})" if ids is not None else "WHERE true"
    return (
        f"INSERT INTO customer_facts ({_ALL}) "
        "SELECT c.id, c.created_at, i.le, COALESCE(i.le, c.created_at), COALESCE(i.n, 0),"
        " COALESCE(i.cents, 0), i.fo, i.lo, COALESCE(p.pl, 0), p.nx,"
        f" {sql.greatest('i.h', 'p.h')} "
        "FROM customer c "
        f"LEFT JOIN ({_interaction_aggregates(sql, rule, 'interaction', where)}) i"
        " ON i.customer_id = c.id "
        f"LEFT JOIN ({_points_aggregates(where)}) p ON p.customer_id = c.id "
        f"{outer} ON CONFLICT (customer_id) DO UPDATE SET {_SET_ALL}"
    )


def merge_interactions_sql(dialect: str, rule: EngagementRule, source: str) -> str:
    """Merge newly inserted interactions (``source``: rows with customer_id,
    kind, occurred_at, amount) into their customers' facts."""
    sql = _Sql(dialect)
    f = "customer_facts"
    engaged = sql.greatest(f"{f}.last_engagement_at", "excluded.last_engagement_at")
    return (
        f"INSERT INTO {f} ({_ALL}) "
        "SELECT c.id, c.created_at, n.le, COALESCE(n.le, c.created_at), n.n,"
        " COALESCE(n.cents, 0), n.fo, n.lo, 0, NULL, n.h "
        f"FROM ({_interaction_aggregates(sql, rule, source, '')}) n"
        " JOIN customer c ON c.id = n.customer_id WHERE true "
        "ON CONFLICT (customer_id) DO UPDATE SET "
        f"last_engagement_at = {engaged}, "
        f"last_activity_at = COALESCE({engaged}, {f}.created_at), "
        f"orders = {f}.orders + excluded.orders, "
        f"lifetime_cents = {f}.lifetime_cents + excluded.lifetime_cents, "
        f"first_order_at = {sql.least(f'{f}.first_order_at', 'excluded.first_order_at')}, "
        f"last_order_at = {sql.greatest(f'{f}.last_order_at', 'excluded.last_order_at')}, "
        f"horizon = {sql.greatest(f'{f}.horizon', 'excluded.horizon')}"
    )


def new_customers_sql(source: str) -> str:
    """Facts rows for new customers (``source``: rows with id, created_at)."""
    return (
        f"INSERT INTO customer_facts ({_ALL}) "
        "SELECT id, created_at, NULL, created_at, 0, 0, NULL, NULL, 0, NULL, NULL"
        f" FROM {source} WHERE true ON CONFLICT (customer_id) DO NOTHING"
    )


def _sqlite_triggers(rule: EngagementRule) -> dict[str, str]:
    """Row-level triggers; each runs only when the writing transaction has
    not paused them (``facts_paused``)."""
    when = "WHEN (SELECT paused FROM facts_state WHERE id = 1) IS NOT 1"
    new_row = (
        "(SELECT NEW.customer_id AS customer_id, NEW.kind AS kind,"
        " NEW.occurred_at AS occurred_at, NEW.amount AS amount)"
    )
    old_and_new = "SELECT OLD.customer_id UNION SELECT NEW.customer_id"
    log_columns = {
        "interaction": "customer_id, kind, occurred_at, amount",
        "points_lot": "customer_id, remaining, earned_at, expires_at",
    }
    triggers = {
        "customer_insert": (
            f"AFTER INSERT ON customer {when} BEGIN "
            f"{new_customers_sql('(SELECT NEW.id AS id, NEW.created_at AS created_at)')}; END"
        ),
        "customer_update": (
            f"AFTER UPDATE OF created_at ON customer {when} BEGIN "
            "UPDATE customer_facts SET created_at = NEW.created_at,"
            " last_activity_at = COALESCE(last_engagement_at, NEW.created_at)"
            " WHERE customer_id = NEW.id; END"
        ),
        "interaction_insert": (
            f"AFTER INSERT ON interaction {when} BEGIN "
            f"{merge_interactions_sql('sqlite', rule, new_row)}; END"
        ),
        "points_lot_insert": (
            f"AFTER INSERT ON points_lot {when} BEGIN "
            f"{recompute_sql('sqlite', rule, 'NEW.customer_id')}; END"
        ),
    }
    for table, columns in log_columns.items():
        triggers[f"{table}_update"] = (
            f"AFTER UPDATE OF {columns} ON {table} {when} BEGIN "
            f"{recompute_sql('sqlite', rule, old_and_new)}; END"
        )
        triggers[f"{table}_delete"] = (
            f"AFTER DELETE ON {table} {when} BEGIN "
            f"{recompute_sql('sqlite', rule, 'OLD.customer_id')}; END"
        )
    return {
        _PREFIX + name: f"CREATE TRIGGER {_PREFIX}{name} {body}" for name, body in triggers.items()
    }


def _pg_triggers(rule: EngagementRule) -> dict[str, tuple[str, str]]:
    """Statement-level triggers: name -> (function body SQL, trigger clause)."""
    ids_new = "SELECT customer_id FROM new_rows"
    ids_old = "SELECT customer_id FROM old_rows"
    ids_both = f"{ids_old} UNION {ids_new}"
    invalid = "UPDATE facts_state SET valid = false"
    spec: dict[str, tuple[str, str]] = {
        "customer_insert": (
            new_customers_sql("new_rows"),
            "AFTER INSERT ON customer REFERENCING NEW TABLE AS new_rows",
        ),
        "customer_update": (
            "UPDATE customer_facts f SET created_at = n.created_at,"
            " last_activity_at = COALESCE(f.last_engagement_at, n.created_at)"
            " FROM new_rows n WHERE f.customer_id = n.id"
            " AND f.created_at IS DISTINCT FROM n.created_at",
            "AFTER UPDATE ON customer REFERENCING NEW TABLE AS new_rows",
        ),
        "interaction_insert": (
            merge_interactions_sql("postgresql", rule, "new_rows"),
            "AFTER INSERT ON interaction REFERENCING NEW TABLE AS new_rows",
        ),
        "interaction_update": (
            recompute_sql("postgresql", rule, ids_both),
            "AFTER UPDATE ON interaction REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        ),
        "interaction_delete": (
            recompute_sql("postgresql", rule, ids_old),
            "AFTER DELETE ON interaction REFERENCING OLD TABLE AS old_rows",
        ),
        "interaction_truncate": (invalid, "AFTER TRUNCATE ON interaction"),
        "points_lot_insert": (
            recompute_sql("postgresql", rule, ids_new),
            "AFTER INSERT ON points_lot REFERENCING NEW TABLE AS new_rows",
        ),
        "points_lot_update": (
            recompute_sql("postgresql", rule, ids_both),
            "AFTER UPDATE ON points_lot REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        ),
        "points_lot_delete": (
            recompute_sql("postgresql", rule, ids_old),
            "AFTER DELETE ON points_lot REFERENCING OLD TABLE AS old_rows",
        ),
        "points_lot_truncate": (invalid, "AFTER TRUNCATE ON points_lot"),
    }
    return {_PREFIX + name: value for name, value in spec.items()}


_PG_TABLES = ("customer", "interaction", "points_lot")


def uninstall(conn: Connection) -> None:
    """Drop the facts triggers (and their functions on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        for name in _pg_triggers(DEFAULT_RULE):
            table = next(t for t in _PG_TABLES if name.startswith(_PREFIX + t + "_"))
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")
        return
    for name in installed(conn):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")


def install(conn: Connection, rule: EngagementRule, now: datetime) -> None:
    """(Re)create the triggers for ``rule`` and record it; the facts are
    marked incomplete until ``rebuild`` (in the same transaction, normally)."""
    uninstall(conn)
    if conn.dialect.name == "postgresql":
        for name, (body, clause) in _pg_triggers(rule).items():
            conn.exec_driver_sql(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $engage$ BEGIN"
                " IF current_setting('engage.facts_paused', true) = 'on' THEN RETURN NULL;"
                f" END IF; {body}; RETURN NULL; END $engage$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} {clause} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
            )
    else:
        for ddl in _sqlite_triggers(rule).values():
            conn.exec_driver_sql(ddl)
    _set_state(conn, rule.to_json(), valid=False, now=now)


def _set_state(conn: Connection, engagement: str, *, valid: bool, now: datetime) -> None:
    from .models import FactsState

    table: Table = FactsState.__table__  # type: ignore[assignment]
    values = {"engagement": engagement, "valid": valid, "paused": False, "updated_at": now}
    if conn.execute(table.update().where(table.c.id == 1).values(values)).rowcount == 0:
        conn.execute(table.insert().values(id=1, **values))


def rebuild(conn: Connection, rule: EngagementRule, now: datetime) -> None:
    """Recompute every customer's facts from the log; mark them complete."""
    conn.exec_driver_sql("DELETE FROM customer_facts")
    conn.exec_driver_sql(recompute_sql(conn.dialect.name, rule, None))
    _set_state(conn, rule.to_json(), valid=True, now=now)


def invalidate(conn: Connection, rule: EngagementRule, now: datetime) -> None:
    """Mark the facts incomplete (a bulk load writes without them; ``rebuild`` after)."""
    _set_state(conn, rule.to_json(), valid=False, now=now)


def installed_rule(conn: Connection, current: State | None = None) -> EngagementRule:
    """The rule the facts and triggers follow now (the default when none is);
    ``current``: the state already read."""
    engagement = (current or state(conn)).engagement
    if engagement is None:
        return DEFAULT_RULE
    data = json.loads(engagement)
    only = data.get("only")
    return EngagementRule(None if only is None else tuple(only), tuple(data.get("ignored", ())))


@dataclass(frozen=True)
class State:
    engagement: str | None  # the rule's JSON, None when facts were never installed
    valid: bool


def state(conn: Connection) -> State:
    row = conn.exec_driver_sql("SELECT engagement, valid FROM facts_state WHERE id = 1").first()
    if row is None:
        return State(None, False)
    return State(row[0], bool(row[1]))


def installed(conn: Connection) -> set[str]:
    """Names of the facts triggers present in the database."""
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace"
            f" AND left(t.tgname, {len(_PREFIX)}) = '{_PREFIX}'"
        )
    else:
        rows = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            f" AND substr(name, 1, {len(_PREFIX)}) = '{_PREFIX}'"
        )
    return set(rows.scalars())


def expected_triggers(dialect: str) -> set[str]:
    if dialect == "postgresql":
        return set(_pg_triggers(DEFAULT_RULE))
    return set(_sqlite_triggers(DEFAULT_RULE))


def ensure(conn: Connection, rule: EngagementRule, now: datetime) -> bool:
    """Make the triggers and facts follow ``rule``; True when they had to be
    (re)built (a changed rule, new trigger code, an interrupted bulk load)."""
    current = state(conn)
    triggers_ok = installed(conn) == expected_triggers(conn.dialect.name)
    if current.engagement == rule.to_json() and current.valid and triggers_ok:
        return False
    if current.engagement != rule.to_json() or not triggers_ok:
        install(conn, rule, now)
    rebuild(conn, rule, now)
    return True


@contextmanager
def facts_paused(conn: Connection) -> Iterator[None]:
    """Inside an open transaction: the triggers skip this transaction's writes
    (the caller keeps the facts current itself, or rebuilds them). Other
    transactions are unaffected: PostgreSQL gets a transaction-local setting;
    SQLite (one writer at a time) a flag set and cleared within the
    transaction, so no other connection ever sees it set."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL engage.facts_paused = 'on'")
        yield
        return
    conn.exec_driver_sql("UPDATE facts_state SET paused = 1 WHERE id = 1")
    try:
        yield
    finally:
        conn.exec_driver_sql("UPDATE facts_state SET paused = 0 WHERE id = 1")


def refresh(conn: Connection, rule: EngagementRule, customer_ids: Sequence[str]) -> None:
    """Recompute these customers' facts from the log, in one statement."""
    if not customer_ids:
        return
    value: Any
    if conn.dialect.name == "postgresql":
        ids, value = "SELECT unnest(CAST(:ids AS text[]))", list(customer_ids)
    else:
        ids, value = "SELECT value FROM json_each(:ids)", json.dumps(list(customer_ids))
    conn.execute(text(recompute_sql(conn.dialect.name, rule, ids)), {"ids": value})


def _after_create(target: Any, connection: Connection, **kw: Any) -> None:
    """``metadata.create_all`` (tests, scratch databases) installs the triggers
    too, for the default rule, with empty (so complete) facts."""
    tables = {t.name for t in kw.get("tables") or ()}  # the tables this call created
    if not {"customer", "interaction", "points_lot", "customer_facts", "facts_state"} <= tables:
        return
    from ..timeutil import utcnow

    now = utcnow()
    install(connection, DEFAULT_RULE, now)
    rebuild(connection, DEFAULT_RULE, now)


event.listen(Base.metadata, "after_create", _after_create)
