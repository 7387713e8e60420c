"""The pure decision rules of SPEC §5, one by one, with properties where rules have invariants."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.config import Config, FrequencyCap, Window
from engage.customers.recipients import Recipient
from engage.planning.policy import (
    CampaignRules,
    History,
    Suppressions,
    choose_channel,
    decide,
    effective_window,
    holdout_bucket,
    in_window,
    is_held_out,
    next_send_time,
    reentry_allows,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def person(cid: str = "c1", **kw) -> Recipient:
    base = dict(
        customer_id=cid,
        email="ann@example.com",
        phone="+12025550123",
        first_name="Ann",
        last_name="Lee",
        timezone="UTC",
        locale="en_US",
        tier=None,
        attributes={},
        email_opt_in=True,
        sms_opt_in=True,
        created_at=NOW - timedelta(days=400),
        last_activity=NOW - timedelta(days=40),
    )
    base.update(kw)
    return Recipient(**base)


CFG = Config()
NONE = Suppressions()


def test_channel_reachability_and_consent() -> None:
    assert choose_channel(person(), ["email", "sms"], CFG, NONE) == (
        "email",
        "ann@example.com",
        None,
    )
    assert choose_channel(person(email=None), ["email", "sms"], CFG, NONE)[0] == "sms"
    assert choose_channel(person(email=None, phone=None), ["email", "sms"], CFG, NONE) == (
        None,
        None,
        "no_address",
    )
    assert choose_channel(person(email="nope"), ["email"], CFG, NONE)[2] == "invalid_address"
    assert choose_channel(person(phone="2025550123"), ["sms"], CFG, NONE)[2] == "invalid_address"
    # sms_opt_in is always required; email_opt_in unless config says otherwise
    assert choose_channel(person(sms_opt_in=False), ["sms"], CFG, NONE)[2] == "no_consent"
    assert choose_channel(person(email_opt_in=False), ["email"], CFG, NONE)[2] == "no_consent"
    relaxed = Config(require_email_opt_in=False)
    assert choose_channel(person(email_opt_in=False), ["email"], relaxed, NONE)[0] == "email"
    # the first channel's reason is reported when none works
    r = person(email_opt_in=False, phone=None)
    assert choose_channel(r, ["email", "sms"], CFG, NONE) == (None, None, "no_consent")


def test_suppressions_always_win_by_address_or_customer() -> None:
    by_address = Suppressions.of([("email", "ANN@example.com ", None)])
    assert choose_channel(person(), ["email"], CFG, by_address) == (None, None, "suppressed")
    # falls through to the next reachable channel
    assert choose_channel(person(), ["email", "sms"], CFG, by_address)[0] == "sms"
    # an unsubscribed customer stays unsubscribed after changing address
    by_customer = Suppressions.of([("email", "old@example.com", "c1")])
    assert choose_channel(person(), ["email"], CFG, by_customer)[2] == "suppressed"
    # a suppression on one channel does not block the other
    assert choose_channel(person(), ["sms"], CFG, by_customer)[0] == "sms"


def test_reentry_rules() -> None:
    sent = NOW - timedelta(days=10)
    assert reentry_allows("once", None, NOW, NOW)
    assert not reentry_allows("once", sent, NOW, NOW)
    assert not reentry_allows("after_activity", sent, sent - timedelta(days=1), NOW)
    assert not reentry_allows("after_activity", sent, sent, NOW)
    assert reentry_allows("after_activity", sent, sent + timedelta(seconds=1), NOW)
    assert not reentry_allows(timedelta(days=14), sent, NOW, NOW)
    assert reentry_allows(timedelta(days=10), sent, NOW, NOW)


def test_holdout_share_and_stability() -> None:
    ids = [f"cust-{n}" for n in range(10_000)]
    held = [c for c in ids if is_held_out("winback-30d", c, 0.10)]
    assert abs(len(held) / len(ids) - 0.10) <= 0.02
    assert held == [c for c in ids if is_held_out("winback-30d", c, 0.10)]  # stable
    other = {c for c in ids if is_held_out("vip-thanks", c, 0.10)}
    assert len(other & set(held)) < len(held) / 2  # independent between campaigns
    assert not any(is_held_out("x", c, 0.0) for c in ids[:100])
    assert all(is_held_out("x", c, 1.0) for c in ids[:100])


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_holdout_bucket_in_unit_interval(campaign: str, cid: str) -> None:
    b = holdout_bucket(campaign, cid)
    assert 0 <= b < 1 and b == holdout_bucket(campaign, cid)


def test_window_examples_tokyo_and_new_york() -> None:
    window = Window(start=time(9), end=time(20))
    tokyo, ny = ZoneInfo("Asia/Tokyo"), ZoneInfo("America/New_York")
    # 23:00 local in Tokyo -> 09:00 next morning Tokyo
    at = datetime(2026, 6, 15, 23, 0, tzinfo=tokyo).astimezone(UTC)
    assert next_send_time(at, tokyo, window) == datetime(2026, 6, 16, 9, 0, tzinfo=tokyo)
    # 23:00 local in New York -> 09:00 next morning New York (EDT)
    at = datetime(2026, 6, 15, 23, 0, tzinfo=ny).astimezone(UTC)
    assert next_send_time(at, ny, window) == datetime(2026, 6, 16, 9, 0, tzinfo=ny)
    # across the DST change: 23:00 EDT on Sat 2026-10-31 -> 09:00 EST on Sun 2026-11-01
    at = datetime(2026, 10, 31, 23, 0, tzinfo=ny).astimezone(UTC)
    nxt = next_send_time(at, ny, window)
    assert nxt == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)  # 09:00 EST = 14:00 UTC
    # and spring forward: 23:00 EST Sat 2026-03-07 -> 09:00 EDT = 13:00 UTC
    at = datetime(2026, 3, 7, 23, 0, tzinfo=ny).astimezone(UTC)
    assert next_send_time(at, ny, window) == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    # early morning: same day's opening; inside the window: now
    at = datetime(2026, 6, 15, 6, 30, tzinfo=ny).astimezone(UTC)
    assert next_send_time(at, ny, window) == datetime(2026, 6, 15, 9, 0, tzinfo=ny)
    at = datetime(2026, 6, 15, 19, 59, tzinfo=ny).astimezone(UTC)
    assert next_send_time(at, ny, window) == at


def test_sms_window_is_clipped_to_config_window() -> None:
    wide = Window(start=time(6), end=time(23))
    assert effective_window("sms", wide, CFG) == CFG.send_windows.sms
    assert effective_window("email", wide, CFG) == wide
    narrow = Window(start=time(12), end=time(14))
    assert effective_window("sms", narrow, CFG) == narrow
    assert effective_window("sms", None, CFG) == Window(start=time(9), end=time(20))
    with pytest.raises(ValueError, match="08:00-21:00"):
        Config.model_validate({"send_windows": {"sms": {"start": "07:00", "end": "20:00"}}})


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
]


@settings(max_examples=300, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)),
    zone=st.sampled_from(ZONES),
    start=st.integers(0, 22),
    length=st.integers(1, 23),
)
def test_planned_time_never_before_now_and_inside_window(at, zone, start, length) -> None:
    at = at.replace(tzinfo=UTC)
    end = (start + length) % 24
    window = Window(start=time(start), end=time(end) if end else time(23, 59, 59, 999999))
    tz = ZoneInfo(zone)
    nxt = next_send_time(at, tz, window)
    assert nxt >= at
    assert nxt - at < timedelta(days=1, hours=2)
    local = nxt.astimezone(tz).time()
    # inside the window, or just after a start that fell in a DST gap
    assert (
        in_window(local, window)
        or nxt.astimezone(tz).utcoffset()
        != datetime.combine(nxt.astimezone(tz).date(), window.start, tzinfo=tz).utcoffset()
    )


def test_decide_order_and_frequency_cap() -> None:
    rules = CampaignRules(
        name="winback", channels=("email", "sms"), reentry="once", holdout=0.0, priority=50
    )
    r = person()
    d = decide(r, rules, CFG, NOW, NONE, History())
    assert (d.action, d.channel, d.address) == ("send", "email", "ann@example.com")
    assert d.send_at == NOW
    # reentry before cap
    d = decide(r, rules, CFG, NOW, NONE, History(last_sent=NOW - timedelta(days=100), cap_used=9))
    assert d.reason == "reentry"
    # cap full -> skip; full but a lower-priority planned message can be preempted -> send
    cap = FrequencyCap(max_messages=2, per=timedelta(days=7))
    assert decide(r, rules, CFG, NOW, NONE, History(cap_used=2), cap).reason == "frequency_cap"
    d = decide(r, rules, CFG, NOW, NONE, History(cap_used=2, preemptable=1), cap)
    assert d.action == "send" and d.preempts
    exempt = CampaignRules(name="t", channels=("email",), exempt_from_frequency_cap=True)
    assert decide(r, exempt, CFG, NOW, NONE, History(cap_used=50), cap).action == "send"
    # holdout is a recorded skip with a planned time
    always = CampaignRules(name="h", channels=("email",), holdout=1.0)
    d = decide(r, always, CFG, NOW, NONE, History())
    assert (d.action, d.reason, d.held_out) == ("skip", "held_out", True) and d.send_at == NOW


def test_a_decision_row_makes_the_same_frozen_recipient_as_the_constructor() -> None:
    """``decision_row_to_recipient`` fills the instance's fields directly (for
    speed): every field is set, it equals what ``Recipient(...)`` makes and it
    stays immutable."""
    import dataclasses

    from engage.customers.recipients import decision_row_to_recipient

    config = Config(timezone="Europe/Paris", locale="fr-FR")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    got = decision_row_to_recipient(("c1", "a@b.example", None, None, 1, 0, at, at), config)
    assert set(vars(got)) == {f.name for f in dataclasses.fields(Recipient)}
    assert got == person(
        "c1",
        email="a@b.example",
        phone=None,
        first_name=None,
        last_name=None,
        timezone="Europe/Paris",
        locale="fr-FR",
        sms_opt_in=False,
        created_at=at,
        last_activity=at,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.email = "b@b.example"  # type: ignore[misc]
