"""The relational store on a SQLite file: dedup, latest-only-newer, alarm filters, gateways."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.storage import Store
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, gap, gateway_status, point, telemetry


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return cloud_db_url(tmp_path, "cloud.db")


@pytest.fixture
def store(db_url: str) -> Store:
    s = Store(db_url)
    s.create_all()
    return s


def test_sqlite_runs_in_wal_mode(store: Store) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite only (SAFEWATCH_TEST_DB points at PostgreSQL)")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_seq_dedup_survives_a_new_store_on_the_same_file(db_url: str, store: Store) -> None:
    assert store.note_seq("gw-1", "mine-a", 1) is True
    assert store.note_seq("gw-1", "mine-a", 1) is False
    assert store.note_seq("gw-2", "mine-a", 1) is True  # seq is per gateway
    store.close()

    restarted = Store(db_url)
    restarted.create_all()  # idempotent
    assert restarted.note_seq("gw-1", "mine-a", 1) is False
    assert restarted.note_seq("gw-1", "mine-a", 2) is True


def test_gaps_count_skipped_seqs_and_late_arrivals_fill_them(store: Store) -> None:
    for seq in (10, 11, 15):
        store.note_seq("gw-1", "mine-a", seq)
    (gw,) = store.gateways()
    assert (gw.last_seq, gw.gaps) == (15, 3)
    store.note_seq("gw-1", "mine-a", 13)
    (gw,) = store.gateways()
    assert (gw.last_seq, gw.gaps) == (15, 2)


def test_seen_reads_without_marking(store: Store) -> None:
    assert store.seen("gw-1", 5) is False
    assert store.seen("gw-1", 5) is False  # reading does not mark it
    assert store.note_seq("gw-1", "mine-a", 5)
    assert store.seen("gw-1", 5) is True
    assert store.seen("gw-2", 5) is False  # seq is per gateway


def test_alarm_recorded_once_even_from_a_new_store(db_url: str, store: Store) -> None:
    sent = alarm(1, alarm_id="CH4-101-1", value=1.1, threshold=1.0, actuators=["power-1201"])
    assert store.record_alarm(sent) is True
    assert store.record_alarm(sent) is False
    assert Store(db_url).record_alarm(sent) is False
    (stored,) = store.alarms()
    assert stored.alarm_id == "CH4-101-1"
    assert stored.actuators == ["power-1201"]
    assert stored.value == 1.1 and stored.threshold == 1.0
    assert stored.received_at.tzinfo is not None


def test_alarms_newest_first_with_filters_and_limit(store: Store) -> None:
    store.record_alarm(alarm(1, level="alarm"))
    store.record_alarm(alarm(2, level="cut"))
    store.record_alarm(alarm(3, level="normal"))
    store.record_alarm(alarm(1, level="fault", gateway="gw-9", site="mine-b", ts_ns=T0 + 99))

    assert [a.seq for a in store.alarms(site="mine-a")] == [3, 2, 1]
    assert [a.level for a in store.alarms(level="cut")] == ["cut"]
    assert [a.gateway for a in store.alarms(gateway="gw-9")] == ["gw-9"]
    assert [(a.gateway, a.seq) for a in store.alarms(limit=2)] == [("gw-9", 1), ("gw-1", 3)]
    assert store.alarms(site="mine-a", level="fault") == []


def test_latest_only_moves_forward_in_time(store: Store) -> None:
    store.upsert_latest(telemetry(1, point("CH4-101", 0.5, T0 + 10), point("CO-1", 3.0, T0 + 10)))
    store.upsert_latest(telemetry(2, point("CH4-101", 0.9, T0 + 5)))  # older: ignored
    store.upsert_latest(telemetry(3, point("CO-1", None, T0 + 20, quality="bad", reason="timeout")))

    latest = {v.tag: v for v in store.latest("mine-a")}
    assert latest["CH4-101"].value == 0.5 and latest["CH4-101"].ts_ns == T0 + 10
    assert latest["CO-1"].value is None
    assert (latest["CO-1"].quality, latest["CO-1"].reason) == ("bad", "timeout")
    assert store.latest("mine-b") == []


def test_latest_takes_the_newest_of_one_tag_within_a_batch(store: Store) -> None:
    store.upsert_latest(telemetry(1, point("CH4-101", 0.7, T0 + 2), point("CH4-101", 0.6, T0 + 1)))
    (value,) = store.latest("mine-a")
    assert (value.value, value.ts_ns) == (0.7, T0 + 2)


def test_status_and_gaps_on_the_gateway_row(store: Store) -> None:
    online = gateway_status("online", ts_ns=T0 + 10, version="0.1.0", gateway="gw-1", site="mine-a")
    stale = gateway_status("offline", ts_ns=T0)
    assert store.record_status(online) is True
    assert store.record_status(stale) is False
    store.record_gap(gap(4, first_seq=1, last_seq=3, dropped=3))
    store.record_gap(gap(9, first_seq=6, last_seq=7, dropped=2))
    (gw,) = store.gateways()
    assert (gw.gateway, gw.site, gw.state, gw.version, gw.dropped) == (
        "gw-1",
        "mine-a",
        "online",
        "0.1.0",
        5,
    )
    assert store.sites() == {"mine-a"}


def test_unsupported_database_is_refused() -> None:
    from cloud.storage import StoreError

    with pytest.raises(StoreError, match="unsupported database"):
        Store("mysql://u@localhost/x")


def test_alarm_reason_is_stored_and_read_back(store: Store) -> None:
    store.record_alarm(alarm(1, level="fault", reason="comms_lost"))
    store.record_alarm(alarm(2, level="cut"))  # a gateway that sends no reason
    assert [(a.seq, a.reason) for a in store.alarms()] == [(2, ""), (1, "comms_lost")]


def test_create_all_adds_the_reason_column_to_an_older_alarm_table(db_url: str) -> None:
    old = Store(db_url)
    old.create_all()
    with old.engine.begin() as conn:  # the table as the first release created it
        conn.exec_driver_sql("ALTER TABLE alarm_events DROP COLUMN reason")
    old.close()
    upgraded = Store(db_url)
    upgraded.create_all()
    upgraded.create_all()  # idempotent
    upgraded.record_alarm(alarm(1, reason="over_range"))
    assert [a.reason for a in upgraded.alarms()] == ["over_range"]
