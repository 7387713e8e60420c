"""When engage first saw a campaign, and occurrences whose planning failed.

**First seen.** A campaign cannot have missed an occurrence from before engage
knew it existed. ``campaign_seen`` holds the instant a process that plans
(``engage run``, ``run --once``, ``engage send``) first met each campaign, by
its name; catch-up records an occurrence as ``missed`` only when it is at or
after that instant, and ``engage status`` counts only those. A campaign that
already has ``campaign_run`` rows but no ``campaign_seen`` row (rows written
before this table existed, or by other tools) was first seen when its first
row was written (``created_at``).

**Failures.** Planning one occurrence can fail for reasons of that campaign
alone (a condition the database cannot evaluate, a broken row it reads). The
occurrence's ``campaign_run`` row then says so (state ``failed``, ``error``)
and the caller goes on with the other campaigns; catch-up retries it while it
is within ``catch_up`` (see ``catchup.find_due``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, select, update

from ..db.bulk import insert_ignore
from ..db.models import CampaignRun, CampaignSeen
from ..errors import PlanningFailed, describe
from ..timeutil import ensure_utc, isoformat_z
from .planner import PlanResult, plan_occurrence

log = logging.getLogger(__name__)

R = cast(Table, CampaignRun.__table__)
S = cast(Table, CampaignSeen.__table__)


def first_seen(engine: Engine, campaign: str, now: datetime) -> datetime:
    """When engage first saw ``campaign``; records ``now`` if this is the first time."""
    with engine.connect() as conn:
        seen = _read(conn, campaign)
    if seen is not None:
        return seen
    with engine.begin() as conn:
        earliest = conn.execute(
            select(func.min(R.c.created_at)).where(R.c.campaign == campaign)
        ).scalar()
        if isinstance(earliest, str):  # min() of text instants on SQLite
            earliest = datetime.fromisoformat(earliest)
        at = min(ensure_utc(earliest), now) if earliest is not None else now
        insert_ignore(conn, S, [{"campaign": campaign, "first_seen_at": at}], ["campaign"])
        seen = _read(conn, campaign)  # another process may have been first
    return seen if seen is not None else at


def _read(conn: Connection, campaign: str) -> datetime | None:
    value = conn.execute(select(S.c.first_seen_at).where(S.c.campaign == campaign)).scalar()
    return ensure_utc(value) if value is not None else None


def plan_or_record(
    engine: Engine, config: Any, campaign: Any, scheduled_at: datetime, *, now: datetime
) -> PlanResult:
    """``plan_occurrence``; when it fails, the occurrence's row records why
    (state ``failed``) and ``PlanningFailed`` says so in one line."""
    try:
        return plan_occurrence(engine, config, campaign, scheduled_at, now=now)
    except Exception as exc:
        error = describe(exc)
        record_failure(engine, campaign.name, scheduled_at, error, now)
        raise PlanningFailed(
            f"campaign {campaign.name} at {isoformat_z(scheduled_at)}: {error}",
            campaign=campaign.name,
        ) from exc


def record_failure(
    engine: Engine, campaign: str, scheduled_at: datetime, error: str, now: datetime
) -> None:
    """Mark the occurrence ``failed`` with ``error`` (creating its row if planning
    failed before it existed); never raises: the database may be what failed."""
    try:
        with engine.begin() as conn:
            row = {
                "campaign": campaign,
                "scheduled_at": ensure_utc(scheduled_at),
                "state": "failed",
                "counts": {},
                "created_at": now,
            }
            insert_ignore(conn, R, [row], ["campaign", "scheduled_at"])
            conn.execute(
                update(R)
                .where(
                    R.c.campaign == campaign,
                    R.c.scheduled_at == ensure_utc(scheduled_at),
                    R.c.state.in_(("planning", "failed")),
                )
                .values(state="failed", error=error, finished_at=now)
            )
    except Exception:
        log.warning(
            "could not record the failed occurrence",
            exc_info=True,
            extra={"event": "failure_not_recorded", "campaign": campaign},
        )
