"""One customer's story: who they are, what they did, their points, what engage
sent and what is planned (``engage customer ID``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from ..config import Config
from ..customers.recipients import Recipient, load_recipients
from ..db.models import Interaction, Message, PointsLot, Suppression
from ..errors import NotFound
from ..timeutil import isoformat_z


@dataclass(frozen=True)
class Timeline:
    recipient: Recipient
    as_of: datetime
    days_quiet: int
    interactions: list[dict[str, Any]]
    lots: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    suppressions: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        r = self.recipient
        customer = {k: v for k, v in asdict(r).items() if k not in ("points",)}
        return _jsonable(
            {
                "as_of": self.as_of,
                "customer": customer,
                "days_quiet": self.days_quiet,
                "points": asdict(r.points),
                "interactions": self.interactions,
                "points_lots": self.lots,
                "messages": self.messages,
                "suppressions": self.suppressions,
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return isoformat_z(value)
    if hasattr(value, "is_finite"):  # Decimal
        return str(value)
    return value


def customer_timeline(
    engine: Engine, config: Config, customer_id: str, as_of: datetime, *, limit: int = 20
) -> Timeline:
    """Everything about one customer as of ``as_of`` (recent items first)."""
    with engine.connect() as conn:
        recipient = load_recipients(conn, config, [customer_id], as_of).get(customer_id)
        if recipient is None:
            raise NotFound(f"no customer {customer_id!r} (as of {isoformat_z(as_of)})")
        i = Interaction.__table__
        interactions = [
            dict(row._mapping)
            for row in conn.execute(
                select(i.c.kind, i.c.occurred_at, i.c.amount, i.c.external_id)
                .where(i.c.customer_id == customer_id, i.c.occurred_at <= as_of)
                .order_by(i.c.occurred_at.desc(), i.c.id.desc())
                .limit(limit)
            )
        ]
        p = PointsLot.__table__
        lots = [
            {**row._mapping, "expired": row.expires_at <= as_of}
            for row in conn.execute(
                select(p.c.points, p.c.remaining, p.c.earned_at, p.c.expires_at, p.c.external_id)
                .where(p.c.customer_id == customer_id, p.c.earned_at <= as_of)
                .order_by(p.c.expires_at.desc())
                .limit(limit)
            )
        ]
        m = Message.__table__
        messages = [
            dict(row._mapping)
            for row in conn.execute(
                select(
                    m.c.id,
                    m.c.campaign,
                    m.c.channel,
                    m.c.status,
                    m.c.send_after,
                    m.c.sent_at,
                    m.c.error,
                )
                .where(m.c.customer_id == customer_id)
                .order_by(m.c.send_after.desc(), m.c.id.desc())
                .limit(limit)
            )
        ]
        s = Suppression.__table__
        suppressions = [
            dict(row._mapping)
            for row in conn.execute(
                select(s.c.channel, s.c.address, s.c.reason, s.c.created_at).where(
                    or_(
                        s.c.customer_id == customer_id,
                        and_(
                            s.c.channel == "email", s.c.address == (recipient.email or "").lower()
                        ),
                        and_(s.c.channel == "sms", s.c.address == (recipient.phone or "")),
                    )
                )
            )
        ]
    days_quiet = max((as_of - recipient.last_activity).days, 0)
    return Timeline(recipient, as_of, days_quiet, interactions, lots, messages, suppressions)
