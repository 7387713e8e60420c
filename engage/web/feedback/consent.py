"""Unsubscribe links: what a signed token's owner sees and may change.

A token names (customer, channel, campaign). Unsubscribing suppresses the
customer's current address on that channel (reason ``unsubscribe``, with
the campaign and its latest message to that customer, for the report) and
clears the channel's consent flag. Re-subscribing, through the same token
only, lifts ``unsubscribe`` suppressions of that customer on that channel
and sets consent again; a suppression for another reason (a bounce, a spam
report, an operator's) stays, and the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from sqlalchemy import Connection, Engine, Table, and_, or_, select

from ...db.models import Customer, Message, Suppression
from ...errors import NotFound
from ...planning import suppressions
from ...planning.policy import normalize_address
from ...planning.suppressions import NewSuppression
from ...unsubscribe import UnsubscribeClaim
from .ledger import set_consent

C = cast(Table, Customer.__table__)
M = cast(Table, Message.__table__)
S = cast(Table, Suppression.__table__)
LIFTABLE = ("unsubscribe",)

SubscriptionState = Literal["subscribed", "unsubscribed", "blocked"]


@dataclass(frozen=True)
class Subscription:
    """One customer's standing on one channel, as the unsubscribe page shows it."""

    channel: str
    campaign: str
    address: str | None
    state: SubscriptionState
    changed: bool = False  # this request changed it


def _customer(conn: Connection, claim: UnsubscribeClaim) -> str | None:
    column = C.c.email if claim.channel == "email" else C.c.phone
    row = conn.execute(select(column).where(C.c.id == claim.customer_id)).first()
    if row is None:
        raise NotFound("this customer is no longer known")
    return cast(str | None, row[0])


def _state(conn: Connection, claim: UnsubscribeClaim, address: str | None) -> SubscriptionState:
    match = [S.c.customer_id == claim.customer_id]
    if address:
        match.append(S.c.address == normalize_address(claim.channel, address))
    reasons = set(
        conn.execute(select(S.c.reason).where(S.c.channel == claim.channel, or_(*match))).scalars()
    )
    if reasons - set(LIFTABLE):
        return "blocked"
    return "unsubscribed" if reasons else "subscribed"


def look_up(engine: Engine, claim: UnsubscribeClaim) -> Subscription:
    with engine.connect() as conn:
        address = _customer(conn, claim)
        return Subscription(claim.channel, claim.campaign, address, _state(conn, claim, address))


def _latest_message(conn: Connection, claim: UnsubscribeClaim) -> int | None:
    row = conn.execute(
        select(M.c.id)
        .where(
            and_(
                M.c.campaign == claim.campaign,
                M.c.customer_id == claim.customer_id,
                M.c.channel == claim.channel,
                M.c.sent_at.is_not(None),
            )
        )
        .order_by(M.c.sent_at.desc(), M.c.id.desc())
        .limit(1)
    ).first()
    return int(row[0]) if row else None


def unsubscribe(
    engine: Engine, claim: UnsubscribeClaim, now: datetime, source: str = "unsubscribe link"
) -> Subscription:
    """Suppress the address and clear consent; idempotent (``changed`` says
    whether this call did anything)."""
    with engine.begin() as conn:
        address = _customer(conn, claim)
        changed = set_consent(conn, claim.channel, [claim.customer_id], False, now) > 0
        if address:
            entry = NewSuppression(
                claim.channel,
                address,
                claim.customer_id,
                "unsubscribe",
                source,
                claim.campaign,
                _latest_message(conn, claim),
            )
            changed = suppressions.insert(conn, [entry], now) > 0 or changed
        state = _state(conn, claim, address)
        return Subscription(claim.channel, claim.campaign, address, state, changed)


def resubscribe(engine: Engine, claim: UnsubscribeClaim, now: datetime) -> Subscription:
    """Lift the customer's ``unsubscribe`` suppressions on the channel and set
    consent again, unless another suppression blocks the address."""
    with engine.begin() as conn:
        address = _customer(conn, claim)
        if _state(conn, claim, address) == "blocked":
            return Subscription(claim.channel, claim.campaign, address, "blocked")
        lifted = suppressions.lift(conn, claim.channel, LIFTABLE, customer_id=claim.customer_id)
        if address:
            lifted += suppressions.lift(conn, claim.channel, LIFTABLE, address=address)
        changed = set_consent(conn, claim.channel, [claim.customer_id], True, now) > 0
        return Subscription(
            claim.channel, claim.campaign, address, "subscribed", changed or lifted > 0
        )
