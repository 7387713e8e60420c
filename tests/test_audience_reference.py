"""The compiled audience against a plain Python reading of SPEC §2 and §3.

A seeded random shop (customers signed up before and after the instant,
orders, visits, opens, interactions after the instant) is loaded into the
database; every audience below is selected by SQL and by the reference, on
SQLite and PostgreSQL. The audience compiler rewrites conditions into index
probes and drops the branches an audience already decides (an audience that
requires an order has engaged customers only, when orders count as
engagement); this holds those rewrites to the definitions.

Audiences have two readings: the interaction log, at any instant, and
``customer_facts``, at instants after everything recorded. Both are held to
the reference and to each other on several random shops, at an instant in
the shop's past (where only the log may answer) and one after all its data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from engage.campaigns.audience import audience_ids, count_audience, stream_audience
from engage.campaigns.schema import Audience
from engage.config import Config
from engage.customers.facts import FACTS, LOG, SPLIT, ensure_facts, facts_reading, facts_usable
from engage.customers.recipients import load_recipients
from engage.db.models import Customer, Interaction, PointsLot

AS_OF = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
D = timedelta(days=1)
LATER = AS_OF + 30 * D  # after every event and lot of the random shops
KINDS = ("order", "visit", "email_open", "support")
TIERS = ("bronze", "silver", "gold")


@dataclass
class Shopper:
    id: str
    created: datetime
    tier: str
    events: list[tuple[str, datetime, Decimal | None]] = field(default_factory=list)
    lots: list[tuple[int, int, datetime, datetime]] = field(default_factory=list)  # points, left
    attributes: dict[str, Any] = field(default_factory=dict)
    email_opt_in: bool = True
    answers: list[tuple[datetime, int | None]] = field(default_factory=list)  # kind nps

    @property
    def activity(self) -> list[tuple[str, datetime, Decimal | None]]:
        """Every interaction: the events and the survey answers (kind nps)."""
        return self.events + [("nps", when, None) for when, _ in self.answers]


def make_shop(rng: random.Random, n: int = 160) -> list[Shopper]:
    shop = []
    for k in range(n):
        s = Shopper(f"c{k:04d}", AS_OF - rng.uniform(-20, 800) * D, rng.choice(TIERS))
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5, 8))):
            kind = rng.choice(KINDS)
            when = max(s.created, AS_OF - rng.uniform(-10, 700) * D)
            amount = Decimal(rng.randint(0, 9000)) / 100 if kind == "order" else None
            s.events.append((kind, when, amount))
        for _ in range(rng.choice((0, 1, 2))):
            points = rng.randint(1, 500)
            earned = AS_OF - rng.uniform(-5, 400) * D
            s.lots.append((points, rng.choice((0, points, points // 2)), earned, earned + 365 * D))
        s.attributes = rng.choice(({}, {"country": "US"}, {"vip": True, "n": 3, "name": "Zoë"}))
        s.email_opt_in = rng.random() < 0.8
        shop.append(s)
    return shop


def add_answers(shop: list[Shopper], rng: random.Random) -> None:
    """Survey answers (own random stream: the rest of the shop stays as it was),
    some on the nps_within boundaries, some at the same instant (the later row
    is the latest), some after the instant, some without a valid score."""
    for s in shop:
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            when = AS_OF - rng.choice((rng.uniform(-10, 500), 180, 30, 0)) * D
            score = rng.choice((*range(11), None, 11, -1)) if rng.random() < 0.1 else rng.randint(0, 10)
            s.answers.append((when, score))
            if rng.random() < 0.1:  # a second answer at the same instant
                s.answers.append((when, rng.randint(0, 10)))


def latest_score(s: Shopper, since: datetime, as_of: datetime = AS_OF) -> int | None:
    """The score of the last valid answer in [since, as_of] (rows in insertion order)."""
    valid = [(t, n, score) for n, (t, score) in enumerate(s.answers)
             if since <= t <= as_of and score is not None and 0 <= score <= 10]
    return max(valid)[2] if valid else None


def engaged_kinds(config: Config) -> set[str]:
    if config.engagement_kinds is not None:
        return set(config.engagement_kinds)
    return {k for k in (*KINDS, "nps") if k not in config.ignored_kinds}


def reference(
    shop: list[Shopper], a: Audience, config: Config, as_of: datetime = AS_OF
) -> set[str]:
    """SPEC §2: last activity is the latest engagement, else the sign-up."""
    kinds = engaged_kinds(config)
    out = set()
    for s in shop:
        if s.created > as_of:
            continue
        seen = [(k, t, amt) for k, t, amt in s.activity if t <= as_of]
        engagements = [t for k, t, _ in seen if k in kinds]
        last = max(engagements, default=s.created)
        orders = [(t, amt) for k, t, amt in seen if k == "order"]
        ltv = sum((amt for _, amt in orders if amt is not None), Decimal(0))
        live = [
            (left, exp) for _, left, earned, exp in s.lots if earned <= as_of < exp and left > 0
        ]
        balance = sum(left for left, _ in live)
        nps = latest_score(s, as_of - (a.nps_within or timedelta(days=180)), as_of)
        checks = [
            a.quiet_for is None or last <= as_of - a.quiet_for,
            a.active_within is None or last >= as_of - a.active_within,
            a.min_orders is None or len(orders) >= a.min_orders,
            a.max_orders is None or len(orders) <= a.max_orders,
            a.min_lifetime_value is None or ltv >= a.min_lifetime_value,
            a.last_order_within is None or any(t >= as_of - a.last_order_within for t, _ in orders),
            a.tiers is None or s.tier in a.tiers,
            a.signed_up_within is None or s.created >= as_of - a.signed_up_within,
            a.points_expiring_within is None
            or sum(left for left, exp in live if exp <= as_of + a.points_expiring_within)
            >= (a.min_expiring_points or 1),
            not a.min_points_balance or balance >= a.min_points_balance,
            not a.where or all(s.attributes.get(k) == v for k, v in a.where.items()),
            a.nps_at_most is None or (nps is not None and nps <= a.nps_at_most),
            a.nps_at_least is None or (nps is not None and nps >= a.nps_at_least),
        ]
        if all(checks):
            out.add(s.id)
    return out


def load(engine: Engine, shop: list[Shopper]) -> None:
    customers = [
        {
            "id": s.id,
            "created_at": s.created,
            "tier": s.tier,
            "attributes": s.attributes,
            "email": f"{s.id}@example.com",
            "email_opt_in": s.email_opt_in,
        }
        for s in shop
    ]
    lots = [
        {
            "customer_id": s.id,
            "points": points,
            "remaining": left,
            "earned_at": earned,
            "expires_at": expires,
            "external_id": f"{s.id}-lot{n}",
        }
        for s in shop
        for n, (points, left, earned, expires) in enumerate(s.lots)
    ]
    events: list[dict[str, Any]] = [
        {
            "customer_id": s.id,
            "kind": kind,
            "occurred_at": when,
            "amount": amount,
            "attributes": {},
            "external_id": f"{s.id}-{n}",
        }
        for s in shop
        for n, (kind, when, amount) in enumerate(s.events)
    ]
    events += [
        {
            "customer_id": s.id,
            "kind": "nps",
            "occurred_at": when,
            "score": score,
            "attributes": {},
            "external_id": f"{s.id}-nps{n}",
        }
        for s in shop
        for n, (when, score) in enumerate(s.answers)
    ]
    for e in events:
        e.setdefault("amount", None)
        e.setdefault("score", None)
    with engine.begin() as conn:
        conn.execute(insert(Customer), customers)
        conn.execute(insert(Interaction), events)
        conn.execute(insert(PointsLot), lots)


AUDIENCES: list[dict[str, Any]] = [
    {"quiet_for": "30d"},
    {"quiet_for": "90d", "min_orders": 1},
    {"active_within": "365d"},
    {"active_within": "200d", "min_orders": 1},
    {"quiet_for": "30d", "active_within": "365d"},
    {"quiet_for": "30d", "active_within": "365d", "min_orders": 1, "tiers": ["silver", "gold"]},
    {"quiet_for": "60d", "active_within": "400d", "min_orders": 2},
    {"quiet_for": "30d", "active_within": "500d", "last_order_within": "300d"},
    {"quiet_for": "45d", "min_lifetime_value": "40"},
    {"quiet_for": "30d", "min_lifetime_value": "0.004"},  # less than a cent is still > 0
    {"active_within": "365d", "min_lifetime_value": "12.345"},
    {"active_within": "120d", "min_lifetime_value": "0"},
    {"quiet_for": "30d", "active_within": "365d", "max_orders": 0},
    {"quiet_for": "10d", "active_within": "100d", "min_orders": 1, "max_orders": 2},
    {"min_points_balance": 100},
    {"quiet_for": "20d", "min_points_balance": 1},
    {"points_expiring_within": "120d", "min_expiring_points": 50},
    {"signed_up_within": "200d", "quiet_for": "7d"},
    {"where": {"vip": True, "n": 3}, "active_within": "400d"},
    {"tiers": ["gold"], "last_order_within": "60d", "min_lifetime_value": "20.01"},
    {"nps_at_most": 6},  # detractors, within the default 180 days
    {"nps_at_least": 9, "nps_within": "400d"},  # promoters
    {"nps_at_least": 7, "nps_at_most": 8, "nps_within": "30d"},  # passives, recently
    {"quiet_for": "30d", "nps_at_most": 6, "nps_within": "365d"},
    {"nps_at_least": 0, "nps_within": "180d"},  # anyone who answered
]
CONFIGS = {
    "default": Config(),
    "opens_count": Config(ignored_kinds=[]),
    "orders_are_not_engagement": Config(engagement_kinds=["visit", "support"]),
}


def boundary_shoppers(at: datetime) -> list[Shopper]:
    """Customers exactly on the thresholds of ``AUDIENCES`` at ``at`` (random
    shops almost never are): each reading must include or exclude them alike."""
    gold = "gold"
    return [
        Shopper("b-quiet", at - 400 * D, gold, [("visit", at - 30 * D, None)]),
        Shopper("b-active", at - 900 * D, gold, [("support", at - 365 * D, None)]),
        Shopper(
            "b-ltv",
            at - 300 * D,
            gold,
            [("order", at - 60 * D, Decimal("10.00")), ("order", at - 70 * D, Decimal("10.01"))],
        ),
        Shopper(
            "b-points",
            at - 500 * D,
            "silver",
            lots=[(100, 100, at - 100 * D, at + 10 * D), (90, 0, at - 10 * D, at + 300 * D)],
        ),
        Shopper(  # 110 points left on lots, but 50 of them expired: a balance of 60
            "b-expired",
            at - 500 * D,
            "silver",
            lots=[(50, 50, at - 400 * D, at - 35 * D), (60, 60, at - 20 * D, at + 345 * D)],
        ),
        Shopper("b-expiring", at - 500 * D, "silver", lots=[(80, 50, at - 245 * D, at + 120 * D)]),
        Shopper("b-signup", at - 200 * D, "bronze", [("visit", at - 7 * D, None)]),
    ]


@pytest.fixture
def shop(engine: Engine) -> list[Shopper]:
    world = make_shop(random.Random(20261201))
    add_answers(world, random.Random(16))
    load(engine, world)
    return world


def check_audiences(
    engine: Engine, shop: list[Shopper], config: Config, as_of: datetime, paths: tuple[Any, ...]
) -> int:
    """Every audience by each reading in ``paths`` (False: the log, True: the
    facts, SPLIT: both, by customer) and by the automatic choice, against the
    reference; the number of audiences with members."""
    nonempty = 0
    for spec in AUDIENCES:
        a = Audience.model_validate(spec)
        want = reference(shop, a, config, as_of)
        for facts in paths:
            with engine.connect() as conn:
                got = {row[0] for row in conn.execute(audience_ids(a, config, as_of, facts=facts))}
            assert got == want, (spec, facts, sorted(got ^ want))
            assert count_audience(engine, a, config, as_of, facts=facts) == len(want), spec
            for decision_only in (False, True):
                streamed = {
                    r.customer_id
                    for b in stream_audience(
                        engine, a, config, as_of, decision_only=decision_only, facts=facts
                    )
                    for r in b
                }
                assert streamed == want, (spec, facts, decision_only)
        assert count_audience(engine, a, config, as_of) == len(want), spec  # automatic
        nonempty += bool(want)
    return nonempty


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_audiences_match_the_definitions(
    engine: Engine, shop: list[Shopper], config_name: str
) -> None:
    config = CONFIGS[config_name]
    with engine.connect() as conn:  # interactions after AS_OF: only the log answers there
        assert not facts_usable(conn, config, AS_OF)
    nonempty = check_audiences(engine, shop, config, AS_OF, (False,))
    assert nonempty >= len(AUDIENCES) - 3  # the shop exercises the conditions


@pytest.mark.parametrize("seed", [20261201, 7, 99])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_facts_and_log_agree_on_random_shops(
    engine: Engine, seed: int, config_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After everything recorded, the facts answer: the same sets as the log
    and the reference, for each engagement rule once the facts follow it."""
    world = make_shop(random.Random(seed))
    add_answers(world, random.Random(seed + 16))
    world += boundary_shoppers(LATER)
    load(engine, world)
    config = CONFIGS[config_name]
    ensure_facts(engine, config, AS_OF)
    with engine.connect() as conn:
        assert facts_reading(conn, config, LATER) == FACTS
        # a few customers have interactions after AS_OF: the facts answer for
        # the others, the log for them
        assert facts_reading(conn, config, AS_OF) == SPLIT
        other = next(c for name, c in CONFIGS.items() if name != config_name)
        assert not facts_usable(conn, other, LATER)  # facts follow one rule at a time
    nonempty = check_audiences(engine, world, config, LATER, (False, True))
    assert nonempty >= len(AUDIENCES) - 3
    nonempty = check_audiences(engine, world, config, AS_OF, (False, SPLIT))
    assert nonempty >= len(AUDIENCES) - 3
    monkeypatch.setattr("engage.customers.facts.SPLIT_MAX", 1)  # too many late customers
    with engine.connect() as conn:
        assert facts_reading(conn, config, AS_OF) == LOG


