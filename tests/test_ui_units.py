"""The web interface's pure parts: passwords and cookies, the calendar grid
across DST, campaign colours, chart geometry, the estimate cache, packaging."""

from __future__ import annotations

import threading
import time
import tomllib
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatch
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engage.campaigns.schema import Campaign
from engage.web.ui import charts
from engage.web.ui.auth import (
    Sessions,
    Signer,
    Throttle,
    Users,
    UsersError,
    hash_password,
    verify_password,
)
from engage.web.ui.calendar_view import PALETTE_SIZE, colours, first_weekday, make_grid
from engage.web.ui.estimates import EstimateCache

from .helpers import ROOT, make_config

NY = ZoneInfo("America/New_York")


# -- passwords and sessions -----------------------------------------------------------
def test_password_hashes_verify_and_are_salted() -> None:
    a, b = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("s3cret-pass", a) and verify_password("s3cret-pass", b)
    assert not verify_password("s3cret-Pass", a)
    assert not verify_password("s3cret-pass", a[:-4] + "AAAA")
    assert not verify_password("x", "md5$abc") and not verify_password("x", "garbage")


def test_users_from_the_environment() -> None:
    assert Users.from_secrets({}) is None
    assert Users.from_secrets({"ENGAGE_UI_PASSWORD": ""}) is None
    shared = Users.from_secrets({"ENGAGE_UI_PASSWORD": "pw"})
    assert shared is not None and not shared.named
    assert shared.check("", "pw") == "admin" and shared.check("admin", "pw") == "admin"
    assert shared.check("", "PW") is None and shared.check("eve", "pw") is None
    named = Users.from_secrets({"ENGAGE_UI_USERS": f" ana:{hash_password('x1')} ,\n"})
    assert named is not None and named.named
    assert named.check("ana", "x1") == "ana" and named.check("ana", "x2") is None
    assert named.check("bob", "x1") is None
    for bad in ("ana", "ana:", ":scrypt$1$2$3$4$5", "ana:scrypt$1$2"):
        with pytest.raises(UsersError):
            Users.from_secrets({"ENGAGE_UI_USERS": bad})


def test_sessions_are_signed_expire_and_follow_the_password() -> None:
    users = Users.from_secrets({"ENGAGE_UI_PASSWORD": "pw"})
    assert users is not None
    sessions = Sessions(Signer("k" * 32), users, max_age=3600)
    session, cookie = sessions.open("admin", now=1_000_000)
    assert sessions.read(cookie, now=1_000_100) == session
    assert sessions.read(cookie, now=1_000_000 + 3601) is None  # expired
    assert cookie.startswith("YWRtaW4|")  # base64 of admin
    assert sessions.read("cm9vdA" + cookie[7:], now=1_000_100) is None  # root: not signed
    assert Sessions(Signer("other-key"), users).read(cookie, now=1_000_100) is None
    changed = Users.from_secrets({"ENGAGE_UI_PASSWORD": "new"})
    assert changed is not None
    assert Sessions(Signer("k" * 32), changed).read(cookie, now=1_000_100) is None
    for junk in ("", ".", "a.b", "x" * 500, cookie + "x"):
        assert sessions.read(junk, now=1_000_100) is None


def test_throttle_counts_failures_per_address_within_the_window() -> None:
    t = Throttle(limit=3, window=60)
    for _ in range(3):
        assert not t.blocked("1.2.3.4", now=100)
        t.failed("1.2.3.4", now=100)
    assert t.blocked("1.2.3.4", now=120) and not t.blocked("5.6.7.8", now=120)
    assert not t.blocked("1.2.3.4", now=161)  # the window passed
    t.failed("5.6.7.8", now=200)
    t.failed("5.6.7.8", now=200)
    t.succeeded("5.6.7.8")  # a success forgets the failures before it
    t.failed("5.6.7.8", now=201)
    t.failed("5.6.7.8", now=201)
    assert not t.blocked("5.6.7.8", now=202)
    t.failed("5.6.7.8", now=202)
    assert t.blocked("5.6.7.8", now=203)


