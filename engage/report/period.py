"""The period a report covers, and how it is cut into buckets for charts.

A period is half-open, ``[start, end)``: an instant exactly at ``start``
belongs to it, one exactly at ``end`` belongs to the next period. From the
command line it is a range of whole local days in the config zone,
``--from`` and ``--to`` both included, so ``--from 2026-03-01 --to
2026-03-31`` is ``[Mar 1 00:00, Apr 1 00:00)`` local time, whatever DST does
in between. A period that would end in the future ends now instead
(``partial``), so every figure reads the data that exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from ..errors import EngageError
from ..timeutil import ensure_utc

DEFAULT_DAYS = 30
MAX_BUCKETS = 400  # a chart never gets more points than this


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant ``day`` begins in ``zone`` (after a gap, when midnight is skipped)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC, with the equal-length period right before it
    (``[previous_start, start)``: churn compares the two)."""

    start: datetime
    end: datetime
    previous_start: datetime
    zone: ZoneInfo
    first_day: date | None = None  # the local days, when the period is whole days
    last_day: date | None = None
    partial: bool = False  # asked to end in the future: ends at ``now``

    @classmethod
    def of_days(
        cls, first: date | None, last: date | None, zone: ZoneInfo, now: datetime
    ) -> Period:
        """The local days ``first``..``last`` (both included). Defaults: the
        last 30 complete days (``last`` = yesterday, ``first`` = 29 days before)."""
        today = ensure_utc(now).astimezone(zone).date()
        if last is None:
            last = today - timedelta(days=1) if first is None else max(today, first)
        if first is None:
            first = last - timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise EngageError(f"--from {first} is after --to {last}")
        start = local_midnight(first, zone)
        if start > ensure_utc(now):
            raise EngageError(f"the period starts in the future ({first})")
        end = local_midnight(last + timedelta(days=1), zone)
        days = (last - first).days + 1
        previous_start = local_midnight(first - timedelta(days=days), zone)
        if end > ensure_utc(now):
            # Cut at now; the previous period keeps the same length of time.
            end = ensure_utc(now)
            previous_start = start - (end - start)
            return cls(start, end, previous_start, zone, first, last, partial=True)
        return cls(start, end, previous_start, zone, first, last)

    @classmethod
    def between(cls, start: datetime, end: datetime, zone: ZoneInfo) -> Period:
        """Exactly ``[start, end)``; the previous period is as long, right before."""
        start, end = ensure_utc(start), ensure_utc(end)
        if end <= start:
            raise EngageError("a report period must end after it starts")
        return cls(start, end, start - (end - start), zone)

    @property
    def previous(self) -> tuple[datetime, datetime]:
        return self.previous_start, self.start

    def buckets(self) -> tuple[str, list[datetime]]:
        """Chart buckets as their boundaries ``[b0=start, b1, ..., bn=end]``:
        local days, or weeks (from Monday) or months when there would be too
        many days. Each boundary is a local midnight (DST-correct), clipped to
        the period."""
        local_first = self.start.astimezone(self.zone).date()
        local_last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        days = (local_last - local_first).days + 1
        unit = "day" if days <= 92 else "week" if days <= 7 * 120 else "month"
        marks = [self.start]
        day = local_first
        while True:
            day = _next_boundary(day, unit)
            instant = local_midnight(day, self.zone)
            if instant >= self.end or len(marks) > MAX_BUCKETS:
                break
            if instant > marks[-1]:
                marks.append(instant)
        marks.append(self.end)
        return unit, marks


def _next_boundary(day: date, unit: str) -> date:
    if unit == "day":
        return day + timedelta(days=1)
    if unit == "week":
        return day + timedelta(days=7 - day.weekday())
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)
