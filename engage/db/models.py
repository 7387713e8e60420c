"""The documented tables (SPEC §2), SQLAlchemy 2.x typed ORM.

Instants are timezone-aware UTC in Python on every backend (``UTCDateTime``);
money is ``Decimal`` (``Money``). Shop systems may write these tables
directly, so names and meanings are part of the contract: change them only
through an Alembic migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from .states import MESSAGE_STATES

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL.

    SQLite has no time zones: values are stored as naive UTC text in a fixed
    format, so string comparison in SQL is chronological.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL aggregates on SQLite
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """Decimal amounts with 2 places. NUMERIC on PostgreSQL; on SQLite (which has
    no decimal type) stored as REAL and returned as a Decimal rounded to cents."""

    impl = Numeric(14, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Numeric(14, 2, asdecimal=False))
        return dialect.type_descriptor(Numeric(14, 2))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value).quantize(Decimal("0.01"))
        return float(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(Decimal("0.01"))


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), Decimal: Money(), dict[str, Any]: JSON()}


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(16))
    tier: Mapped[str | None] = mapped_column(String(32), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    email_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class Interaction(Base):
    """One thing a customer did. ``external_id`` makes ingest idempotent; when a
    source has none, ingest derives one from the row's content."""

    __tablename__ = "interaction"
    __table_args__ = (
        Index("ix_interaction_customer_occurred", "customer_id", "occurred_at"),
        Index("ix_interaction_customer_kind_occurred", "customer_id", "kind", "occurred_at"),
        # Reports read a kind's time range (per customer, summing amounts) from
        # this index alone.
        Index(
            "ix_interaction_kind_occurred_customer_amount",
            "kind",
            "occurred_at",
            "customer_id",
            "amount",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    amount: Mapped[Decimal | None]
    score: Mapped[int | None] = mapped_column(SmallInteger)  # survey answers (kind nps): 0-10
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class PointsLot(Base):
    """Points earned together. ``remaining`` is what FIFO redemptions left; a lot
    past ``expires_at`` with ``remaining > 0`` has expired that many points."""

    __tablename__ = "points_lot"
    __table_args__ = (
        Index("ix_points_lot_customer_expires", "customer_id", "expires_at"),
        Index("ix_points_lot_expires", "expires_at"),
        Index("ix_points_lot_earned_points", "earned_at", "points"),  # points earned, reports
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), nullable=False
    )
    points: Mapped[int] = mapped_column(Integer)
    remaining: Mapped[int] = mapped_column(Integer)
    earned_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    external_id: Mapped[str] = mapped_column(String(128), unique=True)


class PointsRedemption(Base):
    __tablename__ = "points_redemption"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True
    )
    points: Mapped[int] = mapped_column(Integer)
    redeemed_at: Mapped[datetime] = mapped_column(index=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)


class PointsAllocation(Base):
    """Which lots a redemption consumed (FIFO), and how much of each."""

    __tablename__ = "points_allocation"

    redemption_id: Mapped[int] = mapped_column(
        ForeignKey("points_redemption.id", ondelete="CASCADE"), primary_key=True
    )
    lot_id: Mapped[int] = mapped_column(
        ForeignKey("points_lot.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    points: Mapped[int] = mapped_column(Integer)


class CustomerFacts(Base):
    """What the interaction log and the points ledger say about a customer,
    over everything recorded: derived, kept current by database triggers
    (``engage.db.facts``) in the same transaction as every write to
    ``customer``, ``interaction`` and ``points_lot``. Never write it by hand.

    Audiences read it instead of the log when it answers their instant
    exactly (``engage.customers.facts.facts_reading``): ``horizon`` is the
    latest instant recorded for the customer (interactions, and lots that
    still hold points), so the facts are the customer's facts as of any
    instant at or after it. Money is in whole cents: sums are exact on every
    backend. ``points_left`` counts every lot that still holds points, expired
    or not: it is the balance at any instant before ``points_next_expiry``.
    """

    __tablename__ = "customer_facts"

    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE", onupdate="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime]  # the customer's, copied
    last_engagement_at: Mapped[datetime | None]  # latest interaction that counts as engagement
    last_activity_at: Mapped[datetime] = mapped_column(index=True)  # that, or created_at
    orders: Mapped[int] = mapped_column(Integer)
    lifetime_cents: Mapped[int] = mapped_column(BigInteger)  # sum of order amounts, in cents
    first_order_at: Mapped[datetime | None]
    last_order_at: Mapped[datetime | None]
    points_left: Mapped[int] = mapped_column(BigInteger)
    points_next_expiry: Mapped[datetime | None]
    horizon: Mapped[datetime | None] = mapped_column(index=True)


class FactsState(Base):
    """One row (``id = 1``): the engagement rule that ``customer_facts`` and its
    triggers follow (JSON, see ``engage.db.facts.EngagementRule``), and whether
    the facts are complete (``valid`` is false while a bulk load rebuilds them).
    ``paused`` is only ever true inside a bulk-load transaction on SQLite."""

    __tablename__ = "facts_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    engagement: Mapped[str] = mapped_column(Text)
    valid: Mapped[bool] = mapped_column(Boolean)
    paused: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime]


