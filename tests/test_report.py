"""The report against a plain Python reading of its definitions (docs/report.md).

A seeded random shop — customers, orders, visits, opens, survey answers,
points lots and redemptions, three campaigns' messages in every state and
the opt-outs traced to them — is written to SQLite and PostgreSQL, with
events placed exactly on every boundary the report has: the period's start
and end, the retention window before each, the previous period's start, a
message's planned send instant and the end of its attribution window. The
period is March 2026 in New York, which has a DST change on the 8th. Every
figure is then recomputed here from the same rows, by the definitions, and
must match exactly (money to the cent).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert

from engage.config import Config
from engage.db.models import (
    Customer,
    Interaction,
    Message,
    PointsLot,
    PointsRedemption,
    Suppression,
)
from engage.report import Period, build_report
from engage.report.stats import newcombe, wilson

ZONE = ZoneInfo("America/New_York")
FIRST, LAST = date(2026, 3, 1), date(2026, 3, 31)
START = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)  # local midnight, EST
END = datetime(2026, 4, 1, 4, 0, tzinfo=UTC)  # local midnight, EDT
PREVIOUS_START = datetime(2026, 1, 29, 5, 0, tzinfo=UTC)  # 31 local days before
NOW = datetime(2026, 4, 5, 12, 0, tzinfo=UTC)  # some attribution windows still open
D = timedelta(days=1)
US = timedelta(microseconds=1)
RETENTION = timedelta(days=365)
ATTRIBUTION = timedelta(days=7)
KINDS = ("order", "visit", "email_open", "support")
CAMPAIGNS = {"alpha": 0.3, "beta": 0.0, "gamma": 0.05}  # holdout shares
REACHED = ("sent", "delivered", "bounced", "undelivered")
STATES = (*REACHED, "planned", "failed", "cancelled", "unknown", "render_error", "expired", "retry")
CENT = Decimal("0.01")


@dataclass
class Shop:
    customers: list[dict[str, Any]] = field(default_factory=list)
    interactions: list[dict[str, Any]] = field(default_factory=list)
    lots: list[dict[str, Any]] = field(default_factory=list)
    redemptions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    suppressions: list[dict[str, Any]] = field(default_factory=list)


# Instants every kind of event is also placed on, besides random ones.
EDGES = (
    START,
    START - US,
    END,
    END - US,
    START - RETENTION,
    START - RETENTION - US,
    END - RETENTION,
    END - RETENTION - US,
    PREVIOUS_START,
    PREVIOUS_START - US,
    datetime(2026, 3, 8, 5, 0, tzinfo=UTC),  # local midnight before the DST change
    datetime(2026, 3, 9, 4, 0, tzinfo=UTC),  # local midnight after it
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 03:00 EDT, just after the gap
)


def when(rng: random.Random) -> datetime:
    if rng.random() < 0.15:
        return rng.choice(EDGES)
    return START + rng.uniform(-500, 40) * D + timedelta(microseconds=rng.randrange(10**6))


def make_shop(seed: int, n: int = 240) -> Shop:
    rng = random.Random(seed)
    shop = Shop()
    seq = iter(range(1, 10**6))
    for k in range(n):
        cid = f"c{k:04d}"
        created = START + rng.uniform(-600, 45) * D
        if rng.random() < 0.05:
            created = rng.choice((START, END, START - US))
        shop.customers.append({"id": cid, "created_at": created, "attributes": {}})
        for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 12))):
            kind = rng.choice(KINDS)
            amount = Decimal(rng.randint(1, 99999)) / 100 if kind == "order" else None
            shop.interactions.append(_event(next(seq), cid, kind, when(rng), amount))
        for _ in range(rng.choice((0, 0, 1, 2))):
            score = rng.choice((*range(11), *range(11), None, 11))
            t = when(rng)
            shop.interactions.append(_event(next(seq), cid, "nps", t, score=score))
            if rng.random() < 0.15:  # a second answer at the same instant: the later row wins
                shop.interactions.append(_event(next(seq), cid, "nps", t, score=rng.randint(0, 10)))
        for _ in range(rng.choice((0, 1, 2))):
            earned = when(rng)
            expires = rng.choice((earned + 365 * D, when(rng) + D, START, END))
            points = rng.randint(1, 900)
            shop.lots.append(
                {
                    "customer_id": cid,
                    "points": points,
                    "remaining": rng.choice((0, points, points // 3)),
                    "earned_at": earned,
                    "expires_at": expires,
                    "external_id": f"l{next(seq)}",
                }
            )
        for _ in range(rng.choice((0, 0, 1, 2))):
            shop.redemptions.append(
                {
                    "customer_id": cid,
                    "points": rng.randint(1, 300),
                    "redeemed_at": when(rng),
                    "external_id": f"r{next(seq)}",
                }
            )
        _campaign_messages(rng, shop, cid, seq)
    return shop


def _event(
    iid: int,
    cid: str,
    kind: str,
    at: datetime,
    amount: Decimal | None = None,
    score: int | None = None,
) -> dict[str, Any]:
    return {
        "id": iid,
        "customer_id": cid,
        "kind": kind,
        "occurred_at": at,
        "amount": amount,
        "score": score,
        "attributes": {},
        "external_id": f"i{iid}",
    }


def _campaign_messages(rng: random.Random, shop: Shop, cid: str, seq: Any) -> None:
    """Messages of each campaign (held out by a stable share of customers),
    some with orders placed on the edges of their attribution window, some
    with a second message of the same campaign a few days later."""
    for name, share in CAMPAIGNS.items():
        if rng.random() < 0.45:
            continue
        held = rng.random() < share
        send = START + rng.uniform(-9, 33) * D + timedelta(microseconds=rng.randrange(10**6))
        if rng.random() < 0.1:
            send = rng.choice((START, END, START - US, END - US))
        sends = [send] + ([send + rng.uniform(0.5, 6) * D] if rng.random() < 0.25 else [])
        for at in sends:
            status = "held_out" if held else rng.choice(REACHED + REACHED + STATES)
            mid = next(seq)
            shop.messages.append(
                {
                    "id": mid,
                    "dedupe_key": f"{name}|{mid}",
                    "campaign": name,
                    "customer_id": cid,
                    "channel": "email",
                    "address": f"{cid}@example.com",
                    "template": "winback",
                    "priority": 50,
                    "counts_toward_cap": True,
                    "status": status,
                    "planned_at": at - 3 * D,  # when the planner ran: not what windows start from
                    "send_after": at,
                    "attempts": 0,
                    "updated_at": at,
                    "sent_at": NOW if status in REACHED else None,  # the wall clock (--at history)
                }
            )
            for offset in rng.sample(
                (
                    timedelta(0),
                    ATTRIBUTION,
                    ATTRIBUTION - US,
                    rng.uniform(0, 7) * D,
                    -US,
                    rng.uniform(0, 3) * D,
                ),
                2,
            ):
                if rng.random() < 0.45:
                    amount = Decimal(rng.randint(1, 50000)) / 100
                    shop.interactions.append(_event(next(seq), cid, "order", at + offset, amount))
        if not held and rng.random() < 0.3:
            reason = rng.choice(("unsubscribe", "sms_stop", "spam_report", "bounce"))
            shop.suppressions.append(
                {
                    "channel": "email",
                    "address": f"{cid}-{name}@example.com",
                    "customer_id": cid,
                    "reason": reason,
                    "source": "webhook",
                    "campaign": name,
                    "message_id": None,
                    "created_at": rng.choice((START, END, send + D, START - US, END - US)),
                }
            )


def load(engine: Engine, shop: Shop) -> None:
    tables = (
        (Customer, shop.customers),
        (Interaction, shop.interactions),
        (PointsLot, shop.lots),
        (PointsRedemption, shop.redemptions),
        (Message, shop.messages),
        (Suppression, shop.suppressions),
    )
    with engine.begin() as conn:
        for model, rows in tables:
            if rows:
                conn.execute(insert(model), rows)


# --- the definitions, in plain Python -------------------------------------------------


def pct(num: int, den: int) -> float | None:
    return None if den == 0 else float(round(Fraction(100 * num, den), 2))


def cents_of(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def in_period(t: datetime, lo: datetime = START, hi: datetime = END) -> bool:
    return lo <= t < hi


def expected_shop(shop: Shop, config: Config) -> dict[str, Any]:
    orders = [i for i in shop.interactions if i["kind"] == "order"]
    by_customer: dict[str, list[datetime]] = defaultdict(list)
    for o in orders:
        by_customer[o["customer_id"]].append(o["occurred_at"])
    at_start = {
        c for c, ts in by_customer.items() if any(START - RETENTION <= t < START for t in ts)
    }
    at_end = {c for c, ts in by_customer.items() if any(END - RETENTION <= t < END for t in ts)}
    new = {c for c, ts in by_customer.items() if in_period(min(ts))}
    engaged = [i for i in shop.interactions if i["kind"] != "email_open"]
    active = {i["customer_id"] for i in engaged if in_period(i["occurred_at"])}
    before = {
        i["customer_id"] for i in engaged if in_period(i["occurred_at"], PREVIOUS_START, START)
    }
    period_orders = [o for o in orders if in_period(o["occurred_at"])]
    buyers = {o["customer_id"] for o in period_orders}
    ever = {c: sum(1 for t in by_customer[c] if t < END) for c in buyers}
    revenue = sum((o["amount"] for o in period_orders), Decimal("0"))
    aov = cents_of(revenue / len(period_orders)) if period_orders else None
    earned = sum(lot["points"] for lot in shop.lots if in_period(lot["earned_at"]))
    redeemed = sum(r["points"] for r in shop.redemptions if in_period(r["redeemed_at"]))
    expired = sum(lot["remaining"] for lot in shop.lots if in_period(lot["expires_at"]))
    latest: dict[str, tuple[datetime, int, int]] = {}
    for i in shop.interactions:
        score = i["score"]
        if (
            i["kind"] == "nps"
            and in_period(i["occurred_at"])
            and score is not None
            and 0 <= score <= 10
        ):
            key = (i["occurred_at"], i["id"], score)
            latest[i["customer_id"]] = max(latest.get(i["customer_id"], key), key)
    scores = [s for _, _, s in latest.values()]
    promoters = sum(s >= 9 for s in scores)
    detractors = sum(s <= 6 for s in scores)
    return {
        "customers": {
            "total": sum(c["created_at"] < END for c in shop.customers),
            "new": sum(in_period(c["created_at"]) for c in shop.customers),
        },
        "retention": {
            "rate": pct(len(at_end) - len(new), len(at_start)),
            "cohort_rate": pct(len(at_start & at_end), len(at_start)),
            "at_start": len(at_start),
            "at_end": len(at_end),
            "new_buyers": len(new),
            "retained": len(at_start & at_end),
        },
        "activity": {
            "active": len(active),
            "previously_active": len(before),
            "churned": len(before - active),
            "churn_rate": pct(len(before - active), len(before)),
        },
        "purchases": {
            "orders": len(period_orders),
            "revenue": str(cents_of(revenue)),
            "buyers": len(buyers),
            "average_order_value": None if aov is None else str(aov),
            "purchase_frequency": None
            if not buyers
            else float(round(Fraction(len(period_orders), len(buyers)), 2)),
            "repeat_buyers": sum(n >= 2 for n in ever.values()),
            "repeat_purchase_rate": pct(sum(n >= 2 for n in ever.values()), len(buyers)),
            "loyal_buyers": sum(n >= config.loyal_min_orders for n in ever.values()),
            "loyal_min_orders": config.loyal_min_orders,
            "loyal_customer_rate": pct(
                sum(n >= config.loyal_min_orders for n in ever.values()), len(buyers)
            ),
        },
        "points": {
            "earned": earned,
            "redeemed": redeemed,
            "expired": expired,
            "redemption_rate": pct(redeemed, earned),
        },
        "nps": {
            "score": pct(promoters - detractors, len(scores)),
            "responses": len(scores),
            "promoters": promoters,
            "passives": len(scores) - promoters - detractors,
            "detractors": detractors,
        },
    }


def attribution(shop: Shop) -> dict[int, list[Decimal]]:
    """Message id -> the orders it converted: each order of a customer goes,
    per campaign, to the latest recipient/holdout message whose window holds it."""
    grouped = [m for m in shop.messages if m["status"] in (*REACHED, "held_out")]
    out: dict[int, list[Decimal]] = defaultdict(list)
    for o in (i for i in shop.interactions if i["kind"] == "order"):
        for name in CAMPAIGNS:
            holding = [
                m
                for m in grouped
                if m["campaign"] == name
                and m["customer_id"] == o["customer_id"]
                and m["send_after"] <= o["occurred_at"] < m["send_after"] + ATTRIBUTION
            ]
            if holding:
                best = max(holding, key=lambda m: (m["send_after"], m["id"]))
                out[best["id"]].append(o["amount"])
    return out


def wilson_ref(x: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = x / n
    denominator = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / denominator, (centre + spread) / denominator


def expected_campaigns(shop: Shop) -> dict[str, dict[str, Any]]:
    converted = attribution(shop)
    out: dict[str, dict[str, Any]] = {}
    for name in CAMPAIGNS:
        period = [m for m in shop.messages if m["campaign"] == name and in_period(m["send_after"])]
        statuses = Counter(m["status"] for m in period)
        groups = {}
        for group, states in (("recipients", REACHED), ("holdout", ("held_out",))):
            members = [m for m in period if m["status"] in states]
            conv = [m for m in members if converted.get(m["id"])]
            revenue = sum((a for m in members for a in converted.get(m["id"], [])), Decimal(0))
            groups[group] = {
                "members": len(members),
                "conversions": len(conv),
                "conversion_rate": pct(len(conv), len(members)),
                "orders": sum(len(converted.get(m["id"], [])) for m in members),
                "revenue": str(cents_of(revenue)),
                "revenue_exact": revenue,
            }
        unsubscribed = [
            s
            for s in shop.suppressions
            if s["campaign"] == name
            and s["reason"] in ("unsubscribe", "sms_stop", "spam_report")
            and in_period(s["created_at"])
        ]
        out[name] = {
            "planned": sum(n for s, n in statuses.items() if s != "held_out"),
            "sent": sum(statuses[s] for s in REACHED),
            "delivered": statuses["delivered"],
            "bounced": statuses["bounced"],
            "undelivered": statuses["undelivered"],
            "failed": statuses["failed"],
            "waiting": statuses["planned"] + statuses["retry"],
            "held_out": statuses["held_out"],
            "unsubscribed": len(unsubscribed),
            "spam_reports": sum(s["reason"] == "spam_report" for s in unsubscribed),
            "statuses": dict(statuses),
            "groups": groups,
            "open": sum(
                1
                for m in period
                if m["status"] in (*REACHED, "held_out") and m["send_after"] + ATTRIBUTION > NOW
            ),
        }
    return out


# --- the tests ----------------------------------------------------------------------


@pytest.fixture
def config() -> Config:
    return Config(timezone="America/New_York")


@pytest.fixture
def shop(engine: Engine) -> Shop:
    world = make_shop(20260301)
    load(engine, world)
    return world


def test_the_period_is_march_in_new_york(config: Config) -> None:
    period = Period.of_days(FIRST, LAST, config.zone, NOW)
    assert (period.start, period.end, period.previous_start) == (START, END, PREVIOUS_START)
    assert not period.partial
    unit, marks = period.buckets()
    assert unit == "day" and len(marks) == 32
    assert marks[7] == datetime(2026, 3, 8, 5, tzinfo=UTC)
    assert marks[8] == datetime(2026, 3, 9, 4, tzinfo=UTC)  # a 23-hour day
    assert all(m.astimezone(ZONE).time().hour == 0 for m in marks)


def test_every_shop_figure_matches_its_definition(
    engine: Engine, shop: Shop, config: Config
) -> None:
    report = build_report(engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), NOW)
    got = report.to_json()["shop"]
    want = expected_shop(shop, config)
    assert got == want
    # the shop exercises every figure
    assert all(v not in (None, 0, "0.00") for section in want.values() for v in section.values())


def test_every_campaign_figure_matches_its_definition(
    engine: Engine, shop: Shop, config: Config
) -> None:
    report = build_report(engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), NOW)
    data = {c["name"]: c for c in report.to_json()["campaigns"]}
    want = expected_campaigns(shop)
    assert sorted(data) == sorted(CAMPAIGNS)
    for name, w in want.items():
        c = data[name]
        for key in (
            "planned",
            "sent",
            "delivered",
            "bounced",
            "undelivered",
            "failed",
            "waiting",
            "held_out",
            "unsubscribed",
            "spam_reports",
        ):
            assert c[key] == w[key], (name, key)
        assert c["statuses"] == w["statuses"], name
        assert c["attribution_windows_open"] == w["open"], name
        for group in ("recipients", "holdout"):
            g, wg = c[group], w["groups"][group]
            for key in ("members", "conversions", "conversion_rate", "orders", "revenue"):
                assert g[key] == wg[key], (name, group, key)
            if wg["members"]:
                low, high = wilson_ref(wg["conversions"], wg["members"])
                assert g["conversion_rate_ci_low"] == pytest.approx(100 * max(low, 0), abs=0.006)
                assert g["conversion_rate_ci_high"] == pytest.approx(100 * min(high, 1), abs=0.006)
    # alpha: a real holdout, so a lift with Newcombe's interval
    alpha, w = data["alpha"], want["alpha"]["groups"]
    assert w["holdout"]["members"] >= 30 and w["recipients"]["members"] >= 30
    x1, n1 = w["recipients"]["conversions"], w["recipients"]["members"]
    x2, n2 = w["holdout"]["conversions"], w["holdout"]["members"]
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_ref(x1, n1)
    l2, u2 = wilson_ref(x2, n2)
    lift = alpha["lift"]
    assert lift["status"] == "ok"
    assert lift["absolute"] == pytest.approx(100 * (p1 - p2), abs=0.006)
    assert lift["ci_low"] == pytest.approx(
        100 * (p1 - p2 - math.hypot(p1 - l1, u2 - p2)), abs=0.006
    )
    assert lift["ci_high"] == pytest.approx(
        100 * (p1 - p2 + math.hypot(u1 - p1, p2 - l2)), abs=0.006
    )
    assert lift["relative"] == pytest.approx(100 * (p1 / p2 - 1), abs=0.006)
    incremental = w["recipients"]["revenue_exact"] - (w["holdout"]["revenue_exact"] * n1 / n2)
    assert Decimal(lift["incremental_revenue"]) == cents_of(incremental)
    # beta: no holdout at all; gamma: a holdout too small to quote
    assert want["beta"]["held_out"] == 0 and data["beta"]["lift"]["status"] == "no_holdout"
    assert data["beta"]["lift"]["absolute"] is None
    assert 0 < want["gamma"]["held_out"] < 30
    assert data["gamma"]["lift"] == {
        "status": "not_enough_data",
        "absolute": None,
        "ci_low": None,
        "ci_high": None,
        "significant": None,
        "relative": None,
        "incremental_revenue": None,
    }


def test_the_series_cuts_the_period_into_local_days(
    engine: Engine, shop: Shop, config: Config
) -> None:
    report = build_report(engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), NOW)
    series = report.to_json()["series"]
    assert series["unit"] == "day"
    buckets = series["buckets"]
    assert [b["label"] for b in buckets] == [(FIRST + k * D).isoformat() for k in range(31)]
    orders: Counter[str] = Counter()
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    for i in shop.interactions:
        if i["kind"] == "order" and in_period(i["occurred_at"]):
            day = i["occurred_at"].astimezone(ZONE).date().isoformat()
            orders[day] += 1
            revenue[day] += i["amount"]
    signups = Counter(
        c["created_at"].astimezone(ZONE).date().isoformat()
        for c in shop.customers
        if in_period(c["created_at"])
    )
    for b in buckets:
        assert b["orders"] == orders[b["label"]], b["label"]
        assert b["revenue"] == str(cents_of(revenue[b["label"]])), b["label"]
        assert b["new_customers"] == signups[b["label"]], b["label"]
    assert sum(b["orders"] for b in buckets) == report.to_json()["shop"]["purchases"]["orders"]
    # each campaign's series adds up to its figures
    for c in report.to_json()["campaigns"]:
        assert sum(p["sent"] for p in c["series"]) == c["sent"]
        assert sum(p["held_out"] for p in c["series"]) == c["held_out"]
        assert sum(p["conversions"] for p in c["series"]) == c["recipients"]["conversions"]
        assert sum(p["holdout_conversions"] for p in c["series"]) == c["holdout"]["conversions"]


def test_the_boundaries_are_half_open(engine: Engine, config: Config) -> None:
    """Each customer below has orders exactly on a boundary, so each side of
    every comparison is decided by one instant: [t - window, t) for
    "counted at t", [start, end) for the period and for first orders,
    [send, send + attribution_window) for a message."""
    lo, hi = START - RETENTION, END - RETENTION
    orders = {
        "s0": [lo],  # counted at the start only
        "s1": [lo - US],  # counted nowhere; bought before the period
        "s2": [START],  # a first order in the period: new, counted at the end
        "s3": [START - US],  # counted at both
        "e0": [hi],  # counted at both
        "e1": [hi - US],  # counted at the start only
        "e2": [END],  # after the period: nothing
        "n1": [lo - D, START + D],  # back after a long pause: not new, counted at the end
        "r2": [START, END - US],  # two orders in the period: a repeat buyer
    }
    send = START + 2 * D + timedelta(microseconds=250)
    shop = Shop(
        customers=[
            {"id": c, "created_at": START - 800 * D, "attributes": {}} for c in (*orders, "m")
        ]
    )
    seq = iter(range(1, 100))
    for cid, times in orders.items():
        for t in times:
            shop.interactions.append(_event(next(seq), cid, "order", t, Decimal("10.00")))
    for offset, amount in (
        (timedelta(0), "1.00"),
        (ATTRIBUTION, "2.00"),
        (ATTRIBUTION - US, "4.00"),
        (-US, "8.00"),
    ):
        shop.interactions.append(_event(next(seq), "m", "order", send + offset, Decimal(amount)))
    shop.messages.append(
        {
            "id": 1,
            "dedupe_key": "k",
            "campaign": "alpha",
            "customer_id": "m",
            "channel": "sms",
            "address": "+15555550100",
            "template": "t",
            "priority": 50,
            "counts_toward_cap": True,
            "status": "sent",
            "planned_at": send,
            "send_after": send,
            "attempts": 1,
            "updated_at": send,
            "sent_at": NOW,
        }
    )
    load(engine, shop)
    report = build_report(
        engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), NOW
    ).to_json()
    assert report["shop"]["retention"] == {
        "at_start": 4,  # s0 s3 e0 e1
        "at_end": 6,  # s2 s3 e0 n1 r2 m
        "new_buyers": 3,  # s2 r2 m
        "retained": 2,  # s3 e0
        "rate": 75.0,  # (6 - 3) / 4
        "cohort_rate": 50.0,  # 2 / 4
    }
    purchases = report["shop"]["purchases"]
    # s2, n1, r2 (2) and m (4, from just before the send to the window's end)
    assert (purchases["orders"], purchases["buyers"], purchases["repeat_buyers"]) == (8, 4, 3)
    assert purchases["revenue"] == "55.00"
    recipients = report["campaigns"][0]["recipients"]
    assert (recipients["conversions"], recipients["orders"], recipients["revenue"]) == (
        1,
        2,
        "5.00",
    )
    buckets = report["series"]["buckets"]
    assert buckets[0]["orders"] == 2 and buckets[-1]["orders"] == 1  # r2's at 23:59:59.999999


def test_incremental_revenue_is_rounded_once_to_the_cent() -> None:
    from engage.report.campaigns import Group, lift_of

    recipients = Group(members=100, converted=20, orders=20, revenue_cents=100_000)
    holdout = Group(members=30, converted=3, orders=3, revenue_cents=10_001)
    lift = lift_of(recipients, holdout)
    # 1000.00 - 100 * 100.01 / 30 = 666.633... -> 666.63
    assert lift.incremental_revenue == Decimal("666.63")
    assert (lift.absolute, lift.relative) == (10.0, 100.0)
    assert lift_of(recipients, Group(members=29, converted=3)).status == "not_enough_data"
    assert lift_of(Group(), holdout).status == "no_recipients"


def test_a_campaign_without_a_holdout_reports_no_lift(engine: Engine, config: Config) -> None:
    shop = Shop(
        customers=[{"id": f"c{k}", "created_at": START - D, "attributes": {}} for k in range(40)]
    )
    for k in range(40):
        shop.messages.append(
            {
                "id": k + 1,
                "dedupe_key": f"k{k}",
                "campaign": "beta",
                "customer_id": f"c{k}",
                "channel": "email",
                "address": "x@example.com",
                "template": "t",
                "priority": 50,
                "counts_toward_cap": True,
                "status": "delivered",
                "planned_at": START,
                "send_after": START + D,
                "attempts": 1,
                "updated_at": START,
                "sent_at": START + D,
            }
        )
        if k % 4 == 0:
            shop.interactions.append(_event(k + 1, f"c{k}", "order", START + 2 * D, Decimal(5)))
    load(engine, shop)
    report = build_report(engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), NOW)
    (beta,) = report.campaigns
    assert beta.recipients.converted == 10 and beta.recipients.conversion_rate == 25.0
    assert beta.lift.status == "no_holdout"
    assert beta.to_json()["lift"]["absolute"] is None
    assert beta.to_json()["holdout"]["conversion_rate"] is None


def test_only_the_named_campaigns(engine: Engine, shop: Shop, config: Config) -> None:
    period = Period.of_days(FIRST, LAST, config.zone, NOW)
    report = build_report(engine, config, period, NOW, campaigns=["gamma", "zeta"])
    assert [c.name for c in report.campaigns] == ["gamma", "zeta"]
    full = {c.name: c.to_json() for c in build_report(engine, config, period, NOW).campaigns}
    assert report.campaigns[0].to_json() == full["gamma"]
    assert report.campaigns[1].funnel["planned"] == 0


def test_newcombe_matches_the_published_intervals() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10."""
    for (x1, n1, x2, n2), (low, high) in {
        (56, 70, 48, 80): (0.0524, 0.3339),
        (9, 10, 3, 10): (0.1705, 0.8090),
        (6, 7, 2, 7): (0.0582, 0.8062),
        (5, 56, 0, 29): (-0.0381, 0.1926),
        (0, 10, 0, 20): (-0.1611, 0.2775),
        (10, 10, 0, 20): (0.6791, 1.0000),
    }.items():
        d = newcombe(x1, n1, x2, n2)
        assert (round(d.low, 4), round(d.high, 4)) == (low, high)
    assert tuple(round(x, 4) for x in wilson(81, 263)) == (0.2553, 0.3662)


def test_a_period_that_reaches_into_the_future_ends_now(config: Config) -> None:
    now = datetime(2026, 3, 10, 17, 30, tzinfo=UTC)
    period = Period.of_days(FIRST, None, config.zone, now)
    assert period.partial and (period.start, period.end) == (START, now)
    assert period.previous_start == START - (now - START)
    unit, marks = period.buckets()
    assert marks[-1] == now and len(marks) == 11  # ten whole days and today so far
    default = Period.of_days(None, None, config.zone, now)
    assert (default.first_day, default.last_day) == (date(2026, 2, 8), date(2026, 3, 9))
    assert not default.partial
