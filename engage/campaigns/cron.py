"""Standard crontab schedules on APScheduler 3, evaluated in the campaign's zone.

Campaign files use the crontab meaning everyone knows (``man 5 crontab``):
day-of-week 0 and 7 are Sunday, and when both day-of-month and day-of-week
are restricted a day matches when *either* does. APScheduler 3 disagrees on
both counts (its weeks start on Monday = 0, and it ANDs the two day fields),
so we parse the crontab ourselves, validate it with readable messages, and
hand APScheduler explicit, unambiguous field values:

* day-of-week becomes a list of *names* (``sun,tue``), which APScheduler
  cannot misread;
* the OR case becomes two CronTriggers (one per day field) whose earliest
  fire time wins;
* daylight-saving time follows Vixie cron/cronie: a fixed-time job (neither
  minute nor hour starts with ``*``) whose local time is skipped on the
  spring-forward day fires once, at the same instant the clock jumps over it
  (02:30 in New York becomes 03:30 EDT); on the fall-back day it fires once,
  at the first of the two 01:30s. Jobs with ``*`` in minute or hour follow
  real time: they skip the missing hour and run again in the repeated one.

Nothing here reads the clock: ``now`` is always an argument.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from ..timeutil import ensure_utc, get_zone

if TYPE_CHECKING:
    from .schema import Campaign, Schedule

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_APS_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # index = crontab number
_FIELDS = (
    # name, low, high, names
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(?:(\*)|([a-z0-9]+)(?:-([a-z0-9]+))?)(?:/(\d+))?$")
# Scan from this far before the first instant asked for, so that the answer
# never depends on where a window starts (DST gaps are at most 2 hours).
_LOOKBACK = timedelta(hours=3)


@dataclass(frozen=True)
class CronSpec:
    """A parsed 5-field crontab; day-of-week uses 0 = Sunday (7 is folded into 0)."""

    text: str
    minute: frozenset[int]
    hour: frozenset[int]
    dom: frozenset[int]
    month: frozenset[int]
    dow: frozenset[int]
    minute_star: bool
    hour_star: bool
    dom_star: bool
    dow_star: bool

    @property
    def days_ored(self) -> bool:
        """Crontab rule: both day fields restricted -> a day matches if either does."""
        return not self.dom_star and not self.dow_star

    @property
    def fixed_time(self) -> bool:
        """Vixie cron's "fixed-time job": runs once across DST changes."""
        return not self.minute_star and not self.hour_star


def _value(token: str, name: str, low: int, high: int, names: dict[str, int] | None) -> int:
    if token.isdigit():
        number = int(token)
    elif names is not None and token in names:
        number = names[token]
    else:
        hint = f" or a name like {next(iter(names))}" if names else ""
        raise ValueError(f"{name}: {token!r} is not a number{hint}")
    if not low <= number <= high:
        raise ValueError(f"{name}: {number} is out of range {low}-{high}")
    return number


def _parse_field(
    text: str, name: str, low: int, high: int, names: dict[str, int] | None
) -> set[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"{name}: cannot read {item!r} (use *, 5, 1-5, */15, 1-10/2 or lists)")
        star, first, last, step_text = m.groups()
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"{name}: step must be at least 1")
        if star:
            start, stop = low, high
        else:
            start = _value(first, name, low, high, names)
            if last is None:
                if step_text:
                    raise ValueError(
                        f"{name}: a step needs a range or * ({item!r}: use {first}-{high}/{step})"
                    )
                stop = start
            else:
                # "sat-sun": a named Sunday ending a range is day 7 ("sun-sun" stays 0).
                if names is _DAYS and last == "sun" and start > 0:
                    stop = 7
                else:
                    stop = _value(last, name, low, high, names)
                if stop < start:
                    raise ValueError(f"{name}: range {first}-{last} runs backwards")
        values.update(range(start, stop + 1, step))
    return values