class CampaignRun(Base):
    """One occurrence of one campaign: the calendar's memory."""

    __tablename__ = "campaign_run"
    __table_args__ = (UniqueConstraint("campaign", "scheduled_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100))
    scheduled_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))  # planning | planned | missed | failed
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    finished_at: Mapped[datetime | None]
    # Why planning failed (state ``failed``): one line, no traceback.
    error: Mapped[str | None] = mapped_column(Text)


class CampaignSeen(Base):
    """When engage first saw a campaign: nothing before it can have been missed."""

    __tablename__ = "campaign_seen"

    campaign: Mapped[str] = mapped_column(String(100), primary_key=True)
    first_seen_at: Mapped[datetime]


class Message(Base):
    """The outbox and the send log in one table (SPEC §6)."""

    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_status_due", "status", "send_after"),
        Index("ix_message_customer_planned", "customer_id", "planned_at"),
        Index("ix_message_campaign_customer", "campaign", "customer_id"),
        Index("ix_message_run_status", "run_id", "status"),  # what each occurrence did
        # Webhooks find sent messages by it; planned ones have none (migration 0009).
        Index(
            "ix_message_provider_id",
            "provider_id",
            postgresql_where=text("provider_id IS NOT NULL"),
            sqlite_where=text("provider_id IS NOT NULL"),
        ),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in MESSAGE_STATES) + ")", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    campaign: Mapped[str] = mapped_column(String(100))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("campaign_run.id", ondelete="SET NULL"))
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), nullable=False
    )
    channel: Mapped[str] = mapped_column(String(16))  # email | sms
    address: Mapped[str | None] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer, default=50)
    counts_toward_cap: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16))  # engage.db.states.State
    planned_at: Mapped[datetime]
    send_after: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # While claimed or sending (engage.db.states): which process, the claim's
    # token (every move of a held row checks it) and when the lease runs out.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    claim: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # not sent by then: expired (the campaign's expires_after)
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_id: Mapped[str | None] = mapped_column(String(100))
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class Worker(Base):
    """A running ``engage run`` process; its heartbeat feeds ``engage status``.

    One row per process (``id`` is the lease owner, ``host:pid``), refreshed
    every minute and deleted on a clean exit. Rows of killed processes simply
    stop being refreshed: a row older than a few minutes is not a live worker.
    """

    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Suppression(Base):
    """An address that must not be messaged on a channel. Suppressions always win."""

    __tablename__ = "suppression"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    customer_id: Mapped[str | None] = mapped_column(
        ForeignKey("customer.id", ondelete="SET NULL"), index=True
    )
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(100))
    # The message that led to it (a webhook event, an unsubscribe link, a STOP
    # reply), when known: reports count unsubscribes per campaign from these.
    campaign: Mapped[str | None] = mapped_column(String(100))
    message_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    created_at: Mapped[datetime] = mapped_column(default=_now)


class WebhookEvent(Base):
    """A provider callback already applied: what makes webhooks idempotent.

    SendGrid redelivers a batch it got no 2xx for, and Twilio may retry an
    inbound message; a row here (``sg_event_id``, a Twilio MessageSid and
    status) means "seen, applied, do nothing again". ``engage serve`` deletes
    rows older than ``serve.event_retention`` (default 7 days, beyond any
    provider's retry horizon).
    """

    __tablename__ = "webhook_event"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)  # sendgrid | twilio
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # delivered, bounce, stop, ...
    received_at: Mapped[datetime] = mapped_column(index=True)


SUPPRESSION_REASONS = (
    "unsubscribe",
    "bounce",
    "spam_report",
    "sms_stop",
    "invalid_address",
    "manual",
)