def test_recipient_facts_match_the_definitions(engine: Engine, shop: list[Shopper]) -> None:
    """Every fact ``load_recipients`` reads (the ones templates render) against
    the same reading of SPEC section 2, including points as FIFO lots."""
    config = Config()
    kinds = engaged_kinds(config)
    window = timedelta(days=30)
    with engine.connect() as conn:
        got = load_recipients(conn, config, [s.id for s in shop], AS_OF, expiring_within=window)
    existing = [s for s in shop if s.created <= AS_OF]
    assert set(got) == {s.id for s in existing}
    for s in existing:
        r = got[s.id]
        seen = [(k, t, amt) for k, t, amt in s.activity if t <= AS_OF]
        orders = [amt for k, _, amt in seen if k == "order"]
        live = [
            (left, exp) for _, left, earned, exp in s.lots if earned <= AS_OF < exp and left > 0
        ]
        assert r.created_at == s.created and r.created_at.tzinfo is not None
        assert r.last_activity == max((t for k, t, _ in seen if k in kinds), default=s.created)
        assert r.orders == len(orders)
        assert r.lifetime_value == sum((a for a in orders if a is not None), Decimal("0.00"))
        assert r.points.balance == sum(left for left, _ in live)
        assert r.points.expiring == sum(left for left, exp in live if exp <= AS_OF + window)
        assert r.points.next_expiry == min((exp for _, exp in live), default=None)
        assert r.attributes == s.attributes
        assert (r.email, r.email_opt_in, r.sms_opt_in) == (
            f"{s.id}@example.com",
            s.email_opt_in,
            False,
        )
        assert (r.tier, r.timezone, r.locale) == (s.tier, config.timezone, config.locale)


