"""What the outbox did: per occurrence (the calendar's past days) and per day.

Read-only, one grouped query each. ``occurrence_outcomes`` counts the
messages of every campaign run in a range by status (the index on
``message (run_id, status)``); ``daily_activity`` buckets sends and
deliveries by local day of a time zone, with day boundaries computed in
Python so that the SQL is the same on SQLite and PostgreSQL and DST days
have their true length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Table, case, func, select

from ..db.models import CampaignRun, Message
from ..db.states import State
from ..timeutil import ensure_utc

M = cast(Table, Message.__table__)
R = cast(Table, CampaignRun.__table__)

# How the calendar groups message states (every state falls in one group).
WAITING = (State.PLANNED, State.RETRY, State.CLAIMED, State.SENDING)
SENT = (State.SENT, State.DELIVERED, State.BOUNCED, State.UNDELIVERED)
FAILED = (State.FAILED, State.UNKNOWN, State.RENDER_ERROR, State.EXPIRED)


@dataclass(frozen=True)
class Outcome:
    """One campaign run (an occurrence that was planned) and its messages by status."""

    run_id: int
    campaign: str
    scheduled_at: datetime
    state: str  # planning | planned | missed | failed
    decisions: dict[str, Any]  # the planner's counts (matched, send, held_out, reasons...)
    statuses: dict[str, int] = field(default_factory=dict)

    def total(self, states: Sequence[str]) -> int:
        return sum(self.statuses.get(str(s), 0) for s in states)

    @property
    def waiting(self) -> int:
        return self.total(WAITING)

    @property
    def sent(self) -> int:
        return self.total(SENT)

    @property
    def delivered(self) -> int:
        return self.statuses.get(State.DELIVERED, 0)

    @property
    def held_out(self) -> int:
        return self.statuses.get(State.HELD_OUT, 0)

    @property
    def failed(self) -> int:
        return self.total(FAILED)

    @property
    def cancelled(self) -> int:
        return self.statuses.get(State.CANCELLED, 0)

    @property
    def planned(self) -> int:
        """Messages the run put in the outbox for sending (not the control group)."""
        return sum(self.statuses.values()) - self.held_out


def occurrence_outcomes(engine: Engine, start: datetime, end: datetime) -> list[Outcome]:
    """Every campaign run scheduled in ``[start, end)`` with its messages by status."""
    start, end = ensure_utc(start), ensure_utc(end)
    in_range = (R.c.scheduled_at >= start) & (R.c.scheduled_at < end)
    with engine.connect() as conn:
        runs = conn.execute(
            select(R.c.id, R.c.campaign, R.c.scheduled_at, R.c.state, R.c.counts)
            .where(in_range)
            .order_by(R.c.scheduled_at, R.c.campaign)
        ).all()
        statuses: dict[int, dict[str, int]] = {}
        if runs:
            q = (
                select(M.c.run_id, M.c.status, func.count())
                .select_from(M.join(R, R.c.id == M.c.run_id))
                .where(in_range)
                .group_by(M.c.run_id, M.c.status)
            )
            for run_id, status, n in conn.execute(q):
                statuses.setdefault(run_id, {})[status] = int(n)
    return [
        Outcome(r.id, r.campaign, ensure_utc(r.scheduled_at), r.state, dict(r.counts or {}),
                statuses.get(r.id, {}))
        for r in runs
    ]


@dataclass(frozen=True)
class DayActivity:
    day: date
    sent: int  # messages handed to a provider that day (by sent_at)
    delivered: int  # of those, confirmed delivered by a webhook since


def day_bounds(first: date, last: date, zone: ZoneInfo) -> list[datetime]:
    """Local midnights from ``first`` to the day after ``last``, as UTC instants."""
    days = (last - first).days + 1
    return [
        ensure_utc(datetime.combine(first + timedelta(days=n), datetime.min.time(), zone))
        for n in range(days + 1)
    ]


def daily_activity(engine: Engine, first: date, last: date, zone: ZoneInfo) -> list[DayActivity]:
    """Sends and deliveries per local day of ``zone``, ``first`` to ``last`` inclusive."""
    if last < first:
        return []
    bounds = day_bounds(first, last, zone)
    bucket = case(
        *[(M.c.sent_at < b, n) for n, b in enumerate(bounds[1:-1])], else_=len(bounds) - 2
    )
    sends = (
        select(bucket.label("bucket"), M.c.status)
        .where(M.c.sent_at >= bounds[0], M.c.sent_at < bounds[-1])
        .subquery()
    )
    delivered = func.sum(case((sends.c.status == State.DELIVERED.value, 1), else_=0))
    q = select(sends.c.bucket, func.count(), delivered).group_by(sends.c.bucket)
    got: dict[int, tuple[int, int]] = {}
    with engine.connect() as conn:
        for n, sent, dlv in conn.execute(q):
            got[int(n)] = (int(sent), int(dlv or 0))
    return [
        DayActivity(first + timedelta(days=n), *got.get(n, (0, 0)))
        for n in range(len(bounds) - 1)
    ]


def recent_outcomes(engine: Engine, campaign: str, limit: int = 10) -> list[Outcome]:
    """The latest ``limit`` runs of one campaign (newest first) with their messages by status."""
    with engine.connect() as conn:
        runs = conn.execute(
            select(R.c.id, R.c.campaign, R.c.scheduled_at, R.c.state, R.c.counts)
            .where(R.c.campaign == campaign)
            .order_by(R.c.scheduled_at.desc())
            .limit(limit)
        ).all()
        statuses: dict[int, dict[str, int]] = {}
        if runs:
            q = (
                select(M.c.run_id, M.c.status, func.count())
                .where(M.c.run_id.in_([r.id for r in runs]))
                .group_by(M.c.run_id, M.c.status)
            )
            for run_id, status, n in conn.execute(q):
                statuses.setdefault(run_id, {})[status] = int(n)
    return [
        Outcome(r.id, r.campaign, ensure_utc(r.scheduled_at), r.state, dict(r.counts or {}),
                statuses.get(r.id, {}))
        for r in runs
    ]
