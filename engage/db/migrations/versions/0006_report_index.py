"""interaction (kind, occurred_at) index also covers customer_id, for reports

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-05 10:00:00

The report reads time ranges of one kind (orders in the retention window,
engagements in the period) and groups them by customer: with the customer in
the index, both databases answer from the index alone instead of fetching
every row from the table. It replaces the (kind, occurred_at) index, whose
uses it keeps (same leading columns), so writes maintain no extra index.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_interaction_kind_occurred_customer",
        "interaction",
        ["kind", "occurred_at", "customer_id"],
        unique=False,
    )
    op.drop_index("ix_interaction_kind_occurred", table_name="interaction")


def downgrade() -> None:
    op.create_index(
        "ix_interaction_kind_occurred", "interaction", ["kind", "occurred_at"], unique=False
    )
    op.drop_index("ix_interaction_kind_occurred_customer", table_name="interaction")
