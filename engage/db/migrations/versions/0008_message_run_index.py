"""an index on message (run_id, status): what each occurrence did, without a scan

The web interface's calendar shows, for every past occurrence, how many of
its messages were planned, sent, held out or failed; this index answers that
per run. It also serves the ``ON DELETE SET NULL`` of ``message.run_id``.

Revision ID: 0008
Revises: 0002
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_message_run_status", "message", ["run_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_message_run_status", table_name="message")
