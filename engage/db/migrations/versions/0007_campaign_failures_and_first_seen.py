"""why an occurrence failed to plan; when engage first saw each campaign

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engage.db.models

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaign_run", sa.Column("error", sa.Text(), nullable=True))
    op.create_table(
        "campaign_seen",
        sa.Column("campaign", sa.String(length=100), nullable=False),
        sa.Column("first_seen_at", engage.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign", name=op.f("pk_campaign_seen")),
    )
    # Campaigns that already ran were first seen when their first row was written.
    op.execute(
        "INSERT INTO campaign_seen (campaign, first_seen_at) "
        "SELECT campaign, MIN(created_at) FROM campaign_run GROUP BY campaign"
    )


def downgrade() -> None:
    op.drop_table("campaign_seen")
    with op.batch_alter_table("campaign_run") as batch:
        batch.drop_column("error")
