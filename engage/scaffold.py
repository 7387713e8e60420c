"""``engage init`` and ``engage demo``: a ready project folder, and a guided first run."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

from sqlalchemy import Engine, select

from .campaigns.cron import next_occurrence, occurrences
from .campaigns.loader import load_campaigns
from .config import Config, load_config
from .db import get_engine, upgrade
from .db.models import Message
from .delivery.outbox import counts_by_status
from .delivery.send import make_dispatcher
from .errors import EngageError
from .ingest import import_rows
from .ingest.sample import SampleStats, generate, responses
from .planning.calendar import Entry, upcoming
from .planning.planner import PlanResult, plan_occurrence

DEMO_MARKER = ".engage-demo"
DEMO_ENV = ".env"  # the demo's ENGAGE_SECRET_KEY, for `engage serve`


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
    unsubscribe_link: str | None = None  # from the first email written
    unsubscribe_file: Path | None = None

    @property
    def env_file(self) -> Path:
        return self.folder / DEMO_ENV


def run_demo(
    folder: Path,
    now: datetime,
    *,
    customers: int = 2000,
    progress: Callable[[str], None] = lambda _: None,
) -> Demo:
    """Create ``folder`` with a sample shop and run every example campaign once
    through the ``file`` channel.

    Each campaign's latest occurrence that is at least ``attribution_window``
    old is planned, then dispatch walks through the day after it hour by hour
    (send windows are checked at the moment of sending), so that every
    customer's local send window has opened once. Then some recipients (and
    fewer of the held-out customers) order within the window, so that
    ``engage report`` has conversions and a lift to show.
    """
    if folder.exists() and any(folder.iterdir()) and not (folder / DEMO_MARKER).exists():
        raise EngageError(f"{folder} is not empty and not an engage demo folder")
    if (folder / DEMO_MARKER).exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / DEMO_MARKER).write_text("created by `engage demo`; safe to delete\n")
    init_project(folder)
    _serve_locally(folder / "config.yaml")
    # The unsubscribe links are signed with this key: `engage serve` needs it
    # too, so it is kept (readable by the owner only) in the demo folder.
    secret = secrets.token_urlsafe(32)
    env_file = folder / DEMO_ENV
    env_file.write_text(f"ENGAGE_SECRET_KEY={secret}\n")
    env_file.chmod(0o600)
    config = load_config(folder / "config.yaml", environ={})
    config = config.model_copy(
        update={
            "database_url": f"sqlite:///{folder / 'engage.db'}",
            "channels": config.channels.model_copy(update={"email": "file", "sms": "file"}),
            "secrets": {"ENGAGE_SECRET_KEY": secret},
        }
    )
    engine = get_engine(config.db_url)
    upgrade(engine)
    progress(f"generating {customers} sample customers")
    data = generate(engine, customers=customers, now=now)
    demo = Demo(folder, config, data)
    campaigns = load_campaigns(config)
    by_name = {c.name: c for c in campaigns}
    # A report sees every attribution window closed (sends wait up to a day for
    # their send window to open).
    settled = now - config.attribution_window - timedelta(days=1)
    for campaign in sorted(campaigns, key=lambda c: -c.priority):
        past = list(occurrences(campaign, settled - timedelta(days=8), settled))
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
    orders = responses(_members(engine), now=now, window=config.attribution_window)
    progress(f"adding {len(orders)} orders placed after the campaigns' messages")
    import_rows(engine, config, "interactions", enumerate(orders, 1), source="demo", now=now)
    demo.outbox = counts_by_status(engine)
    out_dir = config.resolve(config.channels.file.dir)
    demo.files = sorted(out_dir.glob("*")) if out_dir.exists() else []
    for path in demo.files:
        link = unsubscribe_link(path)
        if link:
            demo.unsubscribe_link, demo.unsubscribe_file = link, path
            break
    demo.calendar = upcoming(engine, config, campaigns, now, 7)
    return demo


def _members(engine: Engine) -> list[tuple[str, str, datetime, bool]]:
    """Recipients and held-out customers of every campaign, with the planned send instant."""
    m = Message.__table__
    reached = ("sent", "delivered", "held_out")
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.c.campaign, m.c.customer_id, m.c.send_after, m.c.status)
            .where(m.c.status.in_(reached))
            .order_by(m.c.id)
        ).all()
    return [(c, cid, at, status == "held_out") for c, cid, at, status in rows]


_PUBLIC_URL = re.compile(r"^public_url:.*$", re.MULTILINE)


def _serve_locally(config_file: Path) -> None:
    """Point the demo's ``public_url`` at ``engage serve`` on this machine, so
    the unsubscribe links in its emails work locally."""
    text = config_file.read_text()
    line = "public_url: http://127.0.0.1:8080          # the demo: `engage serve` on this machine"
    config_file.write_text(_PUBLIC_URL.sub(line, text, count=1))


def unsubscribe_link(eml: Path) -> str | None:
    """The one-click URL of an email's ``List-Unsubscribe`` header, if any."""
    if eml.suffix != ".eml":
        return None
    header = message_from_bytes(eml.read_bytes(), policy=policy.default).get("List-Unsubscribe")
    match = re.search(r"<(https?://[^>]+)>", str(header or ""))
    return match.group(1) if match else None
