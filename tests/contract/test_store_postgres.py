"""The Store on the real PostgreSQL, in a private schema dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloud.storage import Store
from cloud.storage.db import AlarmEventRow
from tests.db_support import PG_URL, pg_schema
from tests.factories import T0, alarm, gap, gateway_status, point, telemetry

pytestmark = pytest.mark.contract


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema(PG_URL) as name:
        yield name


@pytest.fixture
def store(schema: str) -> Iterator[Store]:
    s = Store(PG_URL, schema=schema)
    s.create_all()
    yield s
    s.close()


def test_tables_live_in_the_private_schema(store: Store, schema: str) -> None:
    tables = set(sa.inspect(store.engine).get_table_names(schema=schema))
    assert {"alarm_events", "latest_values", "gateways", "seen_seq"} <= tables


def test_dedup_survives_a_new_store(store: Store, schema: str) -> None:
    assert store.note_seq("gw-1", "mine-a", 1) is True
    assert store.note_seq("gw-1", "mine-a", 1) is False
    assert store.record_alarm(alarm(1)) is True
    again = Store(PG_URL, schema=schema)
    try:
        assert again.note_seq("gw-1", "mine-a", 1) is False
        assert again.record_alarm(alarm(1)) is False
        assert again.note_seq("gw-1", "mine-a", 4) is True
    finally:
        again.close()
    (gw,) = store.gateways()
    assert (gw.last_seq, gw.gaps) == (4, 2)


def test_alarms_filters_and_ordering(store: Store) -> None:
    store.record_alarm(alarm(1, level="alarm"))
    store.record_alarm(alarm(2, level="cut", actuators=["power-1201"]))
    (cut,) = store.alarms(level="cut")
    assert (cut.seq, cut.actuators, cut.received_at.tzinfo is not None) == (2, ["power-1201"], True)
    assert [a.seq for a in store.alarms(site="mine-a")] == [2, 1]


def test_latest_upsert_only_newer_and_duplicates_in_one_batch(store: Store) -> None:
    # Two points of one tag in one batch: PostgreSQL refuses to upsert a row twice per statement.
    store.upsert_latest(telemetry(1, point("CH4-101", 0.5, T0 + 10), point("CH4-101", 0.4, T0 + 9)))
    store.upsert_latest(telemetry(2, point("CH4-101", 0.9, T0 + 5)))
    store.upsert_latest(telemetry(3, point("CO-1", 7.0, T0 + 1)))
    assert [(v.tag, v.value) for v in store.latest("mine-a")] == [("CH4-101", 0.5), ("CO-1", 7.0)]


def test_status_only_newer_and_gaps(store: Store) -> None:
    assert store.record_status(gateway_status("offline", ts_ns=T0 + 5))
    assert not store.record_status(gateway_status("online", ts_ns=T0))
    store.record_gap(gap(9, first_seq=2, last_seq=8, dropped=7))
    (gw,) = store.gateways()
    assert (gw.state, gw.dropped) == ("offline", 7)


def test_nul_bytes_in_text_neither_fail_nor_match(store: Store) -> None:
    """PostgreSQL text cannot hold NUL: a filter with one finds nothing (it used to fail the
    statement, an API 503), and text stored with one keeps U+FFFD in its place."""
    store.record_alarm(alarm(1))
    assert store.latest("mine-a\x00") == []
    assert store.alarms(site="mine-a\x00x") == []
    table = AlarmEventRow.__table__
    with store.engine.begin() as conn:
        conn.execute(sa.update(AlarmEventRow).where(table.c.seq == 1).values(message="bad\x00text"))
    (stored,) = store.alarms()
    assert stored.message == "bad\ufffdtext"