def test_instants_written_by_other_systems_are_read_as_utc(sqlite_engine: Engine) -> None:
    """SPEC: the shop's systems may write the documented tables themselves. On
    SQLite their instants may be text in other ISO forms than engage's own;
    recipients read them as UTCDateTime does (naive is UTC, offsets convert)."""
    from sqlalchemy import text

    forms = {
        "own": ("2026-01-02 03:04:05.000006", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        "offset": ("2026-01-02 03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
        "zulu": ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        "seconds": ("2026-01-02 03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        "date": ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
    }
    with sqlite_engine.begin() as conn:
        for cid, (raw, _) in forms.items():
            conn.execute(
                text(
                    "INSERT INTO customer (id, created_at, updated_at, attributes, email_opt_in,"
                    " sms_opt_in) VALUES (:id, :at, :at, '{}', 1, 0)"
                ),
                {"id": cid, "at": raw},
            )
    config = Config()
    with sqlite_engine.connect() as conn:
        got = load_recipients(conn, config, list(forms), AS_OF)
    assert {cid: r.created_at for cid, r in got.items()} == {c: at for c, (_, at) in forms.items()}
    assert all(r.last_activity == r.created_at for r in got.values())  # no interactions
    planned = {
        r.customer_id: r.last_activity
        for batch in stream_audience(sqlite_engine, Audience(), config, AS_OF, decision_only=True)
        for r in batch
    }
    assert planned == {c: at for c, (_, at) in forms.items()}
