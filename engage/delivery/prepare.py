"""Everything a claimed message needs before its provider call: the customer's
current data, the send-time checks, the rendered message.

The checks are facts about the moment of sending, not of planning: a backlog,
a catch-up after downtime or a retry moves that moment. So, at ``now``:

* the message has expired (older than its campaign's ``expires_after``) →
  ``expired``;
* the customer is gone, has withdrawn consent or is suppressed, or the
  campaign is gone → ``cancelled``;
* the customer's local send window (the campaign's, within the channel's;
  SMS never outside 08:00–21:00) is closed → back to the queue for the
  window's next opening, or ``expired`` if it opens too late;
* the template fails for this customer → ``render_error``;
* otherwise it is ``Ready`` to send.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ..config import Config, Window
from ..customers.recipients import Recipient, load_recipients
from ..db.states import ClaimedRow, State, waiting
from ..errors import EngageError
from ..planning import suppressions
from ..planning.policy import Suppressions, effective_window, next_opening, reachability
from ..templating.context import CampaignInfo
from ..templating.renderer import Renderer
from .channels.base import Outgoing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Where one claimed message goes, and why: ``label`` names what happened
    (a state, or ``deferred`` / ``released`` / ``refused`` for a message that
    goes back to the queue), ``values`` are the columns to set, ``reason`` is
    for the log, ``suppress`` a suppression to add first. ``started``: it
    came back from a provider call (the row is ``sending``, not ``claimed``)."""

    msg: ClaimedRow
    state: State
    label: str
    values: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    suppress: tuple[str, str, str | None, str, str | None] | None = None
    started: bool = False


def outcome(msg: ClaimedRow, state: State, error: str | None = None, **values: Any) -> Outcome:
    """An outcome named after its state; ``error`` is recorded and logged."""
    if error is not None:
        values["error"] = error
    return Outcome(msg, state, state.value, values, error)


@dataclass(frozen=True)
class Ready:
    """A message that passed the send-time checks and is rendered; ``timezone``
    and ``window`` let ``recheck`` ask again just before its request starts."""

    msg: ClaimedRow
    outgoing: Outgoing
    timezone: str
    window: Window


@dataclass(frozen=True)
class _Campaign:
    info: Any  # CampaignInfo, or the campaign as it is if that cannot be read
    window: Window | None


def prepare(
    engine: Engine,
    config: Config,
    renderer: Renderer,
    claimed: Sequence[ClaimedRow],
    campaigns: Mapping[str, Any],
    now: datetime,
    as_of: datetime | None = None,
) -> list[Ready | Outcome]:
    """For each claimed message: ``Ready``, or the ``Outcome`` that ends or
    defers it here. ``now`` is the moment of sending (windows, expiry);
    ``as_of`` the moment the message is rendered for (default ``now``)."""
    as_of = as_of or now
    with engine.connect() as conn:
        recipients = load_recipients(conn, config, [c.customer_id for c in claimed], as_of)
        supp = suppressions.load_for(conn, list(recipients.values()))
    known = _campaigns(campaigns, {c.campaign for c in claimed})
    out: list[Ready | Outcome] = []
    for msg in claimed:
        try:
            out.append(
                _prepare_one(
                    config, renderer, msg, recipients.get(msg.customer_id), supp, known, now, as_of
                )
            )
        except Exception as exc:  # a bug for one message must not strand the batch
            log.exception(
                "prepare crashed", extra={"event": "dispatch_error", "message_id": msg.id}
            )
            out.append(outcome(msg, State.FAILED, f"internal error: {type(exc).__name__}"))
    return out


def _campaigns(campaigns: Mapping[str, Any], names: Iterable[str]) -> dict[str, _Campaign]:
    """What rendering and the window read of each named campaign, once per
    batch. A campaign whose settings cannot be read stays as it is: its
    messages then fail one by one at render time instead of failing the batch."""
    out = {}
    for name in names:
        if name in campaigns:
            campaign = campaigns[name]
            try:
                info: Any = CampaignInfo.of(campaign)
            except Exception:
                info = campaign
            out[name] = _Campaign(info, getattr(campaign, "send_window", None))
    return out


def _prepare_one(
    config: Config,
    renderer: Renderer,
    msg: ClaimedRow,
    recipient: Recipient | None,
    supp: Suppressions,
    campaigns: Mapping[str, _Campaign],
    now: datetime,
    as_of: datetime,
) -> Ready | Outcome:
    if msg.expires_at is not None and now >= msg.expires_at:
        return outcome(msg, State.EXPIRED, "not sent before its campaign's expires_after")
    if recipient is None:
        return outcome(msg, State.CANCELLED, "customer no longer exists")
    campaign = campaigns.get(msg.campaign)
    if campaign is None:
        return outcome(msg, State.CANCELLED, "campaign no longer exists or is invalid")
    address, reason = reachability(recipient, msg.channel, config)
    if reason is None and address and supp.blocks(msg.channel, address, recipient.customer_id):
        reason = "suppressed"
    if reason is not None or not address:
        return outcome(msg, State.CANCELLED, f"at send time: {reason}")
    window = effective_window(msg.channel, campaign.window, config)
    late = _timing(msg, recipient.timezone, window, now)
    if late is not None:
        return late
    try:
        if msg.channel == "email":
            email = renderer.render_email(
                msg.template, campaign.info, recipient, as_of, message_ref=str(msg.id)
            )
            outgoing = Outgoing(
                message_id=msg.id,
                channel="email",
                to=address,
                campaign=msg.campaign,
                subject=email.subject,
                html=email.html,
                text=email.text,
                headers=dict(email.headers),
            )
        else:
            sms = renderer.render_sms(msg.template, campaign.info, recipient, as_of)
            outgoing = Outgoing(
                message_id=msg.id, channel="sms", to=address, campaign=msg.campaign, text=sms.body
            )
    except EngageError as exc:
        return outcome(msg, State.RENDER_ERROR, str(exc), address=address)
    return Ready(msg, outgoing, recipient.timezone, window)


def recheck(item: Ready, now: datetime) -> Outcome | None:
    """The checks that depend on the clock alone (expiry, the send window),
    again at ``now``, just before the request starts: a rate limit or a full
    pool may have held a prepared message past its window's end. ``None``: send."""
    return _timing(item.msg, item.timezone, item.window, now)


def _timing(msg: ClaimedRow, timezone: str, window: Window, now: datetime) -> Outcome | None:
    if msg.expires_at is not None and now >= msg.expires_at:
        return outcome(msg, State.EXPIRED, "not sent before its campaign's expires_after")
    opens = next_opening(now, timezone, window)
    if opens <= now:
        return None
    if msg.expires_at is not None and opens >= msg.expires_at:
        reason = "its send window opens after its campaign's expires_after"
        return outcome(msg, State.EXPIRED, reason)
    values = {"send_after": opens, "next_attempt_at": None}
    return Outcome(msg, waiting(msg.attempts), "deferred", values, "send window closed")


__all__ = ["Outcome", "Ready", "outcome", "prepare", "recheck"]
