"""Reading the outbox: listings and counts for ``engage outbox`` and ``engage status``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select

from ..db.models import Message
from ..db.states import MESSAGE_STATES
from ..errors import EngageError
from ..timeutil import isoformat_z

M = cast(Table, Message.__table__)


@dataclass(frozen=True)
class Row:
    id: int
    campaign: str
    customer_id: str
    channel: str
    status: str
    send_after: datetime
    attempts: int
    sent_at: datetime | None
    provider_id: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "campaign": self.campaign,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "status": self.status,
            "send_after": isoformat_z(self.send_after),
            "attempts": self.attempts,
            "sent_at": isoformat_z(self.sent_at) if self.sent_at else None,
            "provider_id": self.provider_id,
            "error": self.error,
        }


def list_messages(
    engine: Engine,
    *,
    status: str | None = None,
    campaign: str | None = None,
    limit: int = 50,
) -> list[Row]:
    """Most recent first."""
    if status is not None and status not in MESSAGE_STATES:
        raise EngageError(f"unknown status {status!r} (one of {', '.join(MESSAGE_STATES)})")
    q = select(
        M.c.id,
        M.c.campaign,
        M.c.customer_id,
        M.c.channel,
        M.c.status,
        M.c.send_after,
        M.c.attempts,
        M.c.sent_at,
        M.c.provider_id,
        M.c.error,
    ).order_by(M.c.id.desc())
    if status:
        q = q.where(M.c.status == status)
    if campaign:
        q = q.where(M.c.campaign == campaign)
    with engine.connect() as conn:
        return [Row(*r) for r in conn.execute(q.limit(limit))]


def counts_by_status(engine: Engine, *, campaign: str | None = None) -> dict[str, int]:
    q = select(M.c.status, func.count()).group_by(M.c.status)
    if campaign:
        q = q.where(M.c.campaign == campaign)
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(q)}


def count_waiting(engine: Engine, campaign: str, now: datetime) -> int:
    """Planned messages of ``campaign`` whose send time is after ``now``."""
    q = select(func.count()).where(
        M.c.campaign == campaign, M.c.status == "planned", M.c.send_after > now
    )
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())
