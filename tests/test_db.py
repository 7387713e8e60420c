from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from engage.db import Base, current_revision, head_revision, make_engine, transaction, upgrade
from engage.db.models import Customer, Interaction


def test_migrations_head_matches_models(db_url: str) -> None:
    eng = make_engine(db_url)
    upgrade(eng)
    assert current_revision(eng) == head_revision()
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    upgrade(eng)  # idempotent
    eng.dispose()


def test_instants_are_utc_aware_and_money_is_decimal(engine) -> None:
    paris = timezone(timedelta(hours=2))
    with transaction(engine) as s:
        s.add(Customer(id="c1", created_at=datetime(2026, 5, 1, 12, 0, tzinfo=paris)))
        s.add(
            Interaction(
                customer_id="c1",
                kind="order",
                occurred_at=datetime(2026, 5, 2, 9, 30),  # naive = UTC
                amount=Decimal("19.99"),
                external_id="o1",
            )
        )
    with transaction(engine) as s:
        c = s.get(Customer, "c1")
        assert c is not None
        assert c.created_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
        assert c.created_at.tzinfo is not None and c.created_at.utcoffset() == timedelta(0)
        i = s.scalars(select(Interaction)).one()
        assert i.occurred_at == datetime(2026, 5, 2, 9, 30, tzinfo=UTC)
        assert i.amount == Decimal("19.99") and isinstance(i.amount, Decimal)
        # comparisons in SQL are chronological on both backends
        n = s.scalar(
            select(Customer.id).where(Customer.created_at > datetime(2026, 5, 1, 11, 0, tzinfo=paris))
        )
        assert n == "c1"


def test_webhook_lookups_by_provider_id_use_its_partial_index(engine) -> None:
    """The index holds only sent messages (migration 0009), and a lookup by the
    provider's id still finds them through it on both backends."""
    from sqlalchemy import text

    sql = "SELECT id FROM message WHERE provider_id = 'SM123' AND channel = 'sms'"
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
    assert "ix_message_provider_id" in plan, plan
