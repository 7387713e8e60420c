"""What one campaign would do, without writing anything: the dry run with each
would-be message rendered, and the exact message one customer would get."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, exists, select

from ..campaigns.audience import audience_ids, expiring_window
from ..campaigns.schema import Campaign
from ..config import Config
from ..customers.recipients import load_recipients
from ..db.models import Customer
from ..db.session import unusable
from ..errors import ConfigError, EngageError, NotFound, PlanningFailed, describe
from ..templating.renderer import PLACEHOLDER_TOKEN, RenderedEmail, RenderedSms, Renderer
from ..unsubscribe import check_secret_key
from . import suppressions
from .planner import DryRun, Evaluated, dry_run, load_history
from .policy import CampaignRules, Decision, decide


def placeholder_note(config: Config) -> str | None:
    """Why previews and dry runs show placeholder unsubscribe links, or None when
    ``ENGAGE_SECRET_KEY`` can sign them. Neither needs the key: they send nothing."""
    key = config.secrets.get("ENGAGE_SECRET_KEY")
    if key:
        try:
            check_secret_key(key)
            return None
        except ConfigError as exc:
            why = str(exc)
    else:
        why = "ENGAGE_SECRET_KEY is not set"
    return (
        f"{why}: unsubscribe links show a placeholder (/u/{PLACEHOLDER_TOKEN}); "
        "sending needs the key"
    )


def preview_renderer(config: Config) -> Renderer:
    """A renderer for previews and dry runs: signed links when the key can sign them."""
    return Renderer(config, placeholder_links=placeholder_note(config) is not None)


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
    """Who would get what and why not, rendering each would-be message; writes nothing.

    A campaign the database cannot evaluate raises ``PlanningFailed`` naming it."""
    check = render_check(preview_renderer(config), campaign, as_of) if render else None
    try:
        return dry_run(engine, config, campaign, as_of, limit=limit, check_render=check)
    except Exception as exc:
        if isinstance(exc, EngageError) or unusable(exc):
            raise
        raise PlanningFailed(
            f"campaign {campaign.name}: {describe(exc)}", campaign=campaign.name
        ) from exc


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
    renderer = preview_renderer(config)
    out = Preview(campaign.name, customer_id, shown, d.address, d.action, d.reason, d.send_at)
    if shown == "email":
        out.email = renderer.render_email(campaign.template, campaign, recipient, at)
    else:
        out.sms = renderer.render_sms(campaign.template, campaign, recipient, at)
    return out


@dataclass(frozen=True)
class CustomerDecision:
    """What one campaign would decide for one customer: ``decision`` is None
    when the customer is not in the campaign's audience at that instant."""

    campaign: str
    in_audience: bool
    decision: Decision | None


def decide_for_customer(
    engine: Engine,
    config: Config,
    campaigns: Sequence[Campaign],
    customer_id: str,
    at: datetime,
) -> list[CustomerDecision]:
    """Each campaign's decision for ``customer_id`` if it ran at ``at``, and why.

    The audience is the campaign's own SQL narrowed to this customer, then the
    rules of SPEC §5 apply exactly as when planning (suppressions, reentry,
    holdout, frequency cap). Writes nothing.
    """
    out = []
    customer = Customer.__table__.c
    with engine.connect() as conn:
        for campaign in campaigns:
            member = audience_ids(campaign.audience, config, at).where(customer.id == customer_id)
            if not conn.execute(select(exists(member))).scalar():
                out.append(CustomerDecision(campaign.name, False, None))
                continue
            recipient = load_recipients(
                conn, config, [customer_id], at, expiring_within=expiring_window(campaign.audience)
            )[customer_id]
            rules = CampaignRules.of(campaign)
            supp = suppressions.load_for(conn, [recipient])
            history = load_history(conn, [recipient], rules, config, at, None)[customer_id]
            out.append(
                CustomerDecision(
                    campaign.name, True, decide(recipient, rules, config, at, supp, history)
                )
            )
    return out
