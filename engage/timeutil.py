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
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    m = _ISO.match(text.strip().upper())
    if m and any(m.groupdict().values()):
        parts = {k: int(v) for k, v in m.groupdict().items() if v}
        return timedelta(
            weeks=parts.get("w", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    raise ValueError(f"not a duration: {text!r} (use 30d, 12h, 2w, 90m or ISO-8601 like P30D)")


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
            return datetime(d.year, d.month, d.day, tzinfo=default_tz).astimezone(UTC)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or datetime: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz)
    return value.astimezone(UTC)


def to_local(value: datetime, zone: tzinfo) -> datetime:
    return ensure_utc(value).astimezone(zone)


def isoformat_z(value: datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix, seconds precision (JSON contracts)."""
    return ensure_utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")
