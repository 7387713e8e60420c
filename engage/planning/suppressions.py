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


def add(
    engine: Engine,
    rows: Iterable[tuple[str, str, str | None, str, str | None]],
    now: datetime | None = None,
) -> int:
    """Insert (channel, address, customer_id, reason, source) rows; existing ones win.

    Returns how many were new.
    """
    now = now or utcnow()
    values = []
    for channel, address, customer_id, reason, source in rows:
        if channel not in CHANNELS:
            raise EngageError(f"unknown channel {channel!r} (use email or sms)")
        if reason not in SUPPRESSION_REASONS:
            raise EngageError(
                f"unknown reason {reason!r} (one of {', '.join(SUPPRESSION_REASONS)})"
            )
        if not address.strip():
            raise EngageError("an address is required")
        values.append(
            {
                "channel": channel,
                "address": normalize_address(channel, address),
                "customer_id": customer_id,
                "reason": reason,
                "source": source,
                "created_at": now,
            }
        )
    with engine.begin() as conn:
        return insert_ignore(conn, S, values, ["channel", "address"])


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
