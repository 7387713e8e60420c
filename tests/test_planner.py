"""Planning occurrences into the outbox: decisions, idempotence, cap, holdout, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, insert, select

from engage.campaigns.schema import Campaign
from engage.config import Config
from engage.db.models import CampaignRun, Customer, Message
from engage.planning import suppressions
from engage.planning.planner import dedupe_key, dry_run, plan_occurrence

from .helpers import NOW, add_customer, add_interaction, make_config


def campaign(**kw: Any) -> Campaign:
    data: dict[str, Any] = {
        "name": "winback-30d",
        "schedule": {"cron": "0 10 * * *", "timezone": "UTC"},
        "audience": {"quiet_for": "30d"},
        "channels": ["email", "sms"],
        "template": "winback",
        "send_window": {"start": "00:00", "end": "24:00"},
    }
    data.update(kw)
    return Campaign.model_validate(data)


def messages(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Message).order_by(Message.id)).all()


def test_plan_twice_inserts_nothing_new(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    for n in range(5):
        add_customer(engine, f"c{n}")
    add_interaction(engine, "c4", NOW - timedelta(days=1))  # active: not in the audience
    c = campaign()
    first = plan_occurrence(engine, config, c, NOW, now=NOW)
    assert first.inserted == 4 and not first.already_planned
    assert first.counts["matched"] == 4 and first.counts["send"] == 4
    again = plan_occurrence(engine, config, c, NOW, now=NOW)
    assert again.already_planned and again.inserted == 0 and again.counts == first.counts
    rows = messages(engine)
    assert len(rows) == 4
    assert {r.dedupe_key for r in rows} == {
        dedupe_key("winback-30d", NOW, f"c{n}") for n in range(4)
    }
    assert {(r.status, r.channel, r.send_after) for r in rows} == {("planned", "email", NOW)}
    with engine.connect() as conn:
        run = conn.execute(select(CampaignRun)).one()
    assert (run.state, run.scheduled_at, run.counts["send"]) == ("planned", NOW, 4)


def test_interrupted_planning_resumes_without_duplicates(engine: Engine, tmp_path: Path) -> None:
    """A run left in 'planning' (the process died) is re-planned to the same result."""
    config = make_config(tmp_path)
    for n in range(6):
        add_customer(engine, f"c{n}")
    c = campaign(reentry="once")
    plan_occurrence(engine, config, c, NOW, now=NOW)
    with engine.begin() as conn:
        conn.execute(CampaignRun.__table__.update().values(state="planning"))
        conn.execute(Message.__table__.delete().where(Message.customer_id.in_(["c4", "c5"])))
    resumed = plan_occurrence(engine, config, c, NOW, now=NOW)
    assert resumed.inserted == 2 and resumed.counts["send"] == 6  # not 'reentry' for c0..c3
    assert len(messages(engine)) == 6


def test_unsubscribed_customer_is_never_messaged(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    add_customer(engine, "ann", phone="+12025550123", sms_opt_in=True)
    add_customer(engine, "bob", phone="+12025550124", sms_opt_in=True)
    suppressions.add(engine, [("email", "ann@example.com", "ann", "unsubscribe", "test")])
    suppressions.add(engine, [("sms", "+12025550123", "ann", "sms_stop", "test")])
    suppressions.add(engine, [("email", "BOB@example.com", None, "unsubscribe", "test")])
    result = plan_occurrence(engine, config, campaign(), NOW, now=NOW)
    assert result.counts["suppressed"] == 1  # ann: every channel suppressed
    rows = messages(engine)
    assert [(r.customer_id, r.channel) for r in rows] == [("bob", "sms")]  # bob falls back to SMS


def test_preemption_cancels_exactly_one_lowest_priority_latest_message(
    engine: Engine, tmp_path: Path
) -> None:
    config = make_config(tmp_path, frequency_cap={"max_messages": 3, "per": "7d"})
    for cid in ("ann", "bob"):
        add_customer(engine, cid)
    for name, priority, start in (
        ("p10-early", 10, "18:00"),
        ("p10-late", 10, "19:00"),
        ("p20", 20, "17:00"),
    ):
        low = campaign(name=name, priority=priority, send_window={"start": start, "end": "21:00"})
        plan_occurrence(engine, config, low, NOW, now=NOW)
    result = plan_occurrence(engine, config, campaign(name="high", priority=90), NOW, now=NOW)
    assert result.counts["send"] == 2
    by = {(r.campaign, r.customer_id): (r.status, r.error) for r in messages(engine)}
    for cid in ("ann", "bob"):  # the lowest priority, and of those the one sent last
        assert by[("p10-late", cid)] == ("cancelled", "preempted by high")
        assert by[("p10-early", cid)] == ("planned", None)
        assert by[("p20", cid)] == ("planned", None)
        assert by[("high", cid)] == ("planned", None)


def test_frequency_cap_resolves_by_priority(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path, frequency_cap={"max_messages": 1, "per": "7d"})
    for cid in ("ann", "bob"):
        add_customer(engine, cid)
    high = campaign(name="high", priority=90)
    # the low-priority campaign planned first (window: its messages wait until 18:00)
    low = campaign(name="low", priority=10, send_window={"start": "18:00", "end": "20:00"})
    plan_occurrence(engine, config, low, NOW, now=NOW)
    result = plan_occurrence(engine, config, high, NOW, now=NOW)
    assert result.counts["send"] == 2  # took the slots by preempting
    by = {(r.campaign, r.customer_id): (r.status, r.error) for r in messages(engine)}
    assert by[("low", "ann")] == ("cancelled", "preempted by high")
    assert by[("high", "ann")] == ("planned", None)
    # the other order: the high-priority message holds the slot, the low one is skipped
    assert by[("high", "bob")] == ("planned", None)
    later = plan_occurrence(
        engine, config, campaign(name="low2", priority=10), NOW + timedelta(hours=1), now=NOW
    )
    assert later.counts["frequency_cap"] == 2 and later.inserted == 0
    # a campaign exempt from the cap still goes out, and does not use a slot
    exempt = plan_occurrence(
        engine, config, campaign(name="receipt", exempt_from_frequency_cap=True), NOW, now=NOW
    )
    assert exempt.counts["send"] == 2


def test_holdout_share_and_stability_on_10000(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": f"c{n:05d}",
                    "email": f"c{n}@example.com",
                    "email_opt_in": True,
                    "sms_opt_in": False,
                    "attributes": {},
                    "created_at": NOW - timedelta(days=100),
                }
                for n in range(10_000)
            ],
        )
    c = campaign(holdout="10%", channels=["email"])
    report = dry_run(engine, config, c, NOW)
    share = report.counts["held_out"] / report.counts["matched"]
    assert report.counts["matched"] == 10_000
    assert abs(share - 0.10) <= 0.02
    result = plan_occurrence(engine, config, c, NOW, now=NOW)
    assert result.counts["held_out"] == report.counts["held_out"]
    with engine.connect() as conn:
        held = set(conn.scalars(select(Message.customer_id).where(Message.status == "held_out")))
    assert len(held) == report.counts["held_out"]
    # stable: a later occurrence holds out exactly the same customers
    c2 = campaign(holdout="10%", channels=["email"], reentry="1d")
    plan_occurrence(engine, config, c2, NOW + timedelta(days=2), now=NOW + timedelta(days=2))
    with engine.connect() as conn:
        held2 = set(
            conn.scalars(
                select(Message.customer_id).where(
                    Message.status == "held_out", Message.send_after > NOW + timedelta(days=1)
                )
            )
        )
    assert held2 == held


def test_windows_tokyo_and_new_york_across_dst(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    tokyo, ny = ZoneInfo("Asia/Tokyo"), ZoneInfo("America/New_York")
    add_customer(engine, "tokyo", timezone="Asia/Tokyo")
    add_customer(engine, "newyork", timezone="America/New_York")
    c = campaign(channels=["email"], send_window=None)  # email default window 08:00-21:00
    # 23:00 Saturday in New York, the night the clocks go back (EDT -> EST)
    at = datetime(2026, 10, 31, 23, 0, tzinfo=ny).astimezone(UTC)
    plan_occurrence(engine, config, c, at, now=at)
    sends = {r.customer_id: r.send_after for r in messages(engine)}
    assert sends["newyork"] == datetime(2026, 11, 1, 8, 0, tzinfo=ny)  # 08:00 EST
    assert sends["newyork"] == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    # that instant is 12:00 on Sunday in Tokyo: inside the window, sent now
    assert sends["tokyo"] == at
    assert at.astimezone(tokyo).hour == 12


def test_sms_defaults_to_narrower_window(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    add_customer(
        engine,
        "sam",
        email=None,
        phone="+12025550123",
        sms_opt_in=True,
        timezone="America/New_York",
    )
    ny = ZoneInfo("America/New_York")
    at = datetime(2026, 6, 15, 8, 30, tzinfo=ny).astimezone(UTC)  # email window open, SMS not
    plan_occurrence(engine, config, campaign(send_window=None), at, now=at)
    (row,) = messages(engine)
    assert row.channel == "sms" and row.send_after == datetime(2026, 6, 15, 9, 0, tzinfo=ny)


def test_dry_run_reasons_and_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    add_customer(engine, "ok")
    add_customer(engine, "noaddr", email=None)
    add_customer(engine, "noconsent", email_opt_in=False)
    add_customer(engine, "sup")
    suppressions.add(engine, [("email", "sup@example.com", None, "bounce", "test")])
    report = dry_run(engine, config, campaign(channels=["email"]), NOW, limit=2)
    assert report.counts == {
        "matched": 4,
        "send": 1,
        "send_email": 1,
        "skip": 3,
        "no_address": 1,
        "no_consent": 1,
        "suppressed": 1,
    }
    assert len(report.decisions) == 2
    data = report.to_json()
    assert data["campaign"] == "winback-30d" and data["as_of"] == "2026-06-15T15:00:00Z"
    assert set(data["decisions"][0]) == {"customer_id", "decision", "reason", "channel", "send_at"}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Message)) == 0
        assert conn.scalar(select(func.count()).select_from(CampaignRun)) == 0


def test_reentry_after_activity(engine: Engine, tmp_path: Path) -> None:
    config: Config = make_config(tmp_path)
    add_customer(engine, "ann")
    c = campaign()
    plan_occurrence(engine, config, c, NOW - timedelta(days=40), now=NOW - timedelta(days=40))
    # no new activity since: skipped for reentry
    r = plan_occurrence(engine, config, c, NOW, now=NOW)
    assert r.counts["reentry"] == 1
    # new activity, then quiet again for 30 days: eligible again
    add_interaction(engine, "ann", NOW - timedelta(days=35), kind="visit")
    r = plan_occurrence(engine, config, c, NOW + timedelta(days=1), now=NOW + timedelta(days=1))
    assert r.counts["send"] == 1


def test_preview_applies_the_same_rules_as_planning(engine: Engine, tmp_path: Path) -> None:
    from engage.planning.preview import preview_message

    config = make_config(tmp_path)
    add_customer(engine, "ann")
    c = campaign(channels=["email"], template="winback")
    before = preview_message(engine, config, c, "ann", NOW)
    assert (before.decision, before.channel) == ("send", "email")
    assert before.email is not None and "ann@example.com" == before.address
    plan_occurrence(engine, config, c, NOW, now=NOW)
    after = preview_message(engine, config, c, "ann", NOW + timedelta(days=1))
    assert (after.decision, after.reason) == ("skip", "reentry")
    assert after.email is not None  # the content is still shown


def test_planned_messages_expire_after_their_campaigns_expires_after(
    engine: Engine, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    add_customer(engine, "c1")
    plan_occurrence(engine, config, campaign(), NOW, now=NOW)
    plan_occurrence(engine, config, campaign(name="quick", expires_after="6h"), NOW, now=NOW)
    by = {m.campaign: m.expires_at for m in messages(engine)}
    assert by == {"winback-30d": NOW + timedelta(hours=24), "quick": NOW + timedelta(hours=6)}


def _plan_together(engine: Engine, config: Config, jobs: list[tuple[Campaign, datetime]]) -> None:
    """Plan several occurrences at the same moment from several threads (each
    with its own connections, as separate processes would)."""
    import threading

    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def plan(c: Campaign, at: datetime) -> None:
        try:
            start.wait()
            plan_occurrence(engine, config, c, at, now=at, batch=40)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=plan, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_concurrent_planners_never_double_spend_the_frequency_cap(
    engine: Engine, tmp_path: Path
) -> None:
    """Two campaigns planned at once compete for each customer's one slot:
    whoever plans second sees the first one's messages."""
    config = make_config(tmp_path, frequency_cap={"max_messages": 1, "per": "7d"})
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": f"c{n:03d}",
                    "email": f"c{n:03d}@example.com",
                    "email_opt_in": True,
                    "timezone": "UTC",
                    "attributes": {},
                    "created_at": NOW - timedelta(days=400),
                }
                for n in range(400)
            ],
        )
    first, second = campaign(name="first", audience={}), campaign(name="second", audience={})
    _plan_together(engine, config, [(first, NOW), (second, NOW)])
    with engine.connect() as conn:
        per_customer = conn.execute(
            select(Message.customer_id, func.count())
            .where(Message.status == "planned")
            .group_by(Message.customer_id)
        ).all()
    assert len(per_customer) == 400 and max(n for _, n in per_customer) == 1


