"""IngestService.handle: routing, dedup and counted drops, with a fake writer and a SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.storage import InfluxUnavailable, Store, StoreError, WriteResult
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, gap, gateway_status, point, telemetry

ANY_TIME = TimeWindow(past_s=None, future_s=None)


class RecordingWriter:
    """A PointWriter that keeps the lines it was given; ``down`` makes it unavailable,
    ``refuse`` makes it answer like a partial write that dropped that many lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.down = False
        self.refuse = 0

    @property
    def reachable(self) -> bool:
        return not self.down

    @property
    def pending(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        return {}

    def enqueue(self, lines: Iterable[str]) -> None:
        raise AssertionError("the ingest writes directly; it never queues")

    async def write(self, lines: Sequence[str]) -> WriteResult:
        if self.down:
            raise InfluxUnavailable("influx is down (test)")
        refused = min(self.refuse, len(lines))
        self.lines.extend(lines[refused:])
        return WriteResult(
            len(lines) - refused, refused, "partial write: dropped" if refused else ""
        )

    async def flush(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def ensure_database(self) -> None:
        return None

    async def ping(self) -> bool:
        return not self.down

    async def aclose(self) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(cloud_db_url(tmp_path, "ingest.db"))
    s.create_all()
    return s


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


@pytest.fixture
def ingest(store: Store, writer: RecordingWriter) -> IngestService:
    return IngestService("127.0.0.1", 1, store, writer, group="g1", ts_window=ANY_TIME)


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


async def test_bad_messages_become_dead_letters_counted_by_reason(
    ingest: IngestService, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", b"{not json")
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", b'{"type":"alarm"}')
    await ingest.handle("other/topic", wire.encode(alarm(1)))
    await ingest.handle("safewatch/v1/mine-b/gw-1/alarms", wire.encode(alarm(1)))
    await ingest.handle("safewatch/v1/mine-a/gw-1/telemetry", wire.encode(alarm(1)))
    await ingest.handle("safewatch/v1/mine-a/gw-2/alarms", wire.encode(alarm(1)))
    bad_utf8 = wire.encode(alarm(1)).replace(b"CH4-101 cut", b"CH4-101 \xff")
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", bad_utf8)
    await ingest.handle("safewatch/v1/mine-a/gw-1/alarms", None)
    counters = ingest.counters()
    assert counters["dead_malformed"] == 4
    assert counters["dead_bad_topic"] == 1
    assert counters["dead_topic_mismatch"] == 3
    assert counters["dead_letters"] == counters["received"] == 8
    assert store.alarms() == []
    assert "safewatch/v1/mine-b/gw-1/alarms" in caplog.text
    letters = store.dead_letters()
    assert [d.reason for d in letters] == [
        "malformed",
        "malformed",
        "bad_topic",
        "topic_mismatch",
        "topic_mismatch",
        "topic_mismatch",
        "malformed",
        "malformed",
    ]
    assert letters[0].payload == b"{not json"
    assert letters[6].payload == bad_utf8 and "UTF-8" in letters[6].detail
    assert letters[5].detail == "the payload belongs on 'safewatch/v1/mine-a/gw-1/alarms'"


async def test_timestamps_outside_the_accept_window_are_dead_letters(
    store: Store, writer: RecordingWriter
) -> None:
    ingest = IngestService(
        "127.0.0.1", 1, store, writer, ts_window=TimeWindow(past_s=3600, future_s=60)
    )
    now = time.time_ns()
    hour = 3600 * 10**9
    await deliver(ingest, telemetry(1, point("A", 1.0, now - hour // 2)))  # half an hour late
    await deliver(ingest, telemetry(2, point("A", 2.0, now), point("B", 2.0, now + 2 * hour)))
    await deliver(ingest, telemetry(3, point("A", 3.0, T0)))  # 2023: far too old
    await deliver(ingest, alarm(4, ts_ns=now + 10 * hour))
    counters = ingest.counters()
    assert counters["dead_ts_out_of_window"] == 3
    assert counters["points"] == 1
    assert [line.split(" ")[-1] for line in writer.lines] == [str(now - hour // 2)]
    (latest,) = store.latest("mine-a")  # a far-future point never freezes the latest value
    assert latest.value == 1.0
    letters = store.dead_letters()
    assert [d.reason for d in letters] == ["ts_out_of_window"] * 3
    assert letters[0].detail.startswith("point B: ") and "after receipt" in letters[0].detail
    assert letters[1].detail.startswith("point A: ") and "before receipt" in letters[1].detail
    assert "after receipt" in letters[2].detail
    (gw,) = store.gateways()
    assert gw.last_seq == 1  # a dead letter is not a processed seq: a fixed resend still counts


async def test_store_failure_raises_stores_nothing_and_the_resend_is_processed(
    ingest: IngestService, store: Store, writer: RecordingWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(commit: object) -> list[bool]:
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "commit_batch", broken)
    with pytest.raises(StoreError):  # the caller must not ack: the broker redelivers
        await deliver(ingest, alarm(4))
    with pytest.raises(StoreError):
        await deliver(ingest, telemetry(5, point()))
    assert store.alarms() == [] and ingest.counters().get("alarms", 0) == 0
    monkeypatch.undo()
    await deliver(ingest, alarm(4))  # the redelivery is processed, not treated as a duplicate
    await deliver(ingest, telemetry(5, point()))
    assert [a.seq for a in store.alarms()] == [4]
    assert len(writer.lines) == 2  # written twice to InfluxDB: the same point, idempotent there
    assert ingest.counters()["points"] == 1


async def test_influx_down_spools_in_the_commit_and_the_drainer_writes_it_later(
    ingest: IngestService, store: Store, writer: RecordingWriter
) -> None:
    writer.down = True
    await deliver(ingest, telemetry(1, point("A", 1.0, T0), point("B", 2.0, T0)))
    await deliver(ingest, telemetry(2, point("A", 3.0, T0 + 1)))
    assert writer.lines == []
    assert store.spool_points() == 3 and ingest.counters()["spooled"] == 3
    (gw,) = store.gateways()
    assert gw.last_seq == 2  # acked: the points are durable in the spool
    with pytest.raises(InfluxUnavailable):
        await ingest.drain_spool_once()
    assert store.spool_points() == 3  # kept while InfluxDB is down
    writer.down = False
    assert await ingest.drain_spool_once() == 3
    assert await ingest.drain_spool_once() == 0
    assert store.spool_points() == 0
    assert [line.split(" ")[-1] for line in writer.lines] == [str(T0), str(T0), str(T0 + 1)]
    assert ingest.counters()["influx_written"] == 3


async def test_refused_lines_are_counted_from_the_answer_not_as_written(
    ingest: IngestService, writer: RecordingWriter
) -> None:
    writer.refuse = 1
    await deliver(ingest, telemetry(1, point("A"), point("B")))
    counters = ingest.counters()
    assert (counters["influx_written"], counters["influx_refused"]) == (1, 1)


async def test_a_batch_mixes_good_bad_and_duplicate_messages(
    ingest: IngestService, store: Store, writer: RecordingWriter
) -> None:
    from cloud.ingest import Incoming

    good = [telemetry(seq, point("A", float(seq), T0 + seq)) for seq in range(1, 6)]
    items = [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in good]
    items.insert(2, Incoming(items[0].topic, b"\x00garbage", 0))
    items.append(items[1])  # a resend inside the same batch
    await ingest.process(items)
    counters = ingest.counters()
    assert (counters["points"], counters["duplicates"], counters["dead_letters"]) == (5, 1, 1)
    (latest,) = store.latest("mine-a")
    assert latest.value == 5.0
    (gw,) = store.gateways()
    assert (gw.last_seq, gw.gaps) == (5, 0)


async def test_replay_feeds_dead_letters_through_the_handler_again(
    store: Store, writer: RecordingWriter
) -> None:
    strict = IngestService("127.0.0.1", 1, store, writer, ts_window=TimeWindow(60, 60))
    await deliver(strict, alarm(7, ts_ns=T0))  # the gateway's clock was wrong
    await strict.handle("safewatch/v1/mine-a/gw-1/alarms", b"junk")
    assert [d.reason for d in store.dead_letters()] == ["ts_out_of_window", "malformed"]
    lenient = IngestService("127.0.0.1", 1, store, writer, ts_window=ANY_TIME)
    again = await lenient.replay(store.dead_letters())
    assert again == 1  # the junk is a dead letter again, under a new id
    assert [a.seq for a in store.alarms()] == [7]
    (left,) = store.dead_letters()
    assert (left.reason, left.payload) == ("malformed", b"junk")


async def test_a_message_the_database_refuses_is_a_dead_letter_and_the_rest_is_stored(
    ingest: IngestService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.ingest import Incoming
    from cloud.storage import StoreRejected

    real = store.commit_batch

    def picky(commit: object) -> list[bool]:
        alarms = getattr(commit, "alarms", [])
        if any(a.seq == 2 for a in alarms):
            raise StoreRejected("value too long")
        return real(commit)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "commit_batch", picky)
    messages = [alarm(1), alarm(2), alarm(3)]
    await ingest.process(
        [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
    )
    assert sorted(a.seq for a in store.alarms()) == [1, 3]
    (dead,) = store.dead_letters()
    assert dead.reason == "store_rejected"


async def test_extreme_sequence_numbers_keep_the_gap_arithmetic_in_integers(
    ingest: IngestService, store: Store
) -> None:
    await deliver(ingest, telemetry(0, point()))
    await deliver(ingest, telemetry(wire.SEQ_MAX, point()))
    await deliver(ingest, telemetry(5, point()))  # a late arrival fills one gap back in
    (gw,) = store.gateways()
    assert (gw.last_seq, gw.gaps) == (wire.SEQ_MAX, wire.SEQ_MAX - 2)
    assert isinstance(gw.gaps, int) and isinstance(gw.last_seq, int)
    # One past the limit never reaches the store: it is a dead letter.
    too_far = wire.encode(telemetry(1, point())).replace(b'"seq":1', b'"seq":9223372036854775808')
    await ingest.handle(wire.topic_of(telemetry(1)), too_far)
    assert ingest.counters()["dead_malformed"] == 1


async def test_latest_is_the_newest_point_per_site_and_tag_across_the_batch(
    ingest: IngestService, store: Store
) -> None:
    from cloud.ingest import Incoming

    messages = [  # one batch: two sites, two gateways, timestamps out of order
        telemetry(1, point("A", 1.0, T0 + 30), point("A", 2.0, T0 + 10), point("B", 3.0, T0)),
        telemetry(1, point("A", 4.0, T0 + 20), gateway="gw-2"),
        telemetry(2, point("A", 5.0, T0 + 5), point("B", 6.0, T0 + 1)),
        telemetry(1, point("A", 7.0, T0), site="mine-b", gateway="gw-3"),
    ]
    now = time.time_ns()
    await ingest.process([Incoming(wire.topic_of(m), wire.encode(m), now) for m in messages])
    newest = {(v.tag, v.value, v.gateway, v.ts_ns) for v in store.latest("mine-a")}
    assert newest == {("A", 1.0, "gw-1", T0 + 30), ("B", 6.0, "gw-1", T0 + 1)}
    assert [(v.tag, v.value) for v in store.latest("mine-b")] == [("A", 7.0)]
