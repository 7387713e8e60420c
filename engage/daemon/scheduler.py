"""APScheduler 3 wiring for ``engage run``: which job runs when, nothing more.

* one cron job per enabled campaign (``campaign:<name>``), triggered by the
  campaign's own crontab trigger in its time zone (``trigger_for``);
* periodic jobs: dispatch due messages, maintenance (lease expiry and the
  catch-up sweep), heartbeat, and the hot-reload watcher.

The job store is in memory, always: a job store shared between processes
duplicates or loses runs (APScheduler's FAQ). Campaign files are the source
of truth for *what* is scheduled and ``campaign_run`` for *what already ran*,
so every process builds its own jobs from the files, and the jobs themselves
(in ``daemon/process.py`` and ``planning/catchup.py``) are idempotent. Jobs coalesce and never
overlap themselves; a cron job that fires late still runs within
``catch_up`` (its ``misfire_grace_time``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from ..campaigns.cron import CampaignTrigger, trigger_for

CAMPAIGN_PREFIX = "campaign:"


def make_scheduler(threads: int = 8) -> BackgroundScheduler:
    """A background scheduler with an in-memory job store, in UTC."""
    return BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(max_workers=threads)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=UTC,
    )


def add_periodic(
    scheduler: BackgroundScheduler,
    job_id: str,
    func: Callable[[], Any],
    every: timedelta,
    *,
    now: datetime | None = None,
) -> None:
    """Run ``func`` every ``every``; first at ``now`` (immediately) when given."""
    first: dict[str, Any] = {} if now is None else {"next_run_time": now}  # None would pause it
    scheduler.add_job(
        func,
        IntervalTrigger(seconds=max(every.total_seconds(), 0.1), timezone=UTC),
        id=job_id,
        name=job_id,
        replace_existing=True,
        misfire_grace_time=None,
        **first,
    )


def run_soon(scheduler: BackgroundScheduler, job_id: str, func: Callable[[], Any]) -> None:
    """Run ``func`` once, as soon as an executor thread is free."""
    scheduler.add_job(func, id=job_id, name=job_id, replace_existing=True)


def _trigger_key(trigger: Any) -> tuple[Any, ...]:
    assert isinstance(trigger, CampaignTrigger)
    return (trigger.spec.text, trigger.zone.key, trigger.lower, trigger.upper)


@dataclass
class Sync:
    """What ``sync_campaigns`` changed, by campaign name."""

    added: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.rescheduled or self.removed)


def sync_campaigns(
    scheduler: BackgroundScheduler,
    campaigns: Mapping[str, Any],
    plan: Callable[[str], Any],
    catch_up: timedelta,
) -> Sync:
    """Make the cron jobs match the enabled ``campaigns``: add, reschedule, remove."""
    result = Sync()
    wanted = {name: c for name, c in campaigns.items() if c.enabled}
    existing = {
        job.id[len(CAMPAIGN_PREFIX) :]: job
        for job in scheduler.get_jobs()
        if job.id.startswith(CAMPAIGN_PREFIX)
    }
    for name, job in existing.items():
        if name not in wanted:
            job.remove()
            result.removed.append(name)
    grace = max(int(catch_up.total_seconds()), 1)
    for name, campaign in sorted(wanted.items()):
        trigger = trigger_for(campaign.schedule)
        job = existing.get(name)
        if job is None:
            scheduler.add_job(
                plan,
                trigger,
                args=(name,),
                id=CAMPAIGN_PREFIX + name,
                name=CAMPAIGN_PREFIX + name,
                misfire_grace_time=grace,
            )
            result.added.append(name)
        elif _trigger_key(job.trigger) != _trigger_key(trigger):
            job.reschedule(trigger)
            result.rescheduled.append(name)
    return result


def campaign_jobs(scheduler: BackgroundScheduler) -> dict[str, datetime | None]:
    """Campaign name -> next fire time, as the scheduler sees it."""
    return {
        job.id[len(CAMPAIGN_PREFIX) :]: getattr(job, "next_run_time", None)
        for job in scheduler.get_jobs()
        if job.id.startswith(CAMPAIGN_PREFIX)
    }