def test_two_occurrences_planned_at_once_message_nobody_twice(
    engine: Engine, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": f"c{n:03d}",
                    "email": f"c{n:03d}@example.com",
                    "email_opt_in": True,
                    "timezone": "UTC",
                    "attributes": {},
                    "created_at": NOW - timedelta(days=400),
                }
                for n in range(400)
            ],
        )
    once = campaign(audience={}, reentry="once", exempt_from_frequency_cap=True)
    _plan_together(engine, config, [(once, NOW), (once, NOW + timedelta(minutes=1))])
    with engine.connect() as conn:
        per_customer = conn.execute(
            select(Message.customer_id, func.count()).group_by(Message.customer_id)
        ).all()
    assert len(per_customer) == 400 and max(n for _, n in per_customer) == 1


def test_an_earlier_occurrence_planned_after_a_later_one_messages_nobody_twice(
    engine: Engine, tmp_path: Path
) -> None:
    """A restarted worker catches up 19:00 just after another planned 19:01:
    the 19:01 messages were planned later than 19:00, but they exist, and
    reentry (and the cap) must count them."""
    config = make_config(tmp_path, frequency_cap={"max_messages": 1, "per": "7d"})
    for n in range(5):
        add_customer(engine, f"c{n}")
    once = campaign(audience={}, reentry="once")
    minute = NOW + timedelta(minutes=1)
    later = plan_occurrence(engine, config, once, minute, now=minute)
    caught_up = plan_occurrence(engine, config, once, NOW, now=minute + timedelta(seconds=1))
    assert later.inserted == 5 and caught_up.inserted == 0
    assert caught_up.counts["reentry"] == 5
    other = plan_occurrence(engine, config, campaign(name="other", audience={}), NOW, now=minute)
    assert other.inserted == 0 and other.counts["frequency_cap"] == 5
