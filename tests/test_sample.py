"""The sample data generator: deterministic, valid contact data, consistent points.

Every test reads the rows back from a real database (SQLite file and
PostgreSQL schema), so the bulk writers are checked along with the generator.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from email_validator import validate_email
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects import sqlite as sqlite_dialect

from engage.db import Base, make_engine
from engage.db.models import (
    Customer,
    Interaction,
    PointsAllocation,
    PointsLot,
    PointsRedemption,
    UTCDateTime,
)
from engage.errors import EngageError
from engage.ingest.sample import REGIONS, TABLES, SampleStats, generate
from engage.timeutil import get_zone

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ZONES_BY_COUNTRY = {r.country: {(z.tz, z.locale) for z in r.zones} for r in REGIONS}


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        assert value.tzinfo is not None, "instants come back timezone-aware"
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def digest(engine: Engine) -> str:
    """A stable hash of every generated row, in primary-key order."""
    h = hashlib.sha256()
    with engine.connect() as conn:
        for table in TABLES:
            for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
                values = {k: _norm(v) for k, v in row._mapping.items()}
                h.update(json.dumps(values, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _sqlite(tmp_path: Path, name: str) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / name}")
    Base.metadata.create_all(eng)
    return eng


@pytest.fixture
def sample(engine: Engine) -> SampleStats:
    return generate(engine, customers=800, seed=7, now=NOW, batch=2_000)


def test_same_seed_gives_identical_rows_whatever_the_batch(
    engine: Engine, tmp_path: Path
) -> None:
    seen: list[SampleStats] = []
    first = generate(engine, customers=300, seed=11, now=NOW, batch=500, progress=seen.append)
    other = _sqlite(tmp_path, "other.db")
    again = generate(other, customers=300, seed=11, now=NOW, batch=97)
    assert digest(engine) == digest(other)
    assert (first.customers, first.interactions, first.lots, first.redemptions) == (
        again.customers, again.interactions, again.lots, again.redemptions,
    )
    assert len(seen) > 1 and seen[-1].customers == 300
    different = _sqlite(tmp_path, "different.db")
    generate(different, customers=300, seed=12, now=NOW)
    assert digest(different) != digest(engine)
    for eng in (other, different):
        eng.dispose()


def test_stats_match_rows_and_counts_are_near_the_means(
    engine: Engine, sample: SampleStats
) -> None:
    with engine.connect() as conn:
        counted = [conn.scalar(select(func.count()).select_from(t)) for t in TABLES]
    assert counted == [sample.customers, sample.interactions, sample.lots,
                       sample.redemptions, sample.allocations]
    assert sample.customers == 800
    assert 8.5 <= sample.interactions / 800 <= 11.5
    assert 1.7 <= sample.lots / 800 <= 2.3
    assert sample.redemptions > 0 and sample.allocations >= sample.redemptions


def test_other_means_are_honoured(engine: Engine) -> None:
    stats = generate(engine, customers=800, now=NOW,
                     interactions_per_customer=3.0, lots_per_customer=0.5)
    assert 2.5 <= stats.interactions / 800 <= 3.5
    assert 0.4 <= stats.lots / 800 <= 0.6


def test_contact_data_is_valid_and_fictional(engine: Engine, sample: SampleStats) -> None:
    with engine.connect() as conn:
        customers = conn.execute(select(Customer.__table__)).all()
    assert len(customers) == 800
    for c in customers:
        country = c.attributes["country"]
        assert (c.timezone, c.locale) in ZONES_BY_COUNTRY[country]
        get_zone(c.timezone)
        assert c.tier in {"bronze", "silver", "gold", "platinum"}
        assert c.created_at <= NOW
        if c.email is not None:
            assert c.email.rsplit("@", 1)[1] in {"example.com", "example.org", "example.net"}
            assert validate_email(c.email, check_deliverability=False).normalized == c.email
        else:
            assert not c.email_opt_in
        if c.phone is not None:
            number = phonenumbers.parse(c.phone)
            assert phonenumbers.is_valid_number(number), c.phone
            assert phonenumbers.format_number(
                number, phonenumbers.PhoneNumberFormat.E164) == c.phone
            assert phonenumbers.region_code_for_number(number) == country
        else:
            assert not c.sms_opt_in
    n = len(customers)
    assert 0.90 <= sum(c.email is not None for c in customers) / n <= 0.99
    assert 0.50 <= sum(c.phone is not None for c in customers) / n <= 0.70
    assert 0.70 <= sum(c.email_opt_in for c in customers) / n <= 0.90
    assert 0.35 <= sum(c.sms_opt_in for c in customers) / n <= 0.55
    assert len({c.email for c in customers if c.email}) == sum(1 for c in customers if c.email)
    assert len({c.timezone for c in customers}) >= 10


def test_interactions_fall_between_sign_up_and_now(engine: Engine, sample: SampleStats) -> None:
    with engine.connect() as conn:
        created = dict(conn.execute(select(Customer.id, Customer.created_at)).tuples().all())
        rows = conn.execute(select(Interaction.__table__)).all()
    kinds = defaultdict(int)
    for i in rows:
        kinds[i.kind] += 1
        assert created[i.customer_id] <= i.occurred_at <= NOW
        assert (i.amount is not None) == (i.kind == "order")
        if i.amount is not None:
            assert i.amount > 0 and i.amount == i.amount.quantize(Decimal("0.01"))
        assert (i.score is not None) == (i.kind == "nps")  # survey answers carry a score
        if i.score is not None:
            assert 0 <= i.score <= 10
    assert set(kinds) == {
        "visit", "order", "email_open", "email_click", "support", "sms_reply", "nps"
    }
    scores = [i.score for i in rows if i.score is not None]
    assert min(scores) <= 6 and max(scores) >= 9  # detractors and promoters both answer
    assert max(kinds, key=kinds.__getitem__) == "visit"
    assert len({i.external_id for i in rows}) == len(rows)


def test_audiences_the_campaigns_need_exist(engine: Engine, sample: SampleStats) -> None:
    """Quiet customers, fresh activity, never-active customers, points expiring
    soon and points already expired: selected in SQL with bound datetimes, which
    also proves the stored instants compare chronologically."""
    c, i, lot = Customer.__table__, Interaction.__table__, PointsLot.__table__
    last = (
        select(func.max(i.c.occurred_at)).where(i.c.customer_id == c.c.id, i.c.kind != "email_open")
        .scalar_subquery()
    )
    activity = func.coalesce(last, c.c.created_at)
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(c))
        quiet = conn.scalar(select(func.count()).where(activity <= NOW - timedelta(days=30)))
        recent = conn.scalar(select(func.count()).where(activity > NOW - timedelta(days=7)))
        never = conn.scalar(select(func.count()).select_from(c).where(
            ~select(i.c.id).where(i.c.customer_id == c.c.id).exists()))
        expiring = conn.scalar(select(func.count(lot.c.customer_id.distinct())).where(
            lot.c.remaining > 0, lot.c.expires_at > NOW,
            lot.c.expires_at <= NOW + timedelta(days=14)))
        expired = conn.scalar(select(func.count()).select_from(lot).where(
            lot.c.remaining > 0, lot.c.expires_at <= NOW))
    assert total == 800
    assert 0.2 * total <= quiet <= 0.6 * total
    assert recent >= 0.2 * total
    assert never >= 0.03 * total
    assert expiring >= 5
    assert expired >= 0.1 * sample.lots


def test_points_follow_fifo_and_remaining_is_consistent(
    engine: Engine, sample: SampleStats
) -> None:
    """Replay every customer's redemptions: each took the oldest lots that were
    earned and not yet expired at the redemption time, and ``remaining`` is what
    the allocations left."""
    with engine.connect() as conn:
        lots = conn.execute(select(PointsLot.__table__).order_by(PointsLot.id)).all()
        redemptions = conn.execute(select(PointsRedemption.__table__)).all()
        allocations = conn.execute(select(PointsAllocation.__table__)).all()
    by_customer: dict[str, list[Any]] = defaultdict(list)
    for lot in lots:
        assert 0 <= lot.remaining <= lot.points and lot.points > 0
        assert lot.expires_at - lot.earned_at in (timedelta(days=365), timedelta(days=180))
        assert lot.earned_at <= NOW
        by_customer[lot.customer_id].append(lot)
    taken: dict[int, dict[int, int]] = defaultdict(dict)
    for a in allocations:
        assert a.points > 0
        taken[a.redemption_id][a.lot_id] = a.points
    left = {lot.id: lot.points for lot in lots}
    for r in sorted(redemptions, key=lambda r: (r.redeemed_at, r.id)):
        assert r.redeemed_at <= NOW
        expected: dict[int, int] = {}
        want = r.points
        usable = [lot for lot in sorted(by_customer[r.customer_id],
                                        key=lambda lot: (lot.earned_at, lot.id))
                  if lot.earned_at <= r.redeemed_at < lot.expires_at and left[lot.id] > 0]
        for lot in usable:
            if want == 0:
                break
            part = min(left[lot.id], want)
            expected[lot.id] = part
            left[lot.id] -= part
            want -= part
        assert want == 0, f"redemption {r.id} exceeds the balance"
        assert taken[r.id] == expected, f"redemption {r.id} is not FIFO"
    assert {lot.id: lot.remaining for lot in lots} == left
    assert any(0 < lot.remaining < lot.points for lot in lots)


def test_refuses_a_database_with_customers(engine: Engine, sample: SampleStats) -> None:
    with pytest.raises(EngageError, match="empty database"):
        generate(engine, customers=10, now=NOW)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Customer.__table__)) == 800


def test_later_inserts_get_fresh_ids(engine: Engine, sample: SampleStats) -> None:
    """Explicit ids must not leave PostgreSQL's sequences behind."""
    with engine.begin() as conn:
        new_id = conn.execute(
            insert(Interaction.__table__).returning(Interaction.id),
            {"customer_id": "c0000001", "kind": "visit", "occurred_at": NOW, "attributes": {},
             "external_id": "later-1", "created_at": NOW},
        ).scalar_one()
    assert new_id == sample.interactions + 1


