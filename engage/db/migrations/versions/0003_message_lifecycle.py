"""the message lifecycle: a claim token per claim, an expiry per message, and a
CHECK that status is one of engage.db.states

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engage.db.models

revision = "0003"
down_revision = "0007"
branch_labels = None
depends_on = None

# The states as of this revision (a later state needs a later migration).
STATES = (
    "planned",
    "claimed",
    "sending",
    "sent",
    "delivered",
    "bounced",
    "undelivered",
    "retry",
    "failed",
    "unknown",
    "held_out",
    "render_error",
    "cancelled",
    "expired",
)


def upgrade() -> None:
    # SQLite cannot add a CHECK constraint in place: batch mode copies the table.
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("claim", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("expires_at", engage.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch.create_check_constraint(
            op.f("ck_message_status"), "status IN (" + ", ".join(f"'{s}'" for s in STATES) + ")"
        )


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_constraint(op.f("ck_message_status"), type_="check")
        batch.drop_column("expires_at")
        batch.drop_column("claim")
