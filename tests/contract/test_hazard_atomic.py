"""A hazard change and its audit row are one transaction: a failure of either writes neither.

The failures are real database refusals (triggers that abort the insert or update), on
SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud import migrations
from cloud.audit import AuditLog
from cloud.auth import Role
from cloud.hazards import HazardEvent, HazardFilter, HazardGrade, HazardIn, HazardService
from cloud.storage import Store, StoreError
from tests.db_support import PG_URL, pg_schema

pytestmark = pytest.mark.contract


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
        migrations.upgrade(s.engine)
        yield s
        s.close()
        return
    with pg_schema() as schema:
        s = Store(PG_URL, schema=schema)
        migrations.upgrade(s.engine)
        yield s
        s.close()


@pytest.fixture
def hazards(store: Store, tmp_path: Path) -> HazardService:
    return HazardService(store.engine, AuditLog(store.engine), tmp_path / "evidence")


def _refuse(store: Store, table: str, op: str) -> None:
    """A trigger that makes the database refuse every ``op`` (INSERT/UPDATE) on ``table``."""
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER refuse_{table} BEFORE {op} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
                )
            )
            return
        schema = _schema(store)
        conn.execute(
            sa.text(
                f'CREATE OR REPLACE FUNCTION "{schema}".refuse() RETURNS trigger '
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$"
            )
        )
        conn.execute(
            sa.text(
                f'CREATE TRIGGER refuse_{table} BEFORE {op} ON "{schema}".{table} '
                f'FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()'
            )
        )


def _audit_rows(hazards: HazardService) -> int:
    return hazards.audit.head()[0]


def _new(hazards: HazardService) -> int:
    record, _ = hazards.create(
        HazardIn(title="loose roof bolt", area="face-1201", grade=HazardGrade.GENERAL), "se-1"
    )
    return record.id


def test_create_writes_hazard_and_audit_together(hazards: HazardService) -> None:
    hazard_id = _new(hazards)
    (entry,) = hazards.audit.entries()
    assert entry.target == f"hazard:{hazard_id}"
    assert entry.details_dict()["event"] == "found"


def test_audit_refused_no_hazard(store: Store, hazards: HazardService) -> None:
    _refuse(store, "audit_log", "INSERT")
    with pytest.raises(StoreError, match="refused by test"):
        _new(hazards)
    assert hazards.find(HazardFilter()) == ([], 0)
    assert _audit_rows(hazards) == 0


def test_audit_refused_no_dedup_hazard_either(store: Store, hazards: HazardService) -> None:
    """The automatic path (dedup key): refused audit, no hazard; the next try creates it."""
    data = HazardIn(title="CH4 over limit", area="face-1201", grade=HazardGrade.MAJOR)
    _refuse(store, "audit_log", "INSERT")
    with pytest.raises(StoreError):
        hazards.create(data, "auto", source="auto", dedup_key="methane:face-1201")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER refuse_audit_log" + _on(store, "audit_log")))
    record, created = hazards.create(data, "auto", source="auto", dedup_key="methane:face-1201")
    assert created is True
    assert hazards.find(HazardFilter())[1] == 1
    assert [e.target for e in hazards.audit.entries()] == [f"hazard:{record.id}"]


def _on(store: Store, table: str) -> str:
    return "" if store.dialect == "sqlite" else f' ON "{_schema(store)}".{table}'


def _schema(store: Store) -> str:
    return str(store.engine.get_execution_options()["schema_translate_map"][None])


def test_audit_refused_transition_keeps_status(store: Store, hazards: HazardService) -> None:
    hazard_id = _new(hazards)
    _refuse(store, "audit_log", "INSERT")
    with pytest.raises(StoreError, match="refused by test"):
        hazards.transition(hazard_id, HazardEvent.REGISTER, "se-1", Role.SAFETY_ENGINEER)
    assert hazards.get(hazard_id).status == "found"
    assert _audit_rows(hazards) == 1  # only the creation's row


def test_hazard_refused_no_audit_row(store: Store, hazards: HazardService) -> None:
    hazard_id = _new(hazards)
    _refuse(store, "hazards", "UPDATE")
    with pytest.raises(StoreError, match="refused by test"):
        hazards.transition(hazard_id, HazardEvent.REGISTER, "se-1", Role.SAFETY_ENGINEER)
    assert hazards.get(hazard_id).status == "found"
    assert _audit_rows(hazards) == 1
    assert hazards.audit.verify().ok


def test_evidence_refused_no_audit_row(store: Store, hazards: HazardService) -> None:
    hazard_id = _new(hazards)
    hazards.transition(hazard_id, HazardEvent.REGISTER, "se-1", Role.SAFETY_ENGINEER)
    hazards.transition(
        hazard_id, HazardEvent.ASSIGN, "se-1", Role.SAFETY_ENGINEER, assignee="rect-1"
    )
    rows = _audit_rows(hazards)
    _refuse(store, "hazard_evidence", "INSERT")
    with pytest.raises(StoreError, match="refused by test"):
        hazards.add_evidence(
            hazard_id, "bolt.jpg", "image/jpeg", b"\xff\xd8jpeg", "rect-1", Role.RECTIFIER
        )
    assert hazards.evidence(hazard_id) == []
    assert _audit_rows(hazards) == rows
