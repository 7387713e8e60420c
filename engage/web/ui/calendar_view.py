"""The calendar page's model: a month or week grid of days in the viewer's zone,
each with its occurrences (estimated audience ahead, outcome behind).

Occurrences come from the same place as ``engage calendar``
(``campaigns.cron.occurrences`` per enabled campaign) and are placed on the
local date of the viewer's zone; a week in which clocks change simply has a
23- or 25-hour day. Past occurrences show what the outbox did (runs planned
by the daemon or by ``engage send``, including runs that are on no current
schedule); a past occurrence without a run is shown as not run.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError

from ...campaigns.cron import occurrences
from ...campaigns.schema import Campaign
from ...report.activity import Outcome
from ...timeutil import ensure_utc
from .estimates import Estimate, Key, key_of

PALETTE_SIZE = 10


def colours(names: Sequence[str]) -> dict[str, int]:
    """A palette slot per campaign name, stable as campaigns come and go: each name
    prefers the slot its hash picks, and takes the next free one if it is taken
    (names in sorted order); beyond the palette's size slots repeat."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    for name in sorted(set(names)):
        slot = zlib.crc32(name.encode()) % PALETTE_SIZE
        if len(taken) < PALETTE_SIZE:
            while slot in taken:
                slot = (slot + 1) % PALETTE_SIZE
        taken.add(slot)
        out[name] = slot
    return out


def first_weekday(locale: str) -> int:
    """0 = Monday ... 6 = Sunday, as the locale's calendars start the week."""
    try:
        return int(Locale.parse(locale.replace("-", "_")).first_week_day)
    except (UnknownLocaleError, ValueError, TypeError):
        return 0


@dataclass
class Event:
    campaign: str
    at: datetime  # UTC
    local: datetime  # in the viewer's zone
    colour: int
    channels: tuple[str, ...] = ()
    scheduled: bool = True  # on the campaign's current schedule
    upcoming: bool = True  # at or after now
    key: Key | None = None
    estimate: Estimate | None = None
    outcome: Outcome | None = None

    @property
    def pending(self) -> bool:
        return self.upcoming and self.outcome is None and self.estimate is None

    @property
    def not_run(self) -> bool:
        return not self.upcoming and self.outcome is None


@dataclass
class Day:
    date: date
    in_period: bool
    today: bool
    past: bool
    hours: float = 24.0  # 23 or 25 when the viewer's clocks change that day
    events: list[Event] = field(default_factory=list)


@dataclass
class Grid:
    view: str  # month | week
    anchor: date
    zone: ZoneInfo
    days: list[Day]
    start: datetime  # UTC, first local midnight shown
    end: datetime  # UTC, exclusive
    period_first: date
    period_last: date

    @property
    def weeks(self) -> list[list[Day]]:
        return [self.days[i : i + 7] for i in range(0, len(self.days), 7)]

    @property
    def events(self) -> list[Event]:
        return [e for d in self.days for e in d.events]

    def previous(self) -> date:
        if self.view == "week":
            return self.anchor - timedelta(days=7)
        return (self.period_first - timedelta(days=1)).replace(day=1)

    def next(self) -> date:
        if self.view == "week":
            return self.anchor + timedelta(days=7)
        return self.period_last + timedelta(days=1)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return ensure_utc(datetime.combine(day, datetime.min.time(), zone))


def make_grid(view: str, anchor: date, zone: ZoneInfo, week_start: int, today: date) -> Grid:
    """The days shown: a whole-weeks month grid, or the week holding ``anchor``."""
    if view == "week":
        first = anchor - timedelta(days=(anchor.weekday() - week_start) % 7)
        period_first, period_last = first, first + timedelta(days=6)
        shown_first, count = first, 7
    else:
        period_first = anchor.replace(day=1)
        nxt = (period_first + timedelta(days=32)).replace(day=1)
        period_last = nxt - timedelta(days=1)
        shown_first = period_first - timedelta(days=(period_first.weekday() - week_start) % 7)
        shown_last = period_last + timedelta(days=(week_start - 1 - period_last.weekday()) % 7)
        count = (shown_last - shown_first).days + 1
    days = [
        Day(
            d,
            period_first <= d <= period_last,
            d == today,
            d < today,
            (local_midnight(d + timedelta(days=1), zone) - local_midnight(d, zone))
            / timedelta(hours=1),
        )
        for d in (shown_first + timedelta(days=n) for n in range(count))
    ]
    return Grid(
        view,
        anchor,
        zone,
        days,
        local_midnight(days[0].date, zone),
        local_midnight(days[-1].date + timedelta(days=1), zone),
        period_first,
        period_last,
    )


def fill(
    grid: Grid,
    campaigns: Sequence[Campaign],
    outcomes: Sequence[Outcome],
    now: datetime,
    palette: dict[str, int],
) -> list[Event]:
    """Place every occurrence and every run of the grid's range on its local day.

    Returns the upcoming events (whose estimates the caller looks up)."""
    by_day = {d.date: d for d in grid.days}
    runs = {(o.campaign, o.scheduled_at): o for o in outcomes}
    events: list[Event] = []
    for campaign in campaigns:
        if not campaign.enabled:
            continue
        for at in occurrences(campaign, grid.start, grid.end):
            events.append(
                Event(
                    campaign.name,
                    at,
                    at.astimezone(grid.zone),
                    palette.get(campaign.name, 0),
                    tuple(campaign.channels),
                    upcoming=at >= now,
                    key=key_of(campaign, at),
                    outcome=runs.pop((campaign.name, at), None),
                )
            )
    known = {c.name: c for c in campaigns}
    for (name, at), outcome in runs.items():  # runs on no current schedule
        c = known.get(name)
        events.append(
            Event(
                name,
                at,
                at.astimezone(grid.zone),
                palette.get(name, 0),
                tuple(c.channels) if c else (),
                scheduled=False,
                upcoming=False,
                outcome=outcome,
            )
        )
    events.sort(key=lambda e: (e.at, e.campaign))
    for e in events:
        day = by_day.get(e.local.date())
        if day is not None:
            day.events.append(e)
    return [e for e in events if e.upcoming and e.outcome is None]
