"""report indexes: interaction (kind, occurred_at) also covers customer and
amount; points lots by earned_at

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-05 10:00:00

The report reads time ranges of one kind (orders in the retention window
and the period, engagements in two periods) and groups them by customer,
summing order amounts: with customer_id and amount in the index, SQLite and
PostgreSQL answer from the index alone instead of fetching every row (at
scale 0.1 on SQLite: the period's orders per day 52 -> 9 ms of CPU,
purchases 95 -> 53 ms). It replaces the (kind, occurred_at) index, whose
uses it keeps (same leading columns), so writes maintain no extra index on
interaction. "Points earned in the period" reads the new (earned_at, points)
index instead of every lot (30 -> 12 ms).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_interaction_kind_occurred_customer_amount",
        "interaction",
        ["kind", "occurred_at", "customer_id", "amount"],
        unique=False,
    )
    op.drop_index("ix_interaction_kind_occurred", table_name="interaction")
    op.create_index(
        "ix_points_lot_earned_points", "points_lot", ["earned_at", "points"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_points_lot_earned_points", table_name="points_lot")
    op.create_index(
        "ix_interaction_kind_occurred", "interaction", ["kind", "occurred_at"], unique=False
    )
    op.drop_index("ix_interaction_kind_occurred_customer_amount", table_name="interaction")
