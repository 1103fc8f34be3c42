"""the cloud's mirror of the gateways' alarm states under Alembic

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 20:10:00

``alarm_states`` (cloud/alarm_states.py: one row per gateway and alarm id, the ISA-18.2
state the gateway last reported) was created by the mirror itself at first use; from here
Alembic owns it like every other table. A database where the mirror made it already keeps
it with its rows (adoption, as in 0001).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("alarm_states"):
        return
    op.create_table(
        "alarm_states",
        sa.Column("gateway", sa.String(length=128), nullable=False),
        sa.Column("alarm_id", sa.String(length=256), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("tag", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("area", sa.String(length=256), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("since_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "alarm_id"),
    )
    op.create_index("ix_alarm_states_site_state", "alarm_states", ["site", "state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alarm_states_site_state", table_name="alarm_states")
    op.drop_table("alarm_states")
