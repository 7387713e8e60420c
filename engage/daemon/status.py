"""What the daemon is doing, from the database alone: ``engage status``.

Everything here is read from tables any process can see (``campaign_run``,
``message``, ``worker``), so ``engage status`` works from any machine and
tells the truth about every ``engage run`` process, not just a local one.
The worker heartbeat is written here too, to keep its format in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, delete, func, insert, or_, select, update

from ..campaigns.cron import next_occurrence
from ..db.models import CampaignRun, CampaignSeen, Worker
from ..delivery.outbox import counts_by_status
from ..errors import describe
from ..timeutil import isoformat_z

R = cast(Table, CampaignRun.__table__)
W = cast(Table, Worker.__table__)
S = cast(Table, CampaignSeen.__table__)

LIVE_WITHIN = timedelta(minutes=2)  # heartbeats come every minute
FORGET_AFTER = timedelta(days=1)  # rows of long-dead workers are pruned
MISSED_SHOWN = 20


# -- heartbeat ---------------------------------------------------------------------------
def heartbeat(
    engine: Engine,
    owner: str,
    host: str,
    pid: int,
    started_at: datetime,
    now: datetime,
    stats: dict[str, Any] | None = None,
) -> None:
    """Record that ``owner`` is alive at ``now`` (insert or refresh its row)."""
    values = {"heartbeat_at": now, "stats": stats or {}}
    with engine.begin() as conn:
        done = conn.execute(update(W).where(W.c.id == owner).values(**values)).rowcount
        if not done:
            conn.execute(
                insert(W).values(id=owner, host=host, pid=pid, started_at=started_at, **values)
            )
        conn.execute(delete(W).where(W.c.heartbeat_at < now - FORGET_AFTER))


def forget_worker(engine: Engine, owner: str) -> None:
    """A clean exit: the worker is gone, not merely silent."""
    with engine.begin() as conn:
        conn.execute(delete(W).where(W.c.id == owner))


# -- the report --------------------------------------------------------------------------
@dataclass
class CampaignStatus:
    name: str
    enabled: bool
    schedule: str
    last_run: datetime | None = None
    last_state: str | None = None
    last_counts: dict[str, Any] = field(default_factory=dict)
    next_run: datetime | None = None
    error: str | None = None  # why the last run failed, or why the next one is unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "schedule": self.schedule,
            "last_run": isoformat_z(self.last_run) if self.last_run else None,
            "last_state": self.last_state,
            "last_counts": self.last_counts,
            "next_run": isoformat_z(self.next_run) if self.next_run else None,
            "error": self.error,
        }


@dataclass
class WorkerStatus:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stats: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started_at": isoformat_z(self.started_at),
            "heartbeat_at": isoformat_z(self.heartbeat_at),
            "stats": self.stats,
        }


@dataclass
class Status:
    now: datetime
    campaigns: list[CampaignStatus]
    outbox: dict[str, int]
    missed: list[tuple[str, datetime]]
    missed_total: int
    workers: list[WorkerStatus]
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": isoformat_z(self.now),
            "campaigns": [c.to_json() for c in self.campaigns],
            "outbox": self.outbox,
            "missed": [{"campaign": c, "scheduled_at": isoformat_z(t)} for c, t in self.missed],
            "missed_total": self.missed_total,
            "workers": [w.to_json() for w in self.workers],
            "problems": self.problems,
        }


def status(
    engine: Engine, campaigns: list[Any], now: datetime, *, problems: list[str] | None = None
) -> Status:
    """Last and next run of every campaign, outbox counts, missed occurrences, live workers.

    ``campaigns`` are the loaded campaign files; a campaign that only exists
    in ``campaign_run`` (its file was removed) is listed as disabled.
    """
    with engine.connect() as conn:
        latest = (
            select(R.c.campaign, func.max(R.c.scheduled_at).label("at"))
            .where(R.c.scheduled_at <= now, R.c.state != "missed")
            .group_by(R.c.campaign)
            .subquery()
        )
        last = {
            row.campaign: row
            for row in conn.execute(
                select(R.c.campaign, R.c.scheduled_at, R.c.state, R.c.counts, R.c.error).join(
                    latest,
                    (latest.c.campaign == R.c.campaign) & (latest.c.at == R.c.scheduled_at),
                )
            )
        }
        # Nothing before engage first saw a campaign counts as missed (see planning/seen.py).
        missed_q = (
            select(R.c.campaign, R.c.scheduled_at)
            .select_from(R.outerjoin(S, S.c.campaign == R.c.campaign))
            .where(
                R.c.state == "missed",
                or_(S.c.first_seen_at.is_(None), R.c.scheduled_at >= S.c.first_seen_at),
            )
        )
        missed_total = int(
            conn.execute(select(func.count()).select_from(missed_q.subquery())).scalar_one()
        )
        missed = [
            (c, t)
            for c, t in conn.execute(missed_q.order_by(R.c.scheduled_at.desc()).limit(MISSED_SHOWN))
        ]
        workers = [
            WorkerStatus(r.id, r.host, r.pid, r.started_at, r.heartbeat_at, dict(r.stats or {}))
            for r in conn.execute(
                select(W).where(W.c.heartbeat_at >= now - LIVE_WITHIN).order_by(W.c.id)
            )
        ]
    out: list[CampaignStatus] = []
    for c in sorted(campaigns, key=lambda c: c.name):
        cs = CampaignStatus(c.name, c.enabled, f"{c.schedule.cron} ({c.schedule.timezone})")
        if c.enabled:
            try:  # one campaign's trouble shows on its line, never hides the others
                cs.next_run = next_occurrence(c, now)
            except Exception as exc:
                cs.error = f"next run unknown: {describe(exc)}"
        out.append(cs)
    known = {c.name for c in out}
    out.extend(
        CampaignStatus(name, False, "(no campaign file)") for name in sorted(set(last) - known)
    )
    for cs in out:
        row = last.get(cs.name)
        if row is not None:
            cs.last_run, cs.last_state = row.scheduled_at, row.state
            cs.last_counts = dict(row.counts or {})
            if row.state == "failed" and cs.error is None:
                cs.error = row.error
    return Status(
        now=now,
        campaigns=out,
        outbox=counts_by_status(engine),
        missed=missed,
        missed_total=missed_total,
        workers=workers,
        problems=list(problems or []),
    )
