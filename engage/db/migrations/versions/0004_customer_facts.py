"""customer facts kept current by triggers, for audiences and planning

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-04 20:00:00

Creates ``customer_facts`` and ``facts_state``, installs the triggers that
keep the facts current (``engage.db.facts``) for the default engagement rule
and fills the facts from the existing log. ``engage db upgrade`` then
re-installs them for the config's rule when it differs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engage.db.models
from engage.db import facts
from engage.timeutil import utcnow

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_UTC = engage.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_facts",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("last_engagement_at", _UTC, nullable=True),
        sa.Column("last_activity_at", _UTC, nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("lifetime_cents", sa.BigInteger(), nullable=False),
        sa.Column("first_order_at", _UTC, nullable=True),
        sa.Column("last_order_at", _UTC, nullable=True),
        sa.Column("points_left", sa.BigInteger(), nullable=False),
        sa.Column("points_next_expiry", _UTC, nullable=True),
        sa.Column("horizon", _UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customer.id"],
            name=op.f("fk_customer_facts_customer_id_customer"),
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_facts")),
    )
    with op.batch_alter_table("customer_facts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_facts_last_activity_at"), ["last_activity_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_customer_facts_horizon"), ["horizon"], unique=False)
    op.create_table(
        "facts_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("engagement", sa.Text(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facts_state")),
    )
    conn = op.get_bind()
    now = utcnow()
    facts.install(conn, facts.DEFAULT_RULE, now)
    facts.rebuild(conn, facts.DEFAULT_RULE, now)


def downgrade() -> None:
    facts.uninstall(op.get_bind())
    op.drop_table("facts_state")
    with op.batch_alter_table("customer_facts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_facts_horizon"))
        batch_op.drop_index(batch_op.f("ix_customer_facts_last_activity_at"))
    op.drop_table("customer_facts")
