"""alarm events keep the operator console

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:50:00

``alarm_events.console``: the operator console (``alarms.consoles`` of the site file, the
gateway id when none is configured) answering for the event's area, as the gateway sent it;
the alarm KPIs count per console. Rows stored before it read as empty (their gateway is
their console).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_column(table: str, column: str) -> bool:
    """A database made by create_all before Alembic (adopted by 0001) may have it already."""
    return column in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    if _has_column("alarm_events", "console"):
        return
    with op.batch_alter_table("alarm_events") as batch:
        batch.add_column(
            sa.Column("console", sa.String(length=64), nullable=False, server_default=sa.text("''"))
        )


def downgrade() -> None:
    with op.batch_alter_table("alarm_events") as batch:
        batch.drop_column("console")
