"""Every audience condition against a hand-checked data set, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from engage.campaigns.audience import count_audience, stream_audience
from engage.campaigns.schema import Audience
from engage.config import Config
from engage.db.models import Customer, Interaction, PointsLot
from engage.timeutil import parse_instant

AS_OF = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
D = timedelta(days=1)


def aud(**kw: Any) -> Audience:
    return Audience.model_validate(kw)


class World:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._n = 0

    def customer(self, cid: str, created: datetime = AS_OF - 400 * D, **kw: Any) -> str:
        with self.engine.begin() as conn:
            conn.execute(
                insert(Customer),
                [{"id": cid, "created_at": created, "attributes": kw.pop("attributes", {}), **kw}],
            )
        return cid

    def act(self, cid: str, when: datetime, kind: str = "visit", amount: str | None = None) -> None:
        self._n += 1
        with self.engine.begin() as conn:
            conn.execute(
                insert(Interaction),
                [
                    {
                        "customer_id": cid,
                        "kind": kind,
                        "occurred_at": when,
                        "amount": Decimal(amount) if amount else None,
                        "attributes": {},
                        "external_id": f"x{self._n}",
                    }
                ],
            )

    def lot(
        self,
        cid: str,
        points: int,
        earned: datetime,
        expires: datetime,
        remaining: int | None = None,
    ) -> None:
        self._n += 1
        with self.engine.begin() as conn:
            conn.execute(
                insert(PointsLot),
                [
                    {
                        "customer_id": cid,
                        "points": points,
                        "remaining": points if remaining is None else remaining,
                        "earned_at": earned,
                        "expires_at": expires,
                        "external_id": f"p{self._n}",
                    }
                ],
            )


def ids(
    engine: Engine, audience: Audience, as_of: datetime = AS_OF, config: Config | None = None
) -> set[str]:
    cfg = config or Config()
    found = {
        r.customer_id for batch in stream_audience(engine, audience, cfg, as_of) for r in batch
    }
    assert count_audience(engine, audience, cfg, as_of) == len(found)
    return found


@pytest.fixture
def world(engine: Engine) -> World:
    return World(engine)


def test_quiet_for_boundaries(world: World, engine: Engine) -> None:
    w = world
    w.act(w.customer("exactly30"), AS_OF - 30 * D, "order", "10")
    w.act(w.customer("almost30"), AS_OF - 30 * D + timedelta(seconds=1))
    w.customer("none_old", created=AS_OF - 40 * D)  # no interactions: created_at counts
    w.customer("none_new", created=AS_OF - 10 * D)
    w.customer("future", created=AS_OF + D)  # did not exist yet
    c = w.customer("opens_only")
    w.act(c, AS_OF - 60 * D, "order", "5")
    w.act(c, AS_OF - 1 * D, "email_open")  # opens are not engagement by default
    c = w.customer("later_activity")
    w.act(c, AS_OF - 60 * D)
    w.act(c, AS_OF + 1 * D)  # after the as-of instant: ignored
    assert ids(engine, aud(quiet_for="30d")) == {
        "exactly30",
        "none_old",
        "opens_only",
        "later_activity",
    }
    # a day later, almost30 has gone quiet too; later_activity is active again
    assert ids(engine, aud(quiet_for="P30D"), AS_OF + 2 * D) == {
        "exactly30",
        "none_old",
        "opens_only",
        "almost30",
    }
    # engagement_kinds from config: counting opens makes opens_only active
    cfg = Config(ignored_kinds=[])
    assert "opens_only" not in ids(engine, aud(quiet_for="30d"), config=cfg)
    cfg = Config(engagement_kinds=["order"])
    assert ids(engine, aud(quiet_for="30d"), config=cfg) == {
        "exactly30",
        "none_old",
        "opens_only",
        "later_activity",
        "almost30",
    }


def test_active_within_and_orders(world: World, engine: Engine) -> None:
    w = world
    c = w.customer("two_orders")
    w.act(c, AS_OF - 100 * D, "order", "30.00")
    w.act(c, AS_OF - 50 * D, "order", "20.50")
    c = w.customer("one_order_old")
    w.act(c, AS_OF - 365 * D, "order", "100")  # exactly 365 days: still within
    c = w.customer("one_order_ancient")
    w.act(c, AS_OF - 366 * D, "order", "100")
    w.customer("no_orders", created=AS_OF - 500 * D)
    c = w.customer("after")
    w.act(c, AS_OF + D, "order", "999")
    assert ids(engine, aud(active_within="365d")) == {"two_orders", "one_order_old"}
    assert ids(engine, aud(min_orders=1)) == {"two_orders", "one_order_old", "one_order_ancient"}
    assert ids(engine, aud(min_orders=2)) == {"two_orders"}
    assert ids(engine, aud(max_orders=0)) == {"no_orders", "after"}
    assert ids(engine, aud(min_orders=1, max_orders=1)) == {"one_order_old", "one_order_ancient"}
    assert ids(engine, aud(min_lifetime_value="50.50")) == {
        "two_orders",
        "one_order_old",
        "one_order_ancient",
    }
    assert ids(engine, aud(min_lifetime_value="50.51")) == {"one_order_old", "one_order_ancient"}
    assert ids(engine, aud(last_order_within="50d")) == {"two_orders"}
    assert ids(engine, aud(last_order_within="49d")) == set()
    assert ids(engine, aud(quiet_for="30d", active_within="365d", min_orders=1)) == {
        "two_orders",
        "one_order_old",
    }


def test_points_expiring_balance_and_expired_lots(world: World, engine: Engine) -> None:
    w = world
    c = w.customer("expiring")
    w.lot(c, 100, AS_OF - 300 * D, AS_OF + 10 * D)
    w.lot(c, 500, AS_OF - 100 * D, AS_OF + 200 * D)
    c = w.customer("boundary14")
    w.lot(c, 150, AS_OF - 300 * D, AS_OF + 14 * D)  # exactly 14 days: within
    c = w.customer("later")
    w.lot(c, 300, AS_OF - 300 * D, AS_OF + 20 * D)
    c = w.customer("expired")
    w.lot(c, 400, AS_OF - 400 * D, AS_OF - 1 * D)  # already expired: counts for nothing
    c = w.customer("redeemed")
    w.lot(c, 200, AS_OF - 300 * D, AS_OF + 5 * D, remaining=0)  # fully redeemed
    w.lot(c, 80, AS_OF - 200 * D, AS_OF + 6 * D, remaining=30)
    c = w.customer("not_yet_earned")
    w.lot(c, 100, AS_OF + D, AS_OF + 10 * D)
    assert ids(engine, aud(points_expiring_within="14d")) == {"expiring", "boundary14", "redeemed"}
    assert ids(engine, aud(points_expiring_within="14d", min_expiring_points=100)) == {
        "expiring",
        "boundary14",
    }
    assert ids(engine, aud(points_expiring_within="2w", min_expiring_points=31)) == {
        "expiring",
        "boundary14",
    }
    assert ids(engine, aud(min_points_balance=300)) == {"expiring", "later"}
    assert ids(engine, aud(min_points_balance=1)) == {"expiring", "boundary14", "later", "redeemed"}
    # the recipient facts agree with the hand count
    recipients = {
        r.customer_id: r
        for batch in stream_audience(engine, aud(points_expiring_within="14d"), Config(), AS_OF)
        for r in batch
    }
    assert recipients["expiring"].points.balance == 600
    assert recipients["expiring"].points.expiring == 100
    assert recipients["expiring"].points.next_expiry == AS_OF + 10 * D
    assert recipients["redeemed"].points.balance == 30
    assert recipients["redeemed"].points.next_expiry == AS_OF + 6 * D
    # after the first lot expired, only the long-lived lot is left
    later = AS_OF + 11 * D
    assert "expiring" not in ids(engine, aud(points_expiring_within="14d"), later)
    assert "expiring" in ids(engine, aud(min_points_balance=500), later)


def test_tiers_where_signup(world: World, engine: Engine) -> None:
    w = world
    w.customer("us_gold", tier="gold", attributes={"country": "US", "vip": True, "age": 41})
    w.customer("ca_silver", tier="silver", attributes={"country": "CA", "vip": False, "age": 30})
    w.customer("fr_gold", tier="gold", attributes={"country": "FR"})
    w.customer("no_tier", created=AS_OF - 3 * D)
    assert ids(engine, aud(tiers=["gold", "silver"])) == {"us_gold", "ca_silver", "fr_gold"}
    assert ids(engine, aud(where={"country": ["US", "CA"]})) == {"us_gold", "ca_silver"}
    assert ids(engine, aud(where={"country": "FR"}, tiers=["gold"])) == {"fr_gold"}
    assert ids(engine, aud(where={"vip": True})) == {"us_gold"}
    assert ids(engine, aud(where={"age": [41, 42]})) == {"us_gold"}
    assert ids(engine, aud(where={"missing": "x"})) == set()
    assert ids(engine, aud(signed_up_within="7d")) == {"no_tier"}
    assert ids(engine, aud()) == {"us_gold", "ca_silver", "fr_gold", "no_tier"}


def test_at_is_local_midnight_in_config_zone(world: World, engine: Engine) -> None:
    """``--at 2026-06-15`` in New York is 04:00 UTC; the 30-day boundary moves with it."""
    ny = Config(timezone="America/New_York")
    at = parse_instant("2026-06-15", ny.zone)
    assert at == datetime(2026, 6, 15, 4, 0, tzinfo=UTC)
    w = world
    w.act(w.customer("ny_edge"), at - 30 * D)
    w.act(w.customer("ny_after"), at - 30 * D + timedelta(minutes=1))
    assert ids(engine, aud(quiet_for="30d"), at, ny) == {"ny_edge"}
    tokyo = parse_instant("2026-06-15T09:00:00+09:00")
    assert tokyo == datetime(2026, 6, 15, 0, 0, tzinfo=UTC)


def test_audience_is_streamed_in_batches(world: World, engine: Engine) -> None:
    for n in range(25):
        world.customer(f"c{n:03d}")
    batches = list(stream_audience(engine, aud(), Config(), AS_OF, batch=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [r.customer_id for b in batches for r in b] == sorted(f"c{n:03d}" for n in range(25))
    limited = list(stream_audience(engine, aud(), Config(), AS_OF, limit=3))
    assert sum(len(b) for b in limited) == 3


def test_where_keeps_json_types_apart(world: World, engine: Engine) -> None:
    """docs/campaigns.md: "3" is not 3, and true is not 1, on both backends
    (PostgreSQL's ->> read 3 and "3" alike; SQLite's json_extract reads true
    as 1); and a cached statement never answers for other values."""
    w = world
    w.customer("num", attributes={"n": 3, "flag": True, "code": 1})
    w.customer("text", attributes={"n": "3", "flag": "true", "code": "x"})
    w.customer("int_flag", attributes={"n": 3.0, "flag": 1, "code": 2})
    assert ids(engine, aud(where={"n": 3})) == {"num", "int_flag"}  # 3.0 is the number 3
    assert ids(engine, aud(where={"n": "3"})) == {"text"}
    assert ids(engine, aud(where={"flag": True})) == {"num"}
    assert ids(engine, aud(where={"flag": False})) == set()
    assert ids(engine, aud(where={"flag": 1})) == {"int_flag"}
    assert ids(engine, aud(where={"code": [1, "x"]})) == {"num", "text"}
    assert ids(engine, aud(where={"code": [2]})) == {"int_flag"}
