"""The communication calendar: every upcoming occurrence with its estimated audience."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from ..campaigns.audience import count_audience
from ..campaigns.cron import occurrences
from ..campaigns.schema import Campaign
from ..config import Config
from ..db.session import unusable
from ..errors import describe
from ..timeutil import get_zone, isoformat_z

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    campaign: str
    at: datetime  # UTC
    timezone: str
    estimated_audience: int | None

    @property
    def local(self) -> datetime:
        return self.at.astimezone(get_zone(self.timezone))

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "at": isoformat_z(self.at),
            "local": self.local.replace(microsecond=0).isoformat(),
            "estimated_audience": self.estimated_audience,
        }


def upcoming(
    engine: Engine | None,
    config: Config,
    campaigns: Sequence[Campaign],
    start: datetime,
    days: int,
    *,
    errors: list[tuple[str, str]] | None = None,
) -> list[Entry]:
    """Occurrences of enabled campaigns in [start, start + days), sorted by instant.

    The estimate is the audience size as of each occurrence (before consent,
    suppression, reentry, holdout and cap), evaluated in the database; pass
    ``engine=None`` to skip it.

    A campaign whose occurrences or audience cannot be computed is left out
    and logged; ``errors`` (when given) receives ``(campaign, why)`` for it.
    The other campaigns are listed as usual.
    """
    end = start + timedelta(days=days)
    entries = []
    for campaign in campaigns:
        if not campaign.enabled:
            continue
        try:
            entries.extend(_entries(engine, config, campaign, start, end))
        except Exception as exc:
            if unusable(exc):  # the database, not this campaign
                raise
            why = describe(exc)
            fields = {"campaign": campaign.name, "reason": why}
            log.info("calendar: campaign left out", extra={"event": "calendar_failed", **fields})
            log.debug("traceback", exc_info=True, extra={"event": "calendar_failed_trace"})
            if errors is not None:
                errors.append((campaign.name, why))
    entries.sort(key=lambda e: (e.at, e.campaign))
    return entries


def _entries(
    engine: Engine | None, config: Config, campaign: Campaign, start: datetime, end: datetime
) -> list[Entry]:
    out = []
    for at in occurrences(campaign, start, end):
        size = count_audience(engine, campaign.audience, config, at) if engine is not None else None
        out.append(Entry(campaign.name, at, campaign.schedule.timezone, size))
    return out
