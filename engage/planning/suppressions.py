"""The suppression list: addresses (and customers) that must never be messaged.

Suppressions always win over consent flags and campaign rules. They come from
unsubscribes, provider errors (bounces, Twilio 21610, invalid numbers), spam
reports and operators (``engage suppress``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Engine, Table, and_, delete, or_, select

from ..customers.recipients import Recipient
from ..db.bulk import all_rows, in_values, insert_ignore
from ..db.models import SUPPRESSION_REASONS, Suppression
from ..errors import EngageError
from ..timeutil import utcnow
from .policy import Suppressions, normalize_address

S = cast(Table, Suppression.__table__)
CHANNELS = ("email", "sms")


@dataclass(frozen=True)
class Entry:
    channel: str
    address: str
    customer_id: str | None
    reason: str
    source: str | None
    created_at: datetime


def load_for(conn: Connection, recipients: Sequence[Recipient]) -> Suppressions:
    """Suppressions touching these recipients (by customer id or address), one query."""
    if not recipients:
        return Suppressions()
    ids = [r.customer_id for r in recipients]
    emails = [normalize_address("email", r.email) for r in recipients if r.email]
    phones = [r.phone for r in recipients if r.phone]
    q = select(S.c.channel, S.c.address, S.c.customer_id).where(
        or_(
            in_values(S.c.customer_id, ids),
            and_(S.c.channel == "email", in_values(S.c.address, emails)),
            and_(S.c.channel == "sms", in_values(S.c.address, phones)),
        )
    )
    return Suppressions.of(all_rows(conn, q))


@dataclass(frozen=True)
class NewSuppression:
    """A suppression to add; ``campaign`` and ``message_id`` name the message
    that led to it (an unsubscribe link, a webhook event), when known."""

    channel: str
    address: str
    customer_id: str | None
    reason: str
    source: str | None
    campaign: str | None = None
    message_id: int | None = None


def _row(entry: NewSuppression, now: datetime) -> dict[str, object]:
    if entry.channel not in CHANNELS:
        raise EngageError(f"unknown channel {entry.channel!r} (use email or sms)")
    if entry.reason not in SUPPRESSION_REASONS:
        raise EngageError(
            f"unknown reason {entry.reason!r} (one of {', '.join(SUPPRESSION_REASONS)})"
        )
    if not entry.address.strip():
        raise EngageError("an address is required")
    return {
        "channel": entry.channel,
        "address": normalize_address(entry.channel, entry.address),
        "customer_id": entry.customer_id,
        "reason": entry.reason,
        "source": entry.source,
        "campaign": entry.campaign,
        "message_id": entry.message_id,
        "created_at": now,
    }


def insert(conn: Connection, entries: Iterable[NewSuppression], now: datetime) -> int:
    """Add suppressions inside the caller's transaction; existing ones win.

    Returns how many were new."""
    rows = [_row(e, now) for e in entries]
    return insert_ignore(conn, S, rows, ["channel", "address"]) if rows else 0


def add(
    engine: Engine,
    rows: Iterable[tuple[str, str, str | None, str, str | None] | NewSuppression],
    now: datetime | None = None,
) -> int:
    """Insert (channel, address, customer_id, reason, source) rows; existing ones win.

    Returns how many were new.
    """
    now = now or utcnow()
    entries = [r if isinstance(r, NewSuppression) else NewSuppression(*r) for r in rows]
    with engine.begin() as conn:
        return insert(conn, entries, now)


def lift(
    conn: Connection,
    channel: str,
    reasons: Sequence[str],
    *,
    address: str | None = None,
    customer_id: str | None = None,
) -> int:
    """Inside the caller's transaction, delete the suppressions of ``channel``
    with one of ``reasons`` for ``address`` or ``customer_id`` (a customer who
    asks to come back: suppressions for other reasons, such as a bounce or a
    spam report, stay). Returns how many were removed."""
    match = []
    if address:
        match.append(S.c.address == normalize_address(channel, address))
    if customer_id:
        match.append(S.c.customer_id == customer_id)
    if not match:
        return 0
    result = conn.execute(
        delete(S).where(S.c.channel == channel, S.c.reason.in_(list(reasons)), or_(*match))
    )
    return int(result.rowcount)


def remove(engine: Engine, channel: str, address: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            delete(S)
            .where(S.c.channel == channel, S.c.address == normalize_address(channel, address))
            .returning(S.c.id)
        )
        return bool(result.all())


def list_entries(
    engine: Engine, *, channel: str | None = None, limit: int | None = None
) -> list[Entry]:
    q = select(
        S.c.channel, S.c.address, S.c.customer_id, S.c.reason, S.c.source, S.c.created_at
    ).order_by(S.c.created_at.desc(), S.c.id.desc())
    if channel:
        q = q.where(S.c.channel == channel)
    if limit:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [Entry(*row) for row in conn.execute(q)]
