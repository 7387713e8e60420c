"""``engage send``: plan one occurrence and deliver what is due by then."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ..campaigns.schema import Campaign
from ..config import Config
from ..planning.planner import PlanResult
from ..planning.seen import first_seen, plan_or_record
from ..templating.renderer import Renderer
from ..timeutil import utcnow
from .channels import build_channels
from .dispatch import Dispatcher, DispatchStats
from .outbox import count_waiting


def make_dispatcher(
    engine: Engine,
    config: Config,
    campaigns: Callable[[], Mapping[str, Any]],
    *,
    renderer: Renderer | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Dispatcher:
    return Dispatcher(
        engine,
        config,
        build_channels(config),
        renderer or Renderer(config),
        campaigns,
        stop=stop,
        clock=clock or utcnow,
    )


@dataclass
class SendReport:
    plan: PlanResult
    dispatch: DispatchStats
    waiting: int  # of this occurrence, for a send window (or a retry): the daemon sends them


def send_occurrence(
    engine: Engine,
    config: Config,
    campaign: Campaign,
    at: datetime,
    *,
    now: datetime | None = None,
) -> SendReport:
    """Plan one occurrence at ``at`` and deliver what is due by then.

    Messages whose send window opens later stay ``planned`` for the daemon.
    ``now`` (the wall clock, default ``at``) records when engage first saw the
    campaign. Missing secrets fail here, before anything is planned; a
    failed planning is recorded on the occurrence's row (``PlanningFailed``).
    A channel whose provider refuses engage's credentials stops at once; the
    report says so (``dispatch.refused``) and its messages stay planned.
    """
    config.require_sending_secrets("engage send")
    channels = build_channels(config)  # fail on missing secrets before planning
    try:
        first_seen(engine, campaign.name, now or at)
        plan = plan_or_record(engine, config, campaign, at, now=at)
        dispatcher = Dispatcher(
            engine, config, channels, Renderer(config), lambda: {campaign.name: campaign}
        )
        try:
            stats = dispatcher.run_once(at, campaign=campaign.name)
        finally:
            dispatcher.close()
    finally:
        for ch in channels.values():
            ch.close()
    return SendReport(plan, stats, count_waiting(engine, plan.run_id))
