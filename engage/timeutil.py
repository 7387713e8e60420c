"""Time helpers: durations, UTC-aware instants, parsing ``--at`` values."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_SHORT = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_ISO = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Bounds on what campaign files, config and ``--at`` may ask for. Everything
# engage computes from them (as_of - quiet_for, a calendar's last day, the
# day after a schedule's end) then stays far inside what datetime can hold,
# so a typo such as ``quiet_for: 100000000d`` is a validation error at its
# line, never an OverflowError in the middle of planning.
MAX_DURATION = timedelta(days=36500)  # 100 years
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
EARLIEST_DATE = EARLIEST.date()
LATEST_DATE = date(2199, 12, 31)


def parse_duration(text: str | int | timedelta) -> timedelta:
    """Parse ``30d``, ``12h``, ``2w``, ``90m``, ``45s`` or ISO-8601 ``P30D``/``PT12H``.

    Raises ValueError with a readable message for anything else.
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a duration such as 30d, 12h, 2w or P30D, got {text!r}")
    m = _SHORT.match(text)
    if m:
        return _bounded(text, int(m.group(1)) * _SECONDS[m.group(2)])
    m = _ISO.match(text.strip().upper())
    if m and any(m.groupdict().values()):
        parts = {k: int(v) for k, v in m.groupdict().items() if v}
        return _bounded(text, sum(n * _SECONDS[unit] for unit, n in parts.items()))
    raise ValueError(f"not a duration: {text!r} (use 30d, 12h, 2w, 90m or ISO-8601 like P30D)")


def _bounded(text: str, seconds: int) -> timedelta:
    """Whole seconds -> timedelta, refusing more than ``MAX_DURATION``
    (checked on the integer: ``timedelta`` itself overflows past 999,999,999 days)."""
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(
            f"duration {text.strip()!r} is too long: at most {MAX_DURATION.days}d (100 years)"
        )
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def utcnow() -> datetime:
    """The one place engage reads the wall clock; pass the result down."""
    return datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def get_zone(name: str) -> ZoneInfo:
    """ZoneInfo for an IANA name; ValueError with a readable message otherwise."""
    try:
        if not name or name != name.strip():
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)"
        ) from None


def parse_instant(text: str, default_tz: tzinfo = UTC) -> datetime:
    """Parse an ISO-8601 date or datetime into an aware UTC datetime.

    A datetime without an offset is in ``default_tz``; a bare date means
    midnight in ``default_tz``. ``Z`` is accepted as UTC.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty date/time")
    try:
        if len(raw) == 10 and raw[4] == "-":
            d = date.fromisoformat(raw)
            value = datetime(d.year, d.month, d.day, tzinfo=default_tz)
        else:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or datetime: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it
        raise ValueError(f"date/time out of range: {text!r}") from None


def parse_at(text: str, default_tz: tzinfo = UTC) -> datetime:
    """``parse_instant`` for an "as of" moment (``--at``), within the supported
    range: [1970-01-01, 2200-01-01) UTC."""
    value = parse_instant(text, default_tz)
    check_instant(value, text)
    return value


def check_instant(value: datetime, shown: str | None = None) -> None:
    """ValueError unless ``value`` lies in [EARLIEST, LATEST)."""
    if not EARLIEST <= value < LATEST:
        what = shown if shown is not None else isoformat_z(value)
        raise ValueError(
            f"{what!r} is out of range: engage works with instants from "
            f"{EARLIEST_DATE} to {LATEST_DATE}"
        )


def to_local(value: datetime, zone: tzinfo) -> datetime:
    return ensure_utc(value).astimezone(zone)


def isoformat_z(value: datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix, seconds precision (JSON contracts)."""
    return ensure_utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")
