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


def _has_column(table: str, column: str) -> bool:
    """A database made by create_all before Alembic (adopted by 0001) may have it already."""
    return column in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    if _has_column("alarm_events", "reason"):
        return
    with op.batch_alter_table("alarm_events") as batch:
        batch.add_column(
            sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''"))
        )


def downgrade() -> None:
    with op.batch_alter_table("alarm_events") as batch:
        batch.drop_column("reason")
