"""Every duration, date and instant engage accepts is bounded (issue 13, item 4).

``quiet_for: 100000000d`` used to pass ``validate`` and then crash ``calendar``,
``dry-run`` and ``run`` with an OverflowError; ``calendar --at 9999-12-31``
printed a traceback. Now the first is a located validation error and the
second a one-line error, through the installed ``engage`` command.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engage.timeutil import MAX_DURATION, parse_at, parse_duration, parse_instant

from .helpers import SECRET
from .installed import clean_env, engage, one_line_error


@pytest.mark.parametrize(
    "text", ["100000000d", "36501d", "5215w", "P99999999999W", "PT999999999999H", "10**9d"]
)
def test_durations_are_bounded(text: str) -> None:
    with pytest.raises(ValueError, match="too long|not a duration"):
        parse_duration(text)


def test_the_longest_duration_is_100_years() -> None:
    assert parse_duration("36500d") == MAX_DURATION == parse_duration("P36500D")
    assert parse_duration("5214w") == timedelta(weeks=5214)


@pytest.mark.parametrize("text", ["0001-01-01", "0001-01-01T00:00:00", "9999-12-31T23:00:00-05:00"])
def test_instants_at_the_edge_of_datetime_are_value_errors(text: str) -> None:
    from zoneinfo import ZoneInfo

    with pytest.raises(ValueError):
        parse_instant(text, ZoneInfo("Asia/Tokyo"))


def test_at_is_bounded() -> None:
    assert parse_at("2199-12-31T23:59:59Z") == datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_at("1970-01-01") == datetime(1970, 1, 1, tzinfo=UTC)
    for text in ("2200-01-01", "9999-12-31", "1969-12-31T23:59:59Z"):
        with pytest.raises(ValueError, match="out of range"):
            parse_at(text)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    engage("init", "proj", cwd=tmp_path)
    return tmp_path / "proj"


def _line_of(path: Path, needle: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


def test_validate_reports_out_of_range_durations_and_dates_at_their_line(proj: Path) -> None:
    winback = proj / "campaigns" / "winback-30d.yaml"
    text = winback.read_text()
    text = text.replace("quiet_for: 30d  ", "quiet_for: 100000000d")
    text = text.replace("active_within: 365d", "active_within: P99999999W")
    text = text.replace("start: 2026-01-01", "start: 0001-01-01")
    text = text.replace("end: null", "end: 9999-12-31")
    text = text.replace("reentry: after_activity", "reentry: 99999999999999999999d")
    winback.write_text(text)
    config = proj / "config.yaml"
    config.write_text(
        config.read_text()
        .replace("catch_up: 6h", "catch_up: 400d")
        .replace("per: 7d}", "per: 1000000000d}")
    )
    proc = engage("validate", cwd=proj, env=clean_env(ENGAGE_SECRET_KEY=SECRET), code=1)
    # A bad config.yaml is reported alone (campaigns are read with a valid config).
    assert f"config.yaml:{_line_of(config, 'catch_up:')}:11: catch_up: at most 30d" in proc.stdout
    per = _line_of(config, "frequency_cap:")
    assert re.search(
        rf"config.yaml:{per}:\d+: frequency_cap.per: duration .* too long", proc.stdout
    )
    config.write_text(
        config.read_text()
        .replace("catch_up: 400d", "catch_up: 6h")
        .replace("per: 1000000000d}", "per: 7d}")
    )
    proc = engage("validate", cwd=proj, env=clean_env(ENGAGE_SECRET_KEY=SECRET), code=1)
    shown = "campaigns/winback-30d.yaml"
    for needle, field, why in (
        ("quiet_for:", "audience.quiet_for", "duration '100000000d' is too long: at most 36500d"),
        ("active_within:", "audience.active_within", "duration 'P99999999W' is too long"),
        ("start:", "schedule.start", "0001-01-01 is out of range"),
        ("end:", "schedule.end", "9999-12-31 is out of range"),
        ("reentry:", "reentry", "duration '99999999999999999999d' is too long"),
    ):
        line = _line_of(winback, needle)
        assert re.search(
            rf"{shown}:{line}:\d+: {re.escape(field)}: {re.escape(why)}", proc.stdout
        ), (
            field,
            proc.stdout,
        )


def test_validate_reports_numbers_the_database_cannot_hold_at_their_line(proj: Path) -> None:
    """A threshold beyond its column (or a 64-bit integer) used to pass validate
    and then fail the campaign in SQL with an OverflowError."""
    winback = proj / "campaigns" / "winback-30d.yaml"
    winback.write_text(
        winback.read_text().replace(
            "  min_orders: 1              # bought at least once",
            "  min_orders: 99999999999999999999\n"
            "  min_points_balance: 2147483648\n"
            "  min_lifetime_value: 1000000000000\n"
            "  where: {visits: 9223372036854775808, score: .inf}",
        )
    )
    proc = engage("validate", cwd=proj, env=clean_env(ENGAGE_SECRET_KEY=SECRET), code=1)
    shown = "campaigns/winback-30d.yaml"
    for needle, field, why in (
        ("min_orders:", "audience.min_orders", "less than or equal to 2147483647"),
        ("min_points_balance:", "audience.min_points_balance", "less than or equal to 2147483647"),
        ("min_lifetime_value:", "audience.min_lifetime_value", "at most 999,999,999,999.99"),
        ("where:", "audience.where", "visits: 9223372036854775808 is beyond a 64-bit"),
    ):
        line = _line_of(winback, needle)
        assert re.search(
            rf"{shown}:{line}:\d+: {re.escape(field)}: .*{re.escape(why)}", proc.stdout
        ), (
            field,
            proc.stdout,
        )


@pytest.mark.parametrize("when", ["9999-12-31", "0001-01-01", "2200-01-01T00:00:00Z"])
def test_far_at_instants_are_one_line_errors_for_every_command(proj: Path, when: str) -> None:
    env = clean_env(ENGAGE_SECRET_KEY=SECRET)
    engage("db", "upgrade", cwd=proj, env=env)
    for args in (
        ["calendar"],
        ["dry-run", "winback-30d"],
        ["preview", "winback-30d", "--customer", "c1"],
        ["send", "winback-30d", "--yes"],
        ["customer", "c1"],
    ):
        proc = engage(*args, "--at", when, cwd=proj, env=env, code=1)
        assert "--at" in one_line_error(proc) and "out of range" in proc.stderr, args


def test_an_attribute_name_sqlite_cannot_quote_is_refused() -> None:
    from pydantic import ValidationError

    from engage.campaigns.schema import Audience

    with pytest.raises(ValidationError, match="cannot contain a double quote"):
        Audience.model_validate({"where": {'vip"': True}})
    assert Audience.model_validate({"where": {"vip.level": 1}}).where == {"vip.level": 1}