# -- the calendar grid ------------------------------------------------------------------
def test_month_grid_starts_on_the_locales_first_weekday() -> None:
    assert first_weekday("en_US") == 6 and first_weekday("fr_FR") == 0
    assert first_weekday("xx_nope") == 0
    us = make_grid("month", date(2026, 3, 15), NY, 6, date(2026, 3, 4))
    assert us.days[0].date == date(2026, 3, 1) and us.days[-1].date == date(2026, 4, 4)
    assert len(us.days) % 7 == 0
    fr = make_grid("month", date(2026, 3, 15), ZoneInfo("Europe/Paris"), 0, date(2026, 3, 4))
    assert fr.days[0].date == date(2026, 2, 23) and fr.days[-1].date == date(2026, 4, 5)
    assert [d.today for d in us.days].count(True) == 1
    assert us.previous() == date(2026, 2, 1) and us.next() == date(2026, 4, 1)


def test_grid_bounds_and_day_lengths_follow_the_zone() -> None:
    week = make_grid("week", date(2026, 3, 10), NY, 6, date(2026, 3, 4))
    assert [d.date.day for d in week.days] == [8, 9, 10, 11, 12, 13, 14]
    assert [d.hours for d in week.days] == [23, 24, 24, 24, 24, 24, 24]
    assert week.start == datetime(2026, 3, 8, 5, tzinfo=UTC)  # midnight EST
    assert week.end == datetime(2026, 3, 15, 4, tzinfo=UTC)  # midnight EDT
    fall = make_grid("week", date(2026, 11, 1), NY, 6, date(2026, 3, 4))
    assert fall.days[0].hours == 25


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)),
       st.sampled_from(["UTC", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
       st.integers(0, 6))
def test_grids_are_whole_contiguous_weeks_holding_the_anchor(
    anchor: date, zone: str, week_start: int
) -> None:
    for view in ("month", "week"):
        grid = make_grid(view, anchor, ZoneInfo(zone), week_start, anchor)
        days = [d.date for d in grid.days]
        assert len(days) % 7 == 0 and days[0].weekday() == week_start
        assert all(b - a == timedelta(days=1) for a, b in zip(days, days[1:], strict=False))
        assert anchor in days
        assert grid.start < grid.end
        assert sum(d.hours for d in grid.days) == (grid.end - grid.start) / timedelta(hours=1)


def test_campaign_colours_are_stable_as_campaigns_come_and_go() -> None:
    names = [f"campaign-{i}" for i in range(6)]
    first = colours(names)
    assert len(set(first.values())) == 6 and all(0 <= v < PALETTE_SIZE for v in first.values())
    fewer = colours(names[:3] + names[4:])
    assert sum(fewer[n] == first[n] for n in fewer) >= 4
    many = colours([f"c{i}" for i in range(25)])
    assert len(set(many.values())) == PALETTE_SIZE


# -- charts ----------------------------------------------------------------------------------
def test_nice_scales() -> None:
    assert [charts.nice_max(v) for v in (0, 1, 3, 34, 120, 2400, 7001)] == [
        1, 1, 5, 50, 200, 2500, 10000]
    assert charts.ticks(50) == [0, 10, 20, 30, 40, 50]
    assert charts.ticks(200) == [0, 50, 100, 150, 200]


def test_bars_columns_and_intervals_geometry() -> None:
    bars = charts.bars([("reentry", 30, "skip"), ("send", 60, "send"), ("cap", 10, "skip")])
    assert [b.label for b in bars] == ["send", "reentry", "cap"]
    assert [round(b.percent) for b in bars] == [100, 50, 17]
    assert [round(b.share) for b in bars] == [60, 30, 10]
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(30)]
    col = charts.columns(days, [[i for i in range(30)], [i // 2 for i in range(30)]])
    assert len(col.columns) == 30 and not col.empty
    top = col.columns[-1]
    assert top.ys[0] >= col.plot_top and top.ys[0] + top.heights[0] == pytest.approx(col.plot_bottom)
    assert sum(c.show_label for c in col.columns) <= 12
    assert charts.columns(days, [[0] * 30, [0] * 30]).empty
    iv = charts.intervals([("a", "recipients", 0.1, (0.08, 0.12)), ("b", "holdout", 0.05, None)])
    a, b = iv.rows
    assert iv.left <= a.x_low < a.x < a.x_high <= iv.right and b.x_low == b.x == b.x_high
    lift = charts.intervals([("a", "lift", 0.02, (-0.01, 0.05))], symmetric=True)
    assert lift.zero is not None and lift.rows[0].x_low < lift.zero < lift.rows[0].x
    line = charts.line(days[:3], [1, None, 3], unit="%")
    assert line is not None and line.points.count(",") == 2
    assert charts.line(days[:2], [None, None]) is None


# -- estimates ----------------------------------------------------------------------------------
def _campaign(name: str, audience: dict[str, object]) -> Campaign:
    return Campaign.model_validate({
        "name": name, "schedule": {"cron": "0 10 * * *", "timezone": "UTC"},
        "audience": audience, "channels": ["email"], "template": "winback",
    })


def test_estimates_are_counted_once_in_the_background_and_recounted_when_stale(
    tmp_path: Path, sqlite_engine: object
) -> None:
    now = [datetime(2026, 3, 4, tzinfo=UTC)]
    calls: list[tuple[str, datetime]] = []
    gate = threading.Event()

    def count(campaign: Campaign, at: datetime) -> int:
        gate.wait(5)
        calls.append((campaign.name, at))
        return len(calls)

    cache = EstimateCache(sqlite_engine, make_config(tmp_path),  # type: ignore[arg-type]
                          ttl=timedelta(hours=1), clock=lambda: now[0], count=count)
    a = _campaign("a", {"quiet_for": "30d"})
    at1, at2 = now[0] + timedelta(days=1), now[0] + timedelta(days=2)
    assert cache.lookup([(a, at2), (a, at1)], wait=0) == {}  # queued, nothing yet
    assert cache.pending() == 2
    cache.lookup([(a, at1)], wait=0)  # asking again queues nothing new
    gate.set()
    found = cache.lookup([(a, at1), (a, at2)], wait=5)
    assert len(found) == 2 and cache.pending() == 0
    assert calls == [("a", at1), ("a", at2)]  # nearest occurrence first, each once
    # an edited audience is another estimate; a stale one is shown while recounted
    edited = _campaign("a", {"quiet_for": "60d"})
    assert cache.lookup([(edited, at1)], wait=5)
    now[0] += timedelta(hours=2)
    stale = cache.lookup([(a, at1)], wait=0)
    assert len(stale) == 1
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) == 4


def test_a_failing_count_does_not_stop_the_worker(tmp_path: Path, sqlite_engine: object) -> None:
    def count(campaign: Campaign, at: datetime) -> int:
        if campaign.name == "bad":
            raise RuntimeError("database went away")
        return 7

    cache = EstimateCache(sqlite_engine, make_config(tmp_path), count=count)  # type: ignore[arg-type]
    at = datetime(2026, 3, 5, tzinfo=UTC)
    got = cache.lookup([(_campaign("bad", {}), at), (_campaign("good", {}), at)], wait=5)
    assert [e.size for e in got.values()] == [7] and cache.failures == 1


# -- packaging -----------------------------------------------------------------------------------
def test_every_template_and_static_file_ships_in_the_wheel() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["engage"]
    ui = ROOT / "engage" / "web" / "ui"
    files = [p for folder in ("templates", "static") for p in (ui / folder).rglob("*")
             if p.is_file()]
    assert len(files) >= 10
    for f in files:
        rel = f.relative_to(ROOT / "engage").as_posix()
        assert any(fnmatch(rel, pat) for pat in patterns), rel
