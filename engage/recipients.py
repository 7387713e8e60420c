"""What engage knows about a customer at one instant, loaded in bulk with SQL.

``Recipient`` is the single shape that the policy rules, the template context
and the channels read; ``load_recipients`` fills it for many customers in a
few set-based queries (never one query per customer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class PointsSummary:
    balance: int = 0  # unexpired points left, as of the instant
    expiring: int = 0  # of those, points whose lot expires within the window asked for
    next_expiry: datetime | None = None  # earliest expires_at of a lot with points left


@dataclass(frozen=True)
class Recipient:
    customer_id: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    timezone: str  # IANA, config default already applied
    locale: str  # config default already applied
    tier: str | None
    attributes: dict[str, Any]
    email_opt_in: bool
    sms_opt_in: bool
    created_at: datetime
    last_activity: datetime  # latest engagement, or created_at when none
    orders: int = 0
    lifetime_value: Decimal = Decimal("0.00")
    points: PointsSummary = field(default_factory=PointsSummary)
