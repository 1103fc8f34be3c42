"""IngestService.handle: routing, dedup and counted drops, with a fake writer and a SQLite file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

import wire
from cloud import IngestService
from cloud.storage import Store
from tests.factories import alarm, gap, gateway_status, point, telemetry


class RecordingWriter:
    """A PointWriter that keeps the lines it was given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def reachable(self) -> bool:
        return True

    @property
    def pending(self) -> int:
        return len(self.lines)

    def counters(self) -> dict[str, int]:
        return {}

    def enqueue(self, lines: Iterable[str]) -> None:
        self.lines.extend(lines)

    async def flush(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def ensure_database(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'ingest.db'}")
    s.create_all()
    return s


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


@pytest.fixture
def ingest(store: Store, writer: RecordingWriter) -> IngestService:
    return IngestService("127.0.0.1", 1, store, writer, group="g1")


async def deliver(ingest: IngestService, message: wire.Message) -> None:
    await ingest.handle(wire.topic_of(message), wire.encode(message))


def test_subscriptions_share_buffered_kinds_and_not_status(ingest: IngestService) -> None:
    assert ingest.subscriptions() == [
        "$share/g1/safewatch/v1/+/+/telemetry",
        "$share/g1/safewatch/v1/+/+/alarms",
        "$share/g1/safewatch/v1/+/+/events",
        "safewatch/v1/+/+/status",
    ]


def test_without_a_group_subscriptions_are_plain_and_the_session_is_stable(
    store: Store, writer: RecordingWriter
) -> None:
    alone = IngestService("127.0.0.1", 1, store, writer)
    assert alone.subscriptions() == [
        "safewatch/v1/+/+/telemetry",
        "safewatch/v1/+/+/alarms",
        "safewatch/v1/+/+/events",
        "safewatch/v1/+/+/status",
    ]
    again = IngestService("127.0.0.1", 1, store, writer)
    assert alone.client_id == again.client_id  # a restart resumes the same broker session
    assert alone.client_id.startswith("safewatch-ingest-")


async def test_telemetry_goes_to_writer_and_latest_once(
    ingest: IngestService, store: Store, writer: RecordingWriter
) -> None:
    await deliver(ingest, telemetry(1, point(kind="ch4", value=0.4)))
    await deliver(ingest, telemetry(1, point(kind="ch4", value=9.9)))  # a resend: dropped
    assert len(writer.lines) == 1 and writer.lines[0].startswith("ch4,")
    (latest,) = store.latest("mine-a")
    assert latest.value == 0.4
    assert ingest.counters()["duplicates"] == 1
    assert ingest.counters()["points"] == 1


async def test_alarm_gap_and_status_reach_the_store(ingest: IngestService, store: Store) -> None:
    await deliver(ingest, alarm(2, level="cut"))
    await deliver(ingest, alarm(2, level="cut"))
    await deliver(ingest, gap(3, first_seq=1, last_seq=1, dropped=1))
    await deliver(ingest, gateway_status("online"))
    assert [a.level for a in store.alarms()] == ["cut"]
    (gw,) = store.gateways()
    assert (gw.state, gw.dropped, gw.last_seq) == ("online", 1, 3)
    counters = ingest.counters()
    assert (counters["alarms"], counters["gaps"], counters["status"]) == (1, 1, 1)


async def test_bad_messages_are_dropped_and_counted_by_reason(
    ingest: IngestService, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", b"{not json")
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", b'{"type":"alarm"}')
    await ingest.handle("other/topic", wire.encode(alarm(1)))
    await ingest.handle("safewatch/v1/mine-b/gw-1/alarms", wire.encode(alarm(1)))
    await ingest.handle("safewatch/v1/mine-a/gw-1/telemetry", wire.encode(alarm(1)))
    counters = ingest.counters()
    assert counters["dropped_malformed"] == 2
    assert counters["dropped_bad_topic"] == 1
    assert counters["dropped_topic_mismatch"] == 2
    assert counters["received"] == 5
    assert store.alarms() == []
    assert "safewatch/v1/mine-b/gw-1/alarms" in caplog.text


async def test_store_failure_is_counted_and_the_seq_released(
    ingest: IngestService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.storage import StoreError

    def broken(ev: wire.AlarmEvent) -> bool:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "record_alarm", broken)
    await deliver(ingest, alarm(4))
    assert ingest.counters()["dropped_store_error"] == 1
    monkeypatch.undo()
    await deliver(ingest, alarm(4))  # the resend is processed, not treated as a duplicate
    assert [a.seq for a in store.alarms()] == [4]
