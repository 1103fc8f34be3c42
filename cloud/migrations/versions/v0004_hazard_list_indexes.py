"""indexes for the hazard list's filters in its order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:40:00

The hazard list filters by area, kind or status and pages newest first (by id, with
``before`` as the key): (area, id), (kind, id) and (status, id) give each filtered page
from the index in order, without sorting the matches (``ix_hazards_area`` is replaced by
its (area, id) successor; ``ix_hazards_status_deadline`` stays for the deadline watch).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # an adopted create_all database may have the new indexes and lack the old one
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("hazards")}
    if "ix_hazards_area" in have:
        op.drop_index("ix_hazards_area", table_name="hazards")
    for name, columns in (
        ("ix_hazards_area_id", ["area", "id"]),
        ("ix_hazards_kind_id", ["kind", "id"]),
        ("ix_hazards_status_id", ["status", "id"]),
    ):
        if name not in have:
            op.create_index(name, "hazards", columns)


def downgrade() -> None:
    op.drop_index("ix_hazards_status_id", table_name="hazards")
    op.drop_index("ix_hazards_kind_id", table_name="hazards")
    op.drop_index("ix_hazards_area_id", table_name="hazards")
    op.create_index("ix_hazards_area", "hazards", ["area"])
