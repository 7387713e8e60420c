"""``engage init`` and ``engage demo``: a ready project folder, and a guided first run."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .campaigns.cron import next_occurrence, occurrences
from .campaigns.loader import load_campaigns
from .config import Config, load_config
from .db import get_engine, upgrade
from .delivery.outbox import counts_by_status
from .delivery.send import make_dispatcher
from .errors import EngageError
from .ingest.sample import SampleStats, generate
from .planning.calendar import Entry, upcoming
from .planning.planner import PlanResult, plan_occurrence

DEMO_MARKER = ".engage-demo"


def examples_root() -> Path:
    """The example project shipped with engage (packed into the wheel by setup.py,
    or the source checkout itself in an editable install)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_examples", here.parent):
        if (root / "config.yaml").is_file() and (root / "campaigns").is_dir():
            return root
    raise EngageError("this installation has no example project (reinstall engage)")


def init_project(target: Path, *, force: bool = False) -> list[Path]:
    """Copy config.yaml, campaigns/ and templates/ into ``target``; never overwrite
    existing files unless ``force``. Returns the paths written."""
    src = examples_root()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for item in ("config.yaml", "campaigns", "templates"):
        dest = target / item
        if dest.exists() and not force:
            raise EngageError(f"{dest} already exists (use --force to overwrite)")
    for item in ("config.yaml", "campaigns", "templates"):
        dest = target / item
        if (src / item).is_dir():
            shutil.copytree(src / item, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src / item, dest)
        written.append(dest)
    return written


@dataclass
class DemoCampaign:
    plan: PlanResult
    sent: int


@dataclass
class Demo:
    folder: Path
    config: Config
    data: SampleStats
    campaigns: list[DemoCampaign] = field(default_factory=list)
    outbox: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    calendar: list[Entry] = field(default_factory=list)


def run_demo(
    folder: Path,
    now: datetime,
    *,
    customers: int = 500,
    progress: Callable[[str], None] = lambda _: None,
) -> Demo:
    """Create ``folder`` with a sample shop and run every example campaign once
    through the ``file`` channel.

    Each campaign's latest occurrence is planned, then dispatch walks through
    the day after it hour by hour (send windows are checked at the moment of
    sending), so that every customer's local send window has opened once.
    """
    if folder.exists() and any(folder.iterdir()) and not (folder / DEMO_MARKER).exists():
        raise EngageError(f"{folder} is not empty and not an engage demo folder")
    if (folder / DEMO_MARKER).exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / DEMO_MARKER).write_text("created by `engage demo`; safe to delete\n")
    init_project(folder)
    config = load_config(folder / "config.yaml", environ={})
    config = config.model_copy(
        update={
            "database_url": f"sqlite:///{folder / 'engage.db'}",
            "channels": config.channels.model_copy(update={"email": "file", "sms": "file"}),
            "secrets": {"ENGAGE_SECRET_KEY": secrets.token_urlsafe(32)},
        }
    )
    engine = get_engine(config.db_url)
    upgrade(engine)
    progress(f"generating {customers} sample customers")
    data = generate(engine, customers=customers, now=now)
    demo = Demo(folder, config, data)
    campaigns = load_campaigns(config)
    by_name = {c.name: c for c in campaigns}
    for campaign in sorted(campaigns, key=lambda c: -c.priority):
        past = list(occurrences(campaign, now - timedelta(days=8), now))
        at = past[-1] if past else next_occurrence(campaign, now)
        if at is None:
            continue
        progress(f"planning {campaign.name} at {at:%Y-%m-%d %H:%M} UTC")
        demo.campaigns.append(
            DemoCampaign(plan_occurrence(engine, config, campaign, at, now=at), 0)
        )
    simulated = [now]
    dispatcher = make_dispatcher(engine, config, lambda: by_name, clock=lambda: simulated[0])
    sent = 0
    try:
        for c in demo.campaigns:
            for hour in range(24):
                simulated[0] = c.plan.scheduled_at + timedelta(hours=hour)
                stats = dispatcher.run_once(simulated[0], campaign=c.plan.campaign)
                sent += stats.outcomes.get("sent", 0)
    finally:
        dispatcher.close()
        for ch in dispatcher.channels.values():
            ch.close()
    progress(f"sent {sent} messages through the file channel")
    for c in demo.campaigns:
        c.sent = counts_by_status(engine, campaign=c.plan.campaign).get("sent", 0)
    demo.outbox = counts_by_status(engine)
    out_dir = config.resolve(config.channels.file.dir)
    demo.files = sorted(out_dir.glob("*")) if out_dir.exists() else []
    demo.calendar = upcoming(engine, config, campaigns, now, 7)
    return demo
