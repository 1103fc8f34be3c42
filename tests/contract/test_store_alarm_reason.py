"""The alarm reason in the cloud store on the real PostgreSQL (private schema, dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloud.storage import Store
from tests.factories import alarm

pytestmark = pytest.mark.contract

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is required for this test: {exc}")
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


def test_alarm_reason_on_postgres_and_added_to_an_older_table(schema: str) -> None:
    store = Store(PG_URL, schema=schema)
    try:
        store.create_all()
        store.record_alarm(alarm(1, level="fault", reason="comms_lost"))
        with store.engine.begin() as conn:  # the table as the first release created it
            conn.execute(sa.text(f'ALTER TABLE "{schema}".alarm_events DROP COLUMN reason'))
        store.create_all()
        store.create_all()  # idempotent
        store.record_alarm(alarm(2, reason="fan_stopped"))
        assert [(a.seq, a.reason) for a in store.alarms()] == [(2, "fan_stopped"), (1, "")]
    finally:
        store.close()