def test_sqlite_instants_are_stored_as_sqlalchemy_would(tmp_path: Path) -> None:
    eng = _sqlite(tmp_path, "raw.db")
    generate(eng, customers=20, now=NOW)
    dialect = sqlite_dialect.dialect()
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    with eng.connect() as conn:
        raw = conn.exec_driver_sql("SELECT created_at FROM customer ORDER BY id").scalars().all()
        typed = conn.execute(select(Customer.created_at).order_by(Customer.id)).scalars().all()
    assert raw == [process(value) for value in typed]
    eng.dispose()


def test_responses_follow_the_sends_and_favour_recipients() -> None:
    from engage.ingest.sample import RESPONSE_RATES, responses

    sent = NOW - timedelta(days=10)
    members = [("c", f"r{k}", sent, False) for k in range(2000)]
    members += [("c", f"h{k}", sent, True) for k in range(2000)]
    window = timedelta(days=7)
    rows = responses(members, now=NOW, window=window, seed=3)
    assert rows == responses(members, now=NOW, window=window, seed=3)  # reproducible
    assert len({r["external_id"] for r in rows}) == len(rows)
    for r in rows:
        at = datetime.fromisoformat(r["occurred_at"])
        assert sent <= at < sent + window and r["kind"] == "order" and Decimal(r["amount"]) > 0
    recipients = sum(r["customer_id"].startswith("r") for r in rows) / 2000
    holdout = sum(r["customer_id"].startswith("h") for r in rows) / 2000
    assert abs(recipients - RESPONSE_RATES[False]) < 0.03
    assert abs(holdout - RESPONSE_RATES[True]) < 0.03
    # a send whose window is still open only gets orders until now
    late = responses([("c", "x", NOW - timedelta(hours=1), False)] * 50, now=NOW, window=window)
    assert all(datetime.fromisoformat(r["occurred_at"]) <= NOW for r in late)
def test_generated_data_has_its_indexes_and_current_facts(
    engine: Engine, sample: SampleStats
) -> None:
    """The generator loads as a first full load (indexes and facts built at
    the end): afterwards nothing is missing and the facts are the log's."""
    from engage.db import facts
    from engage.db.load import missing_indexes
    from engage.ingest.loading import FIRST_LOAD_TABLES
    from tests.test_facts import recomputed, snapshot

    with engine.connect() as conn:
        assert facts.state(conn).valid
        assert not missing_indexes(conn, list(FIRST_LOAD_TABLES.values()))
    got = snapshot(engine)
    assert len(got) == sample.customers
    assert got == recomputed(engine)
