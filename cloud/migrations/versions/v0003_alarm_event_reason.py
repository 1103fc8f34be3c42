"""alarm events keep the gateway's reason

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:32:00

``alarm_events.reason`` (the machine-readable cause the gateway sent: above_cut, stale,
feedback_missing...); rows stored before it read as empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alarm_events") as batch:
        batch.add_column(
            sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''"))
        )


def downgrade() -> None:
    with op.batch_alter_table("alarm_events") as batch:
        batch.drop_column("reason")
