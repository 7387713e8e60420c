"""survey scores on interactions; the campaign and message behind a suppression

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("interaction", sa.Column("score", sa.SmallInteger(), nullable=True))
    op.add_column("suppression", sa.Column("campaign", sa.String(length=100), nullable=True))
    op.add_column(
        "suppression",
        sa.Column(
            "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("suppression") as batch:
        batch.drop_column("message_id")
        batch.drop_column("campaign")
    with op.batch_alter_table("interaction") as batch:
        batch.drop_column("score")