def parse_crontab(expr: str) -> CronSpec:
    """Parse and validate a standard crontab line; ValueError says what is wrong."""
    if not isinstance(expr, str):
        raise ValueError(f'expected a crontab string such as "0 10 * * *", got {expr!r}')
    text = MACROS.get(expr.strip().lower(), expr)
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"bad cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    try:
        sets = [_parse_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    except ValueError as exc:
        raise ValueError(f"bad cron {expr!r}: {exc}") from None
    minute, hour, dom, month, dow = sets
    dow = {d % 7 for d in dow}
    spec = CronSpec(
        text=text,
        minute=frozenset(minute),
        hour=frozenset(hour),
        dom=frozenset(dom),
        month=frozenset(month),
        dow=frozenset(dow),
        minute_star=parts[0].startswith("*"),
        hour_star=parts[1].startswith("*"),
        dom_star=parts[2].startswith("*"),
        dow_star=parts[4].startswith("*"),
    )
    # 2024 is a leap year: February 29 exists some years, so it may fire.
    if not spec.days_ored and not any(
        d <= calendar.monthrange(2024, m)[1] for m in spec.month for d in spec.dom
    ):
        raise ValueError(f"bad cron {expr!r}: never fires (no such day in those months)")
    return spec


def _numbers(values: frozenset[int], low: int, high: int) -> str:
    if values == frozenset(range(low, high + 1)):
        return "*"
    return ",".join(str(v) for v in sorted(values))


def _aps_triggers(spec: CronSpec, zone: ZoneInfo) -> list[CronTrigger]:
    common: dict[str, Any] = {
        "minute": _numbers(spec.minute, 0, 59),
        "hour": _numbers(spec.hour, 0, 23),
        "month": _numbers(spec.month, 1, 12),
        "second": 0,
        "timezone": zone,
    }
    day = _numbers(spec.dom, 1, 31)
    dow = (
        "*" if spec.dow == frozenset(range(7)) else ",".join(_APS_DAYS[d] for d in sorted(spec.dow))
    )
    if spec.days_ored:
        return [
            CronTrigger(day=day, day_of_week="*", **common),
            CronTrigger(day="*", day_of_week=dow, **common),
        ]
    return [CronTrigger(day=day, day_of_week=dow, **common)]


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


class CampaignTrigger(BaseTrigger):
    """An APScheduler trigger with crontab semantics, DST rules and date bounds.

    ``start``/``end`` are inclusive calendar dates in ``zone``. Fire times are
    returned as aware UTC datetimes.
    """

    __slots__ = ("spec", "zone", "lower", "upper", "_triggers")

    def __init__(
        self, spec: CronSpec, zone: ZoneInfo, start: date | None = None, end: date | None = None
    ):
        self.spec = spec
        self.zone = zone
        self.lower = _local_midnight(start, zone) if start else None
        self.upper = _local_midnight(end + timedelta(days=1), zone) if end else None
        self._triggers = _aps_triggers(spec, zone)

    def _raw_next(self, prev: datetime | None, now: datetime) -> datetime | None:
        # APScheduler's own "previous fire time" handling compares datetimes
        # across zones, which PEP 495 makes unequal inside a repeated hour (it
        # then returns the previous fire time again). Ask for the first fire
        # time at or after an explicit instant instead: strictly after ``prev``.
        since = prev + timedelta(microseconds=1) if prev is not None else now
        times = [t.get_next_fire_time(None, since) for t in self._triggers]
        found = [ensure_utc(t) for t in times if t is not None]
        return min(found) if found else None

    def _repeats_wall_time(self, instant: datetime) -> bool:
        """The second pass through a repeated (fall-back) local time."""
        local = instant.astimezone(self.zone)
        if local.fold == 0:
            return False
        return local.replace(fold=0).astimezone(UTC) != instant

    def _step(self, prev: datetime | None, now: datetime) -> datetime | None:
        t = self._raw_next(prev, now)
        while t is not None and self.spec.fixed_time and self._repeats_wall_time(t):
            t = self._raw_next(t, t)
        return t

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        now = ensure_utc(now)
        if previous_fire_time is not None:
            t = self._step(ensure_utc(previous_fire_time), now)
        else:
            floor = max(now, self.lower) if self.lower else now
            # Walk forward from a little earlier so that a start inside a DST
            # gap sees the same fire times as a walk that began before it.
            t = self._step(None, floor - _LOOKBACK)
            while t is not None and t < floor:
                t = self._step(t, t)
        if t is None or (self.upper is not None and t >= self.upper):
            return None
        return t

    def __str__(self) -> str:
        return f"crontab[{self.spec.text}, {self.zone.key}]"

    def __repr__(self) -> str:
        return f"<CampaignTrigger {self.spec.text!r} tz={self.zone.key!r}>"


def trigger_for(schedule: Schedule) -> CampaignTrigger:
    """The APScheduler trigger for a campaign schedule, in the campaign's zone."""
    return CampaignTrigger(
        parse_crontab(schedule.cron), get_zone(schedule.timezone), schedule.start, schedule.end
    )


def occurrences(campaign: Campaign, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every occurrence in ``[start, end)`` as aware UTC instants, strictly increasing.

    Honours ``schedule.start``/``schedule.end`` (inclusive dates in the
    campaign zone). Naive datetimes are taken as UTC.
    """
    trigger = trigger_for(campaign.schedule)
    start, end = ensure_utc(start), ensure_utc(end)
    t = trigger.get_next_fire_time(None, start)
    while t is not None and t < end:
        yield t
        t = trigger.get_next_fire_time(t, t)


def next_occurrence(campaign: Campaign, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``, or None when the schedule has ended."""
    return trigger_for(campaign.schedule).get_next_fire_time(
        None, ensure_utc(after) + timedelta(microseconds=1)
    )
