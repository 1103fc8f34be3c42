"""Alembic owns the schema: upgrade from empty yields exactly the models, on SQLite and on
the real PostgreSQL (a private schema per test), and downgrade/upgrade round-trips."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cloud import migrations
from cloud.audit import AuditLog
from cloud.storage import Store, StoreError
from safewatch.cli import app
from tests.db_support import PG_URL, pg_schema, schema_url
from tests.factories import alarm

pytestmark = pytest.mark.contract


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty database: a SQLite file, or a private schema on PostgreSQL."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
        yield s
        s.close()
        return
    with pg_schema() as schema:
        s = Store(PG_URL, schema=schema)
        yield s
        s.close()


def _schema(store: Store) -> str | None:
    translate = store.engine.get_execution_options().get("schema_translate_map") or {}
    value = translate.get(None)
    return None if value is None else str(value)


def _prefix(store: Store) -> str:
    schema = _schema(store)
    return "" if schema is None else f'"{schema}".'


def _tables(store: Store) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names(schema=_schema(store)))


def _model_tables() -> set[str]:
    return set(migrations.merged_metadata().tables)


def test_upgrade_from_empty_is_exactly_the_models(store: Store) -> None:
    assert migrations.current(store.engine) is None
    assert _tables(store) == set()

    migrations.upgrade(store.engine)

    assert migrations.current(store.engine) == migrations.head()
    assert _tables(store) == _model_tables() | {migrations.VERSION_TABLE}
    # Every service's tables are in the models the comparison uses.
    assert {"alarm_events", "seen_seq", "dead_letters", "auth_users", "audit_log"} <= _tables(store)
    assert {"hazards", "hazard_evidence", "risk_grade_history"} <= _tables(store)
    assert migrations.schema_diff(store.engine) == []
    migrations.upgrade(store.engine)  # again: nothing to do
    assert migrations.current(store.engine) == migrations.head()


def test_the_comparison_sees_a_difference(store: Store) -> None:
    """Not a vacuous check: a missing index and an extra column are both reported."""
    migrations.upgrade(store.engine)
    prefix = _prefix(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {prefix}ix_hazards_area"))
        conn.execute(sa.text(f"ALTER TABLE {prefix}gateways ADD COLUMN stray INTEGER"))
    kinds = {item[0] for item in _flat(store)}
    assert {"add_index", "remove_column"} <= kinds


def _flat(store: Store) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for item in migrations.schema_diff(store.engine):
        out.extend(item if isinstance(item, list) else [item])
    return out


def test_downgrade_upgrade_round_trip(store: Store) -> None:
    migrations.upgrade(store.engine)
    assert store.record_alarm(alarm(1)) is True

    migrations.downgrade(store.engine, "base")
    assert migrations.current(store.engine) is None
    assert _tables(store) <= {migrations.VERSION_TABLE}

    migrations.upgrade(store.engine)
    assert migrations.schema_diff(store.engine) == []
    assert store.alarms() == []  # a fresh table: the downgrade dropped the data
    assert store.record_alarm(alarm(1)) is True
    AuditLog(store.engine).record("tester", "round_trip")
    assert AuditLog(store.engine).verify().ok


def test_a_create_all_database_is_adopted_with_its_data(store: Store) -> None:
    """A database made before Alembic (create_all) is stamped, not re-created."""
    migrations.upgrade(store.engine, migrations.INITIAL_REVISION)  # what create_all made
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {_prefix(store)}{migrations.VERSION_TABLE}"))
    AuditLog(store.engine).record("admin", "kept")  # audit_log is unchanged since 0001

    migrations.upgrade(store.engine)

    assert migrations.current(store.engine) == migrations.head()
    assert [e.action for e in AuditLog(store.engine).entries()] == ["kept"]
    assert migrations.schema_diff(store.engine) == []


def test_a_partial_create_all_database_is_completed(store: Store) -> None:
    """E.g. ``safewatch users add`` of an older release made only the audit and auth tables."""
    audit = AuditLog(store.engine)
    audit.create_all()
    audit.record("admin", "user_added", "user:ops")

    migrations.upgrade(store.engine)

    assert migrations.schema_diff(store.engine) == []
    assert audit.verify().rows == 1


def test_a_database_every_service_made_with_create_all_today_upgrades(
    store: Store, tmp_path: Path
) -> None:
    """Tests and older tools still call the services' create_all, which makes today's
    columns and indexes: the revisions that add them must find them there, not fail
    (PostgreSQL refused a second ``alarm_events.reason``: found by the suite on it)."""
    from cloud.auth import AuthStore
    from cloud.hazards import HazardService
    from cloud.risk import RiskModel, RiskService

    store.create_all()
    audit = AuditLog(store.engine)
    audit.create_all()
    AuthStore(store.engine).create_all()
    HazardService(store.engine, audit, tmp_path / "ev").create_all()
    RiskService(store.engine, RiskModel()).create_all()
    assert store.record_alarm(alarm(1)) is True

    migrations.upgrade(store.engine)

    assert migrations.current(store.engine) == migrations.head()
    assert migrations.schema_diff(store.engine) == []
    assert [a.seq for a in store.alarms()] == [1]


def test_unreachable_database_names_it() -> None:
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/none"):
            migrations.upgrade(store.engine)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cli_upgrade_and_check(tmp_path: Path, backend: str) -> None:
    """SQLite in a folder the CLI makes; PostgreSQL in a private schema (``search_path``)."""
    if backend == "sqlite":
        _cli_round_trip(f"sqlite:///{tmp_path / 'sub' / 'cloud.db'}")
        return
    with pg_schema() as schema:
        _cli_round_trip(schema_url(PG_URL, schema))


def _cli_round_trip(url: str) -> None:
    runner = CliRunner()
    check = runner.invoke(app, ["cloud", "db", "check", "--db-url", url])
    assert check.exit_code == 1, check.output
    assert "no revision" in check.output

    up = runner.invoke(app, ["cloud", "db", "upgrade", "--db-url", url])
    assert up.exit_code == 0, up.output
    assert f"empty -> {migrations.head()}" in up.output

    check = runner.invoke(app, ["cloud", "db", "check", "--db-url", url])
    assert check.exit_code == 0, check.output

    down = runner.invoke(app, ["cloud", "db", "downgrade", "base", "--db-url", url])
    assert down.exit_code == 0, down.output
    assert "database at base" in down.output
    assert runner.invoke(app, ["cloud", "db", "check", "--db-url", url]).exit_code == 1
