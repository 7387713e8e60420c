"""The outbox for operators: listings and counts for ``engage outbox`` and
``engage status``, and the explicit re-queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select

from ..db import states
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


def statuses_of(engine: Engine, ids: Sequence[int]) -> dict[int, str]:
    with engine.connect() as conn:
        q = select(M.c.id, M.c.status).where(M.c.id.in_(list(ids)))
        return {i: st for i, st in conn.execute(q)}


def count_waiting(engine: Engine, run_id: int) -> int:
    """Messages of one occurrence still queued: waiting for a send window (or a retry)."""
    q = select(func.count()).where(
        M.c.run_id == run_id, M.c.status.in_([s.value for s in states.DUE])
    )
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


@dataclass(frozen=True)
class Requeue:
    """Which messages ``engage outbox requeue`` is about: ids, or filters, or both."""

    ids: Sequence[int] | None = None
    statuses: Sequence[str] | None = None
    campaign: str | None = None
    since: datetime | None = None

    def where(self) -> Any:
        try:
            return states.requeue_filter(
                ids=self.ids, statuses=self.statuses, campaign=self.campaign, since=self.since
            )
        except ValueError as exc:
            raise EngageError(str(exc)) from None


def count_requeueable(engine: Engine, which: Requeue) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(which.where())).scalar_one())


def requeue(engine: Engine, which: Requeue, now: datetime) -> list[int]:
    """Re-queue the messages ``which`` selects; returns the ids that moved."""
    with engine.begin() as conn:
        return states.requeue(conn, which.where(), now)
