"""message (provider_id) indexed only where it is set

Webhooks find a message by its provider's id, which only a sent message
has. Every planned message used to add an empty (NULL) entry to this index:
one index insert in seven of the planner's, for nothing (planning 100,000
messages on PostgreSQL spends about 0.2 s on them). A partial index answers
the same lookups (``provider_id = x`` implies ``provider_id IS NOT NULL`` on
both backends) and is written only when a send is recorded.

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-05 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0004"
branch_labels = None
depends_on = None

_SET = sa.text("provider_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_message_provider_id", table_name="message")
    op.create_index(
        "ix_message_provider_id",
        "message",
        ["provider_id"],
        postgresql_where=_SET,
        sqlite_where=_SET,
    )


def downgrade() -> None:
    op.drop_index("ix_message_provider_id", table_name="message")
    op.create_index("ix_message_provider_id", "message", ["provider_id"])
