"""The communication calendar: every upcoming occurrence with its estimated audience."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from ..campaigns.audience import count_audience
from ..campaigns.cron import occurrences
from ..campaigns.schema import Campaign
from ..config import Config
from ..timeutil import get_zone, isoformat_z


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
) -> list[Entry]:
    """Occurrences of enabled campaigns in [start, start + days), sorted by instant.

    The estimate is the audience size as of each occurrence (before consent,
    suppression, reentry, holdout and cap), evaluated in the database; pass
    ``engine=None`` to skip it.
    """
    end = start + timedelta(days=days)
    entries = []
    for campaign in campaigns:
        if not campaign.enabled:
            continue
        for at in occurrences(campaign, start, end):
            size = (
                count_audience(engine, campaign.audience, config, at)
                if engine is not None
                else None
            )
            entries.append(Entry(campaign.name, at, campaign.schedule.timezone, size))
    entries.sort(key=lambda e: (e.at, e.campaign))
    return entries
