"""hazard deadlines: reminded/escalated marks and the scheduler's job store

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:00:00

The deadline watch (cloud/hazards/_deadlines.py) marks each hazard once when its
reminder and its escalation went out, and keeps its APScheduler jobs in
``hazard_jobs`` (APScheduler 3.x's SQL job store table) so they outlive a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An adopted create_all database (HazardService.create_all, the scheduler's own table
    # creation) may have them already: PostgreSQL refuses a second column of a name.
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("hazards")}
    missing = [name for name in ("reminded_at", "escalated_at") if name not in have]
    if missing:
        with op.batch_alter_table("hazards") as batch:
            for name in missing:
                batch.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    if inspector.has_table("hazard_jobs"):
        return
    op.create_table(
        "hazard_jobs",
        sa.Column("id", sa.Unicode(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_hazard_jobs_next_run_time"), "hazard_jobs", ["next_run_time"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_hazard_jobs_next_run_time"), table_name="hazard_jobs")
    op.drop_table("hazard_jobs")
    with op.batch_alter_table("hazards") as batch:
        batch.drop_column("escalated_at")
        batch.drop_column("reminded_at")
