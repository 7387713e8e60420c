"""customer_facts stays equal to a recomputation from the log, whoever writes.

The triggers of ``engage.db.facts`` run on plain SQL writes (a shop's own
system writing the documented tables), on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from engage.config import Config
from engage.customers.facts import ensure_facts, rule_of
from engage.db import facts, make_engine, upgrade
from engage.db.models import Customer, CustomerFacts, FactsState, Interaction, PointsLot

T0 = datetime(2026, 1, 1, tzinfo=UTC)
D = timedelta(days=1)
KINDS = ("order", "visit", "email_open", "support")


def snapshot(engine: Engine) -> list[dict[str, Any]]:
    t = CustomerFacts.__table__
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t).order_by(t.c.customer_id)).mappings()]


def recomputed(
    engine: Engine, rule: facts.EngagementRule = facts.DEFAULT_RULE
) -> list[dict[str, Any]]:
    """What a rebuild from the log gives (rolled back: the stored facts stay)."""
    t = CustomerFacts.__table__
    with engine.connect() as conn, conn.begin() as tx:
        facts.rebuild(conn, rule, T0)
        rows = [dict(r) for r in conn.execute(select(t).order_by(t.c.customer_id)).mappings()]
        tx.rollback()
    return rows


def random_writes(engine: Engine, rng: random.Random, steps: int = 60) -> None:
    c, i, p = Customer.__table__, Interaction.__table__, PointsLot.__table__
    customers: list[str] = []
    events: list[str] = []
    lots: list[str] = []
    for n in range(steps):
        op = rng.random()
        with engine.begin() as conn:
            if op < 0.15 or len(customers) < 3:
                cid = f"c{n}"
                conn.execute(
                    insert(c),
                    [{"id": cid, "created_at": T0 - rng.randint(0, 99) * D, "attributes": {}}],
                )
                customers.append(cid)
            elif op < 0.45:  # several interactions in one statement
                rows = []
                for _ in range(rng.randint(1, 4)):
                    kind = rng.choice(KINDS)
                    ext = f"e{n}-{len(rows)}"
                    rows.append({
                        "customer_id": rng.choice(customers), "kind": kind,
                        "occurred_at": T0 + rng.randint(-50, 50) * D,
                        "amount": Decimal(rng.randint(0, 9999)) / 100 if kind == "order" else None,
                        "attributes": {}, "external_id": ext,
                    })  # fmt: skip
                    events.append(ext)
                conn.execute(insert(i), rows)
            elif op < 0.55 and events:
                ext = rng.choice(events)
                change = rng.choice(("kind", "customer_id", "occurred_at", "amount"))
                value = {
                    "kind": rng.choice(KINDS),
                    "customer_id": rng.choice(customers),
                    "occurred_at": T0 + rng.randint(-60, 60) * D,
                    "amount": Decimal(rng.randint(0, 500)),
                }[change]
                conn.execute(update(i).where(i.c.external_id == ext).values({change: value}))
            elif op < 0.62 and events:
                ext = events.pop(rng.randrange(len(events)))
                conn.execute(delete(i).where(i.c.external_id == ext))
            elif op < 0.75:
                ext = f"l{n}"
                earned = T0 + rng.randint(-400, 30) * D
                points = rng.randint(1, 300)
                conn.execute(insert(p), [{
                    "customer_id": rng.choice(customers), "points": points,
                    "remaining": rng.choice((0, points, points // 2)), "earned_at": earned,
                    "expires_at": earned + 365 * D, "external_id": ext,
                }])  # fmt: skip
                lots.append(ext)
            elif op < 0.83 and lots:
                conn.execute(
                    update(p)
                    .where(p.c.external_id == rng.choice(lots))
                    .values(remaining=rng.randint(0, 50))
                )
            elif op < 0.86 and lots:
                conn.execute(delete(p).where(p.c.external_id == lots.pop()))
            elif op < 0.94:
                conn.execute(
                    update(c)
                    .where(c.c.id == rng.choice(customers))
                    .values(created_at=T0 - rng.randint(0, 200) * D)
                )
            else:
                gone = customers.pop(rng.randrange(len(customers)))
                conn.execute(delete(c).where(c.c.id == gone))
                events[:] = [e for e in events if _exists(conn, e)]
                lots[:] = [lot for lot in lots if _lot_exists(conn, lot)]


def _exists(conn: Any, ext: str) -> bool:
    i = Interaction.__table__
    return conn.execute(select(i.c.id).where(i.c.external_id == ext)).first() is not None


def _lot_exists(conn: Any, ext: str) -> bool:
    p = PointsLot.__table__
    return conn.execute(select(p.c.id).where(p.c.external_id == ext)).first() is not None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_triggers_keep_facts_equal_to_a_rebuild(engine: Engine, seed: int) -> None:
    random_writes(engine, random.Random(seed))
    got = snapshot(engine)
    assert got == recomputed(engine)
    assert len(got) >= 3 and any(r["orders"] for r in got) and any(r["points_left"] for r in got)


def test_facts_read_as_the_definitions(engine: Engine) -> None:
    c, i, p = Customer.__table__, Interaction.__table__, PointsLot.__table__
    with engine.begin() as conn:
        conn.execute(
            insert(c),
            [
                {"id": "a", "created_at": T0, "attributes": {}},
                {"id": "b", "created_at": T0, "attributes": {}},
            ],
        )
        conn.execute(insert(i), [
            {"customer_id": "a", "kind": "order", "occurred_at": T0 + D, "amount": Decimal("0.10"),
             "attributes": {}, "external_id": "1"},
            {"customer_id": "a", "kind": "order", "occurred_at": T0 + 3 * D,
             "amount": Decimal("0.20"), "attributes": {}, "external_id": "2"},
            {"customer_id": "a", "kind": "email_open", "occurred_at": T0 + 9 * D, "amount": None,
             "attributes": {}, "external_id": "3"},
        ])  # fmt: skip
        conn.execute(insert(p), [
            {"customer_id": "a", "points": 50, "remaining": 20, "earned_at": T0,
             "expires_at": T0 + 30 * D, "external_id": "l1"},
            {"customer_id": "a", "points": 50, "remaining": 0, "earned_at": T0 + 20 * D,
             "expires_at": T0 + 40 * D, "external_id": "l2"},
        ])  # fmt: skip
    a, b = snapshot(engine)
    assert (a["last_engagement_at"], a["last_activity_at"]) == (T0 + 3 * D, T0 + 3 * D)
    assert (a["orders"], a["lifetime_cents"]) == (2, 30)  # exact cents, on SQLite too
    assert (a["first_order_at"], a["last_order_at"]) == (T0 + D, T0 + 3 * D)
    assert (a["points_left"], a["points_next_expiry"]) == (20, T0 + 30 * D)
    assert a["horizon"] == T0 + 9 * D  # the open counts: it is recorded, if not engagement
    assert (b["last_engagement_at"], b["last_activity_at"], b["horizon"]) == (None, T0, None)
    assert (b["orders"], b["lifetime_cents"], b["points_left"]) == (0, 0, 0)


def test_a_paused_transaction_leaves_facts_to_its_writer(engine: Engine) -> None:
    c = Customer.__table__
    with engine.begin() as conn, facts.facts_paused(conn):
        conn.execute(insert(c), [{"id": "quiet", "created_at": T0, "attributes": {}}])
    with engine.begin() as conn:  # the flag does not outlive its transaction
        conn.execute(insert(c), [{"id": "loud", "created_at": T0, "attributes": {}}])
    assert [r["customer_id"] for r in snapshot(engine)] == ["loud"]
    with engine.connect() as conn:
        paused = conn.execute(select(FactsState.__table__.c.paused)).scalar_one()
    assert not paused


def test_another_rule_rebuilds_the_facts_and_triggers(engine: Engine) -> None:
    c, i = Customer.__table__, Interaction.__table__
    with engine.begin() as conn:
        conn.execute(insert(c), [{"id": "a", "created_at": T0, "attributes": {}}])
        conn.execute(
            insert(i),
            [
                {
                    "customer_id": "a",
                    "kind": "email_open",
                    "occurred_at": T0 + D,
                    "attributes": {},
                    "external_id": "1",
                }
            ],
        )
    assert snapshot(engine)[0]["last_engagement_at"] is None
    opens = Config(ignored_kinds=[])
    assert ensure_facts(engine, opens, T0) is True
    assert snapshot(engine)[0]["last_engagement_at"] == T0 + D
    assert ensure_facts(engine, opens, T0) is False  # nothing to do the second time
    with engine.begin() as conn:  # the triggers follow the new rule
        conn.execute(
            insert(i),
            [
                {
                    "customer_id": "a",
                    "kind": "email_open",
                    "occurred_at": T0 + 2 * D,
                    "attributes": {},
                    "external_id": "2",
                }
            ],
        )
    assert snapshot(engine)[0]["last_engagement_at"] == T0 + 2 * D
    assert snapshot(engine) == recomputed(engine, rule_of(opens))


def test_migration_fills_facts_from_an_existing_log(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(eng, "0002")
    with eng.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO customer (id, created_at, updated_at, attributes, email_opt_in,"
            " sms_opt_in) VALUES ('a', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000',"
            " '{}', 1, 0)"
        )
        conn.exec_driver_sql(
            "INSERT INTO interaction (customer_id, kind, occurred_at, amount, attributes,"
            " external_id, created_at) VALUES ('a', 'order', '2026-02-01 00:00:00.000000', 12.5,"
            " '{}', 'x', '2026-02-01 00:00:00.000000')"
        )
    upgrade(eng)
    (row,) = snapshot(eng)
    assert (row["orders"], row["lifetime_cents"]) == (1, 1250)
    assert row["last_activity_at"] == datetime(2026, 2, 1, tzinfo=UTC)
    with eng.connect() as conn:
        assert facts.installed(conn) == facts.expected_triggers("sqlite")
    from alembic import command

    from engage.db import _alembic_config

    command.downgrade(_alembic_config(eng), "0002")  # and back
    with eng.connect() as conn:
        assert facts.installed(conn) == set()
    eng.dispose()


def test_imports_keep_the_rule_the_facts_follow(engine: Engine) -> None:
    """A config with another engagement rule does not make an import rebuild
    anything: the facts keep their rule (audiences read the log meanwhile)
    until ensure_facts (engage db upgrade) applies the new one."""
    from engage.customers.facts import facts_usable
    from engage.ingest import import_rows

    opens = Config(ignored_kinds=[])
    import_rows(engine, opens, "customers", [(1, {"id": "a", "created_at": "2026-01-01"})])
    import_rows(
        engine,
        opens,
        "interactions",
        [(1, {"customer_id": "a", "kind": "email_open", "occurred_at": "2026-01-05"})],
    )
    (row,) = snapshot(engine)
    assert row["last_engagement_at"] is None  # the default rule: an open is no engagement
    with engine.connect() as conn:
        assert facts.installed_rule(conn) == facts.DEFAULT_RULE
        assert not facts_usable(conn, opens, T0 + 30 * D)
    assert snapshot(engine) == recomputed(engine)
    ensure_facts(engine, opens, T0)
    assert snapshot(engine)[0]["last_engagement_at"] == T0 + 4 * D


def test_per_customer_order_probes_search_by_customer_on_sqlite(tmp_path: Path) -> None:
    """SQLite has no statistics: given the report's covering (kind, occurred_at,
    customer_id, amount) index it scanned every order of the log for each
    recipient's lifetime value (236 s for 2,000 recipients at 1M customers).
    The query plan must probe each customer's own rows instead."""
    import sqlite3

    from engage.campaigns.audience import audience_ids
    from engage.campaigns.schema import Audience
    from engage.customers.recipients import recipients_query

    from .helpers import make_config

    path = tmp_path / "plan.db"
    upgrade(make_engine(f"sqlite:///{path}"))
    config = make_config(tmp_path)
    at = datetime(2026, 3, 1, tzinfo=UTC)
    audience = Audience.model_validate(
        {"min_lifetime_value": 100, "min_orders": 2, "last_order_within": "90d"}
    )
    queries = [
        recipients_query(config, at, customer_ids=["c1", "c2"]),
        audience_ids(audience, config, at, facts=False),
    ]
    with sqlite3.connect(path) as db:
        for q in queries:
            sql = str(
                q.compile(
                    dialect=make_engine("sqlite://").dialect, compile_kwargs={"literal_binds": True}
                )
            )
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
            assert any("SUBQUERY" in line for line in plan), plan
            assert not any("ix_interaction_kind_occurred" in line for line in plan), plan
