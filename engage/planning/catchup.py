"""Which occurrences of a campaign are due now, and planning each exactly once.

The daemon never trusts its own memory of what ran: ``campaign_run`` is the
calendar's memory. Whenever a campaign's cron job fires, on start-up, and
periodically as a safety net, ``plan_due`` looks at the occurrences since the
campaign's last recorded one (``campaign_run``) up to ``now``:

* the **most recent** occurrence no older than ``catch_up`` is planned, once.
  Like Customer.io or APScheduler's ``coalesce``, several missed occurrences
  collapse into one run: a winback sent three times in a row after an outage
  helps nobody;
* every earlier occurrence without a row is recorded as ``missed`` (counts
  empty) and logged, so ``engage status`` can show what did not go out;
* an occurrence left ``planning`` by a process that died is resumed
  (planning is idempotent: the unique run row and message dedupe keys), and
  one whose planning failed (``failed``) is tried again after
  ``RETRY_FAILED_AFTER``, both while within ``catch_up``.

A campaign with no row at all (new, or a fresh database) only looks back
``catch_up``, and no occurrence from before engage first saw the campaign
(``seen.first_seen``) is ever recorded as missed: there is nothing to have
missed before it existed. Otherwise
the look-back is bounded by ``MAX_LOOKBACK`` so a long outage of an
every-minute campaign stays a bounded amount of bookkeeping.

Several processes may do this at once: ``plan_occurrence`` holds the
database's planning lock (``lock.py``), so the second one waits and then finds
the occurrence planned. Idempotence rests on the unique run row and the
message dedupe keys; the lock makes reentry and the frequency cap hold.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, func, or_, select

from ..campaigns.cron import occurrences
from ..config import Config
from ..db.bulk import insert_ignore
from ..db.models import CampaignRun
from ..errors import PlanningFailed
from ..timeutil import ensure_utc
from .planner import PlanResult
from .seen import first_seen, plan_or_record

log = logging.getLogger(__name__)
R = cast(Table, CampaignRun.__table__)

MAX_LOOKBACK = timedelta(days=7)
MAX_MISSED_ROWS = 500  # per campaign and call; older ones are only counted in the log
RETRY_FAILED_AFTER = timedelta(minutes=5)  # a failed occurrence is tried again after this
_TICK = timedelta(microseconds=1)


@dataclass
class Due:
    """What ``find_due`` decided for one campaign at one moment."""

    campaign: str
    plan: list[datetime] = field(default_factory=list)  # new occurrence, or ones to resume
    missed: list[datetime] = field(default_factory=list)
    missed_beyond_cap: int = 0


def find_due(
    conn: Connection,
    campaign: Any,
    now: datetime,
    catch_up: timedelta,
    first_seen: datetime | None = None,
) -> Due:
    """Occurrences of ``campaign`` to plan and to record as missed at ``now`` (reads only).

    Nothing before ``first_seen`` (when engage first saw the campaign, see
    ``seen.first_seen``) counts as missed."""
    due = Due(campaign.name)
    last = conn.execute(
        select(func.max(R.c.scheduled_at)).where(
            R.c.campaign == campaign.name, R.c.scheduled_at <= now
        )
    ).scalar()
    if isinstance(last, str):  # max() of text instants on SQLite
        last = datetime.fromisoformat(last)
    if last is None:
        start = now - catch_up
    else:
        start = max(ensure_utc(last) + _TICK, now - max(MAX_LOOKBACK, catch_up))
    found = list(occurrences(campaign, start, now + _TICK))
    if found and now - found[-1] <= catch_up:
        due.plan.append(found.pop())
    if first_seen is not None:
        found = [t for t in found if t >= first_seen]
    if len(found) > MAX_MISSED_ROWS:
        due.missed_beyond_cap = len(found) - MAX_MISSED_ROWS
        found = found[-MAX_MISSED_ROWS:]
    due.missed = found
    resumable = or_(
        R.c.state == "planning",  # a process died while planning it
        and_(R.c.state == "failed", R.c.finished_at <= now - RETRY_FAILED_AFTER),
    )
    stuck = conn.execute(
        select(R.c.scheduled_at).where(
            R.c.campaign == campaign.name,
            resumable,
            R.c.scheduled_at >= now - catch_up,
            R.c.scheduled_at <= now,
        )
    ).scalars()
    due.plan = sorted(set(due.plan) | set(stuck))
    return due


def record_missed(engine: Engine, campaign: str, instants: list[datetime], now: datetime) -> int:
    """Insert ``missed`` rows (ignoring occurrences some process already recorded)."""
    if not instants:
        return 0
    rows = [
        {
            "campaign": campaign,
            "scheduled_at": t,
            "state": "missed",
            "counts": {},
            "created_at": now,
            "finished_at": now,
        }
        for t in instants
    ]
    with engine.begin() as conn:
        return insert_ignore(conn, R, rows, ["campaign", "scheduled_at"])


def plan_due(
    engine: Engine,
    config: Config,
    campaign: Any,
    now: datetime,
    *,
    guard: threading.Lock | None = None,
) -> list[PlanResult]:
    """Record missed occurrences and plan the due one(s) of ``campaign`` at ``now``.

    ``guard`` serializes planning inside one process (cron jobs and the
    periodic sweep may fire together); the planning lock does it across
    processes. An occurrence that fails is recorded ``failed`` on its row and
    logged (``occurrence_failed``); the others are still planned, then the
    first failure is raised (``PlanningFailed``).
    """
    with guard or threading.Lock():
        seen = first_seen(engine, campaign.name, now)
        with engine.connect() as conn:
            due = find_due(conn, campaign, now, config.catch_up, seen)
        if due.missed:
            recorded = record_missed(engine, campaign.name, due.missed, now)
            if recorded:
                log.warning(
                    "occurrences missed",
                    extra={
                        "event": "occurrences_missed",
                        "campaign": campaign.name,
                        "count": recorded + due.missed_beyond_cap,
                        "first": due.missed[0],
                        "last": due.missed[-1],
                        "catch_up": config.catch_up.total_seconds(),
                    },
                )
        results = []
        failures: list[PlanningFailed] = []
        for at in due.plan:
            try:
                result = plan_or_record(engine, config, campaign, at, now=now)
            except PlanningFailed as exc:  # recorded on its row; the next occurrence may work
                fields = {"campaign": campaign.name, "at": at, "reason": str(exc)}
                log.error("occurrence failed", extra={"event": "occurrence_failed", **fields})
                log.debug("traceback", exc_info=True, extra={"event": "occurrence_failed_trace"})
                failures.append(exc)
                continue
            results.append(result)
            log.info(
                "occurrence planned",
                extra={
                    "event": "occurrence_planned",
                    "campaign": campaign.name,
                    "at": at,
                    "late_by": round((now - at).total_seconds(), 3),
                    "already_planned": result.already_planned,
                    "inserted": result.inserted,
                },
            )
        if failures:
            raise failures[0]
        return results
