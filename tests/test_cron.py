"""Campaign schedules: crontab meaning (not APScheduler's), DST, bounds.

Triggers are evaluated through ``get_next_fire_time(prev, now)`` with explicit
instants; nothing waits for a clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.base import BaseTrigger
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engage.campaigns.cron import next_occurrence, occurrences, parse_crontab, trigger_for
from engage.campaigns.schema import Campaign

NY = ZoneInfo("America/New_York")


def campaign(cron: str, tz: str = "America/New_York", **schedule: Any) -> Campaign:
    return Campaign.model_validate(
        {
            "name": "c",
            "schedule": {"cron": cron, "timezone": tz, **schedule},
            "audience": {},
            "channels": ["email"],
            "template": "t",
            "path": Path("campaigns/c.yaml"),
        }
    )


def local(c: Campaign, start: datetime, end: datetime) -> list[str]:
    zone = ZoneInfo(c.schedule.timezone)
    return [t.astimezone(zone).strftime("%a %d %H:%M") for t in occurrences(c, start, end)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Monday 2026-04-06 .. Sunday 2026-04-12 (New York, EDT all week).
WEEK = (utc(2026, 4, 6, 4), utc(2026, 4, 13, 4))


@pytest.mark.parametrize(
    ("cron", "days"),
    [
        ("0 10 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 10 * * 0-4", ["Mon", "Tue", "Wed", "Thu", "Sun"]),  # Sun-Thu, not Mon-Fri
        ("0 10 * * 0", ["Sun"]),
        ("0 10 * * 7", ["Sun"]),
        ("0 10 * * 5-7", ["Fri", "Sat", "Sun"]),
        ("0 10 * * 1,3,5", ["Mon", "Wed", "Fri"]),
        ("0 10 * * */2", ["Tue", "Thu", "Sat", "Sun"]),  # 0,2,4,6
        ("0 10 * * 1-5/2", ["Mon", "Wed", "Fri"]),
        ("0 10 * * sun", ["Sun"]),
        ("0 10 * * mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 10 * * SAT-SUN", ["Sat", "Sun"]),
        ("0 10 * * mon,thu", ["Mon", "Thu"]),
    ],
)
def test_day_of_week_has_crontab_meaning(cron: str, days: list[str]) -> None:
    fired = local(campaign(cron), *WEEK)
    assert [f.split()[0] for f in fired] == days
    assert all(f.endswith("10:00") for f in fired)


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    # "the 1st, and every Monday": April 2026 starts on a Wednesday.
    c = campaign("0 10 1 * 1")
    fired = local(c, utc(2026, 4, 1), utc(2026, 5, 1))
    assert fired == ["Wed 01 10:00", "Mon 06 10:00", "Mon 13 10:00", "Mon 20 10:00", "Mon 27 10:00"]


def test_friday_the_13th_is_not_an_and() -> None:
    # Vixie/cronie: "0 10 13 * 5" fires on every 13th and every Friday.
    fired = local(campaign("0 10 13 * 5"), utc(2026, 2, 1), utc(2026, 3, 1))
    assert fired == ["Fri 06 10:00", "Fri 13 10:00", "Fri 20 10:00", "Fri 27 10:00"]
    fired = local(campaign("0 10 13 * 5"), utc(2026, 4, 1), utc(2026, 5, 1))
    assert fired == ["Fri 03 10:00", "Fri 10 10:00", "Mon 13 10:00", "Fri 17 10:00", "Fri 24 10:00"]


def test_a_star_prefixed_day_field_means_and() -> None:
    # As in cron(8): a field starting with "*" is "unrestricted", so the two are ANDed:
    # odd days of the month that are also Mondays.
    fired = local(campaign("0 10 */2 * 1"), utc(2026, 4, 1), utc(2026, 5, 1))
    assert fired == ["Mon 13 10:00", "Mon 27 10:00"]


def test_ten_oclock_stays_ten_oclock_across_dst() -> None:
    c = campaign("0 10 * * *")
    spring = list(occurrences(c, utc(2026, 3, 6), utc(2026, 3, 10)))
    assert [t.hour for t in spring] == [15, 15, 14, 14]  # EST (-5) then EDT (-4), from Sun 8 March
    assert [t.astimezone(NY).hour for t in spring] == [10, 10, 10, 10]
    autumn = list(occurrences(c, utc(2026, 10, 30), utc(2026, 11, 3)))
    assert [t.hour for t in autumn] == [14, 14, 15, 15]  # EDT then EST, from Sun 1 November
    assert [t.astimezone(NY).hour for t in autumn] == [10, 10, 10, 10]
    assert all(t.tzinfo is UTC for t in spring + autumn)


def test_a_time_skipped_by_spring_forward_fires_once_at_the_jump() -> None:
    # 02:30 does not exist in New York on 2026-03-08: the job runs once, at
    # 07:30 UTC = 03:30 EDT, as cron does; never zero times, never twice.
    c = campaign("30 2 * * *")
    fired = list(occurrences(c, utc(2026, 3, 7), utc(2026, 3, 10)))
    assert fired == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    assert [t.astimezone(NY).strftime("%d %H:%M") for t in fired] == [
        "07 02:30",
        "08 03:30",
        "09 02:30",
    ]
    # Same answer when the window starts inside the skipped hour.
    assert list(occurrences(c, utc(2026, 3, 8, 7, 10), utc(2026, 3, 9))) == [utc(2026, 3, 8, 7, 30)]


def test_a_time_repeated_by_fall_back_fires_once() -> None:
    # 01:30 happens twice on 2026-11-01 (EDT, then EST): a fixed-time job runs
    # at the first one only.
    c = campaign("30 1 * * *")
    fired = list(occurrences(c, utc(2026, 10, 31), utc(2026, 11, 3)))
    assert fired == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    # Starting between the two 01:30s does not bring the second one back.
    assert list(occurrences(c, utc(2026, 11, 1, 6), utc(2026, 11, 2))) == []


def test_interval_jobs_follow_real_time_across_dst() -> None:
    c = campaign("*/30 * * * *")
    autumn = local(c, utc(2026, 11, 1, 4), utc(2026, 11, 1, 7, 1))
    assert [f[-5:] for f in autumn] == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "01:00",
        "01:30",
        "02:00",
    ]
    spring = local(c, utc(2026, 3, 8, 5), utc(2026, 3, 8, 7, 31))
    assert [f[-5:] for f in spring] == ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30"]


def test_start_and_end_are_inclusive_local_dates() -> None:
    c = campaign("30 23 * * *", start="2026-03-10", end="2026-03-12")
    fired = list(occurrences(c, utc(2026, 3, 1), utc(2026, 4, 1)))
    # 23:30 EDT on the 12th is 03:30 UTC on the 13th: still inside the end date.
    assert fired == [utc(2026, 3, 11, 3, 30), utc(2026, 3, 12, 3, 30), utc(2026, 3, 13, 3, 30)]
    midnight = campaign("0 0 * * *", start="2026-03-10", end="2026-03-10")
    assert list(occurrences(midnight, utc(2026, 3, 1), utc(2026, 4, 1))) == [utc(2026, 3, 10, 4)]


def test_next_occurrence_is_strictly_after_and_ends_with_the_schedule() -> None:
    c = campaign("0 10 * * *", end="2026-03-12")
    ten = utc(2026, 3, 11, 14)
    assert next_occurrence(c, ten - timedelta(seconds=1)) == ten
    assert next_occurrence(c, ten) == utc(2026, 3, 12, 14)
    assert next_occurrence(c, utc(2026, 3, 12, 14)) is None
    # Naive means UTC.
    assert next_occurrence(c, datetime(2026, 3, 11, 13)) == ten


def test_trigger_for_is_an_apscheduler_trigger() -> None:
    c = campaign("0 10 * * 0-4")
    trigger = trigger_for(c.schedule)
    assert isinstance(trigger, BaseTrigger)
    first = trigger.get_next_fire_time(None, utc(2026, 4, 10, 12))  # a Friday
    assert first == utc(2026, 4, 12, 14)  # Sunday 10:00 EDT
    assert trigger.get_next_fire_time(first, first) == utc(2026, 4, 13, 14)


def test_macros() -> None:
    fired = local(campaign("@weekly"), *WEEK)
    assert fired == ["Sun 12 00:00"]


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 25 * * *", "hour: 25 is out of range 0-23"),
        ("0 10 * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 10 * * 8", "day-of-week: 8 is out of range 0-7"),
        ("0 10 * * fri-mon", "day-of-week: range fri-mon runs backwards"),
        ("0 10 31 2 *", "never fires"),
        ("*/0 * * * *", "minute: step must be at least 1"),
        ("5/10 * * * *", "minute: a step needs a range or *"),
        ("0 10 L * *", "day-of-month: 'l' is not a number"),
        ("0 10 * * mon#2", "day-of-week: cannot read 'mon#2'"),
    ],
)
def test_bad_crontabs_say_why(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match="bad cron") as info:
        parse_crontab(cron)
    assert message in str(info.value)


# ---------------------------------------------------------------- properties

FIELDS = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 7)}
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@st.composite
def cron_field(draw: st.DrawFn, kind: str) -> tuple[str, set[int]]:
    """A crontab field as text, and the set of values it means (computed independently)."""
    low, high = FIELDS[kind]

    def show(v: int) -> str:
        if kind == "dow" and draw(st.booleans()):
            return DAY_NAMES[v]
        return str(v)

    items = []
    values: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        form = draw(st.sampled_from(["star", "star-step", "one", "range", "range-step"]))
        if form == "star":
            items.append("*")
            values |= set(range(low, high + 1))
        elif form == "star-step":
            step = draw(st.integers(1, high))
            items.append(f"*/{step}")
            values |= set(range(low, high + 1, step))
        elif form == "one":
            v = draw(st.integers(low, high))
            items.append(show(v))
            values.add(v)
        else:
            a = draw(st.integers(low, high))
            b = draw(st.integers(a, high))
            if kind == "dow" and b == 0:
                b = a  # "sun-sun"
            step = draw(st.integers(1, 5)) if form == "range-step" else 1
            # "0-sun" means Sunday only (a named Sunday is day 7 only when the
            # range starts after Sunday), so the whole week from 0 is "0-7".
            end = "7" if kind == "dow" and a == 0 and b == 7 else show(b)
            # A named Sunday that starts a range is day 0 ("sun-7" is the whole
            # week, as in cronie), so a range from day 7 is written "7-...".
            begin = "7" if kind == "dow" and a == 7 else show(a)
            items.append(f"{begin}-{end}" + (f"/{step}" if form == "range-step" else ""))
            values |= set(range(a, b + 1, step))
    if kind == "dow":
        values = {v % 7 for v in values}
    return ",".join(items), values


@st.composite
def crontabs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    texts, sets = {}, {}
    for kind in FIELDS:
        if kind in ("minute", "hour") or draw(st.booleans()):
            texts[kind], sets[kind] = draw(cron_field(kind))
        else:
            texts[kind], sets[kind] = "*", set(range(FIELDS[kind][0], FIELDS[kind][1] + 1))
    sets["ored"] = not texts["dom"].startswith("*") and not texts["dow"].startswith("*")
    sets["dow"] = {v % 7 for v in sets["dow"]}
    return " ".join(texts[k] for k in FIELDS), sets


def matches(sets: dict[str, Any], t: datetime) -> bool:
    dom_ok = t.day in sets["dom"]
    dow_ok = (t.weekday() + 1) % 7 in sets["dow"]
    day_ok = (dom_ok or dow_ok) if sets["ored"] else (dom_ok and dow_ok)
    return (
        t.minute in sets["minute"]
        and t.hour in sets["hour"]
        and t.month in sets["month"]
        and day_ok
    )


instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def _campaign_or_skip(cron: str, tz: str) -> Campaign:
    try:
        parse_crontab(cron)
    except ValueError as exc:
        assume("never fires" not in str(exc))
        raise
    return campaign(cron, tz)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=crontabs(),
    start=instants,
    hours=st.integers(0, 48),
    tz=st.sampled_from(["UTC", "Asia/Kolkata"]),  # no DST: plain wall-clock matching
)
def test_occurrences_match_a_brute_force_crontab(
    spec: tuple[str, dict[str, Any]], start: datetime, hours: int, tz: str
) -> None:
    cron, sets = spec
    c = _campaign_or_skip(cron, tz)
    end = start + timedelta(hours=hours)
    zone = ZoneInfo(tz)
    expected = []
    t = start.replace(second=0, microsecond=0)
    if t < start:
        t += timedelta(minutes=1)
    while t < end:
        if matches(sets, t.astimezone(zone)):
            expected.append(t)
        t += timedelta(minutes=1)
    assert list(occurrences(c, start, end)) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=crontabs(),
    start=instants,
    first=st.integers(0, 36 * 60),
    second=st.integers(0, 36 * 60),
    tz=st.sampled_from(["America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC"]),
    bounds=st.one_of(
        st.none(), st.tuples(st.dates(date(2025, 1, 1), date(2029, 1, 10)), st.integers(0, 5))
    ),
)
def test_occurrences_lie_in_the_window_increase_and_do_not_depend_on_where_it_is_cut(
    spec: tuple[str, dict[str, Any]],
    start: datetime,
    first: int,
    second: int,
    tz: str,
    bounds: tuple[date, int] | None,
) -> None:
    cron, _ = spec
    _campaign_or_skip(cron, tz)
    extra = (
        {} if bounds is None else {"start": bounds[0], "end": bounds[0] + timedelta(days=bounds[1])}
    )
    c = campaign(cron, tz, **extra)
    middle = start + timedelta(minutes=first)
    end = middle + timedelta(minutes=second)
    whole = list(occurrences(c, start, end))
    assert all(t.tzinfo is UTC and start <= t < end for t in whole)
    assert all(a < b for a, b in zip(whole, whole[1:], strict=False))
    assert whole == list(occurrences(c, start, middle)) + list(occurrences(c, middle, end))
    if bounds is not None:
        zone = ZoneInfo(tz)
        assert all(bounds[0] <= t.astimezone(zone).date() <= extra["end"] for t in whole)
    if len(whole) > 1:
        assert next_occurrence(c, whole[0]) == whole[1]
