"""initial schema: every service's tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:22:07

Every table the services made with create_all before Alembic: the store (alarm events,
latest values, gateways, the ingest's seen sequence numbers, dead letters, the InfluxDB
spool), auth (users, API tokens, signing keys), the audit log, hazards with their
evidence, and the risk grade history. Tables that already exist are kept (adoption).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _missing(table: str) -> bool:
    """Databases made before Alembic (create_all) may hold some of these tables already:
    create only the missing ones (with their indexes), so such a database is adopted with
    its data."""
    return not sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if _missing("alarm_events"):
        op.create_table(
            "alarm_events",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("gateway", sa.String(length=128), nullable=False),
            sa.Column("site", sa.String(length=128), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.Column("alarm_id", sa.String(length=256), nullable=False),
            sa.Column("tag", sa.String(length=256), nullable=False),
            sa.Column("device", sa.String(length=256), nullable=False),
            sa.Column("kind", sa.String(length=64), nullable=False),
            sa.Column("area", sa.String(length=256), nullable=False),
            sa.Column("position", sa.String(length=256), nullable=False),
            sa.Column("level", sa.String(length=16), nullable=False),
            sa.Column("previous", sa.String(length=16), nullable=False),
            sa.Column("value", sa.Float(), nullable=True),
            sa.Column("threshold", sa.Float(), nullable=True),
            sa.Column("ts_ns", sa.BigInteger(), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("actuators", sa.JSON(), nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("gateway", "seq", name="uq_alarm_events_gateway_seq"),
        )
        op.create_index("ix_alarm_events_site_ts", "alarm_events", ["site", "ts_ns"], unique=False)
    if _missing("dead_letters"):
        op.create_table(
            "dead_letters",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("topic", sa.Text(), nullable=False),
            sa.Column("payload", sa.LargeBinary(), nullable=False),
            sa.Column("reason", sa.String(length=64), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
            sa.Column("digest", sa.String(length=64), nullable=False),
            sa.Column("copies", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("digest", name="uq_dead_letters_digest"),
            sqlite_autoincrement=True,
        )
    if _missing("gateways"):
        op.create_table(
            "gateways",
            sa.Column("gateway", sa.String(length=128), nullable=False),
            sa.Column("site", sa.String(length=128), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("status_ts_ns", sa.BigInteger(), nullable=True),
            sa.Column("version", sa.String(length=64), nullable=False),
            sa.Column("last_seq", sa.BigInteger(), nullable=True),
            sa.Column("gaps", sa.BigInteger(), nullable=False),
            sa.Column("dropped", sa.BigInteger(), nullable=False),
            sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("gateway"),
        )
    if _missing("influx_spool"):
        op.create_table(
            "influx_spool",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("lines", sa.Text(), nullable=False),
            sa.Column("points", sa.Integer(), nullable=False),
            sa.Column("spooled_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if _missing("latest_values"):
        op.create_table(
            "latest_values",
            sa.Column("site", sa.String(length=128), nullable=False),
            sa.Column("tag", sa.String(length=256), nullable=False),
            sa.Column("device", sa.String(length=256), nullable=False),
            sa.Column("gateway", sa.String(length=128), nullable=False),
            sa.Column("kind", sa.String(length=64), nullable=False),
            sa.Column("unit", sa.String(length=32), nullable=False),
            sa.Column("area", sa.String(length=256), nullable=False),
            sa.Column("position", sa.String(length=256), nullable=False),
            sa.Column("value", sa.Float(), nullable=True),
            sa.Column("quality", sa.String(length=16), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("ts_ns", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("site", "tag"),
        )
    if _missing("seen_seq"):
        op.create_table(
            "seen_seq",
            sa.Column("gateway", sa.String(length=128), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("gateway", "seq"),
        )
    if _missing("auth_api_tokens"):
        op.create_table(
            "auth_api_tokens",
            sa.Column("token_id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("secret_sha256", sa.String(length=64), nullable=False),
            sa.Column("created_by", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("token_id"),
        )
    if _missing("auth_signing_keys"):
        op.create_table(
            "auth_signing_keys",
            sa.Column("kid", sa.String(length=32), nullable=False),
            sa.Column("secret", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("kid"),
        )
    if _missing("auth_users"):
        op.create_table(
            "auth_users",
            sa.Column("username", sa.String(length=64), nullable=False),
            sa.Column("password_hash", sa.String(length=512), nullable=False),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("disabled", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("username"),
        )
    if _missing("audit_log"):
        op.create_table(
            "audit_log",
            sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("at_ns", sa.BigInteger(), nullable=False),
            sa.Column("actor", sa.String(length=128), nullable=False),
            sa.Column("action", sa.String(length=64), nullable=False),
            sa.Column("target", sa.String(length=256), nullable=False),
            sa.Column("details", sa.Text(), nullable=False),
            sa.Column("prev_hash", sa.String(length=64), nullable=False),
            sa.Column("hash", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("hash"),
            sa.UniqueConstraint("prev_hash"),
        )
        op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"], unique=False)
    if _missing("hazards"):
        op.create_table(
            "hazards",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("title", sa.String(length=256), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("site", sa.String(length=128), nullable=False),
            sa.Column("area", sa.String(length=256), nullable=False),
            sa.Column("kind", sa.String(length=64), nullable=False),
            sa.Column("grade", sa.String(length=16), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("source", sa.String(length=32), nullable=False),
            sa.Column("dedup_key", sa.String(length=256), nullable=True),
            sa.Column("found_by", sa.String(length=128), nullable=False),
            sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
            sa.Column("assignee", sa.String(length=128), nullable=True),
            sa.Column("responsible", sa.String(length=128), nullable=True),
            sa.Column("supervisor", sa.String(length=128), nullable=True),
            sa.Column("plan", sa.Text(), nullable=True),
            sa.Column("rectification", sa.Text(), nullable=True),
            sa.Column("review_note", sa.Text(), nullable=True),
            sa.Column("rejections", sa.Integer(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("dedup_key", name="uq_hazards_dedup_key"),
        )
        op.create_index("ix_hazards_area", "hazards", ["area"], unique=False)
        op.create_index(
            "ix_hazards_status_deadline", "hazards", ["status", "deadline"], unique=False
        )
    if _missing("hazard_evidence"):
        op.create_table(
            "hazard_evidence",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("hazard_id", sa.Integer(), nullable=False),
            sa.Column("filename", sa.String(length=256), nullable=False),
            sa.Column("content_type", sa.String(length=128), nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("sha256", sa.String(length=64), nullable=False),
            sa.Column("uploaded_by", sa.String(length=128), nullable=False),
            sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["hazard_id"],
                ["hazards.id"],
            ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("hazard_id", "sha256", name="uq_hazard_evidence"),
        )
        op.create_index(
            op.f("ix_hazard_evidence_hazard_id"), "hazard_evidence", ["hazard_id"], unique=False
        )
    if _missing("risk_grade_history"):
        op.create_table(
            "risk_grade_history",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("area", sa.String(length=256), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("grade", sa.String(length=16), nullable=False),
            sa.Column("points", sa.Float(), nullable=False),
            sa.Column("contributions", sa.JSON(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(
            "ix_risk_grade_history_area_at", "risk_grade_history", ["area", "at"], unique=False
        )


def downgrade() -> None:
    op.drop_index("ix_risk_grade_history_area_at", table_name="risk_grade_history")

    op.drop_table("risk_grade_history")
    op.drop_index(op.f("ix_hazard_evidence_hazard_id"), table_name="hazard_evidence")

    op.drop_table("hazard_evidence")
    op.drop_index("ix_hazards_status_deadline", table_name="hazards")
    op.drop_index("ix_hazards_area", table_name="hazards")

    op.drop_table("hazards")
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")

    op.drop_table("audit_log")
    op.drop_table("auth_users")
    op.drop_table("auth_signing_keys")
    op.drop_table("auth_api_tokens")
    op.drop_table("seen_seq")
    op.drop_table("latest_values")
    op.drop_table("influx_spool")
    op.drop_table("gateways")
    op.drop_table("dead_letters")
    op.drop_index("ix_alarm_events_site_ts", table_name="alarm_events")

    op.drop_table("alarm_events")
