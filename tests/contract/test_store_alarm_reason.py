"""The alarm reason in the cloud store on the real PostgreSQL (private schema, dropped after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloud.storage import Store
from tests.db_support import PG_URL, pg_schema
from tests.factories import alarm

pytestmark = pytest.mark.contract


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema(PG_URL) as name:
        yield name


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
