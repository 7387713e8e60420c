"""High-level operations behind the CLI commands and the daemon.

Each function builds what it needs from config, does one job through the
library (audience -> policy -> planner -> dispatch) and returns a plain
result that the caller prints. No printing here.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from . import suppressions
from .campaigns.audience import expiring_window
from .campaigns.loader import load_campaigns
from .campaigns.schema import Campaign
from .channels import build_channels
from .config import Config
from .dispatch import Dispatcher, DispatchStats
from .errors import EngageError, NotFound
from .outbox import count_waiting
from .planner import DryRun, Evaluated, PlanResult, dry_run, load_history, plan_occurrence
from .policy import CampaignRules, decide
from .recipients import load_recipients
from .templating.renderer import RenderedEmail, RenderedSms, Renderer


def find_campaign(campaigns: Sequence[Campaign], name: str) -> Campaign:
    for c in campaigns:
        if c.name == name:
            return c
    names = [c.name for c in campaigns]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names) or 'none'})"
    raise NotFound(f"no campaign named {name!r}{hint}")


def load_campaign(config: Config, name: str) -> Campaign:
    return find_campaign(load_campaigns(config), name)


def render_check(
    renderer: Renderer, campaign: Campaign, as_of: datetime
) -> Callable[[Evaluated], str | None]:
    """A dry-run hook: render the would-be message, return the error text if any."""

    def check(e: Evaluated) -> str | None:
        try:
            if e.decision.channel == "sms":
                renderer.render_sms(campaign.template, campaign, e.recipient, as_of)
            else:
                renderer.render_email(campaign.template, campaign, e.recipient, as_of)
        except EngageError as exc:
            return str(exc)
        return None

    return check


def dry_run_campaign(
    engine: Engine,
    config: Config,
    campaign: Campaign,
    as_of: datetime,
    *,
    limit: int | None = None,
    render: bool = True,
) -> DryRun:
    """Who would get what and why not, rendering each would-be message; writes nothing."""
    check = render_check(Renderer(config), campaign, as_of) if render else None
    return dry_run(engine, config, campaign, as_of, limit=limit, check_render=check)


def make_dispatcher(
    engine: Engine,
    config: Config,
    campaigns: Callable[[], Mapping[str, Any]],
    *,
    renderer: Renderer | None = None,
    stop: threading.Event | None = None,
) -> Dispatcher:
    return Dispatcher(
        engine, config, build_channels(config), renderer or Renderer(config), campaigns, stop=stop
    )


@dataclass
class SendReport:
    plan: PlanResult
    dispatch: DispatchStats
    waiting: int  # planned for later: outside the customers' send windows


def send_occurrence(engine: Engine, config: Config, campaign: Campaign, at: datetime) -> SendReport:
    """Plan one occurrence at ``at`` and deliver what is due by then.

    Messages whose send window opens later stay ``planned`` for the daemon.
    """
    channels_ready = build_channels(config)  # fail on missing secrets before planning
    for ch in channels_ready.values():
        ch.close()
    plan = plan_occurrence(engine, config, campaign, at, now=at)
    dispatcher = make_dispatcher(engine, config, lambda: {campaign.name: campaign})
    try:
        stats = dispatcher.run_once(at, campaign=campaign.name)
    finally:
        dispatcher.close()
        for ch in dispatcher.channels.values():
            ch.close()
    return SendReport(plan, stats, count_waiting(engine, campaign.name, at))


@dataclass
class Preview:
    campaign: str
    customer_id: str
    channel: str | None
    address: str | None
    decision: str
    reason: str | None
    send_at: datetime | None
    email: RenderedEmail | None = None
    sms: RenderedSms | None = None


def preview_message(
    engine: Engine,
    config: Config,
    campaign: Campaign,
    customer_id: str,
    at: datetime,
    *,
    channel: str | None = None,
) -> Preview:
    """The exact message ``customer_id`` would get at ``at``, and whether they would get it.

    Rendering happens even when the rules would skip the customer, so a
    marketer can always see the content; the decision says what would happen.
    """
    with engine.connect() as conn:
        recipient = load_recipients(
            conn, config, [customer_id], at, expiring_within=expiring_window(campaign.audience)
        ).get(customer_id)
        if recipient is None:
            raise NotFound(f"no customer {customer_id!r}")
        supp = suppressions.load_for(conn, [recipient])
        rules = CampaignRules.of(campaign)
        if channel is not None:
            if channel not in ("email", "sms"):
                raise EngageError(f"--channel must be email or sms, not {channel!r}")
            rules = CampaignRules(**{**rules.__dict__, "channels": (channel,)})
        history = load_history(conn, [recipient], rules, config, at, None)[customer_id]
    d = decide(recipient, rules, config, at, supp, history)
    shown = channel or d.channel or campaign.channels[0]
    renderer = Renderer(config)
    out = Preview(campaign.name, customer_id, shown, d.address, d.action, d.reason, d.send_at)
    if shown == "email":
        out.email = renderer.render_email(campaign.template, campaign, recipient, at)
    else:
        out.sms = renderer.render_sms(campaign.template, campaign, recipient, at)
    return out
