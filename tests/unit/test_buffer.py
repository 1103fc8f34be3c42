"""Store-and-forward buffer: sequence numbers, priority, acks, byte bound, errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import wire
from edge.uplink.buffer import BufferStorageError, StoreAndForwardBuffer
from tests.factories import alarm, point


def open_buffer(path: Path, max_bytes: int = 1_000_000) -> StoreAndForwardBuffer:
    return StoreAndForwardBuffer(path, max_bytes, site="s1", gateway="gw1")


def test_sequence_numbers_increase_forever_across_reopen_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = open_buffer(path)
    seqs = [buf.append_telemetry([point(value=0.1 * i)]).seq for i in range(3)]
    assert seqs == [1, 2, 3]
    assert buf.ack(seqs) == 3
    assert buf.pending() == []
    buf.close()
    buf = open_buffer(path)
    batch = buf.append_telemetry([point()])
    stored = buf.append_alarm(alarm())
    assert (batch.seq, stored.seq) == (4, 5)
    assert (stored.gateway, stored.site) == ("gw1", "s1")
    buf.close()


def test_stored_payload_is_the_wire_message_with_its_seq(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    batch = buf.append_telemetry([point(value=0.1), point(value=0.2)], sent_ns=77)
    (row,) = buf.pending()
    decoded = wire.decode(row.payload)
    assert decoded == batch
    assert isinstance(decoded, wire.TelemetryBatch)
    assert (decoded.seq, decoded.sent_ns, len(decoded.points)) == (row.seq, 77, 2)
    buf.close()


def test_pending_returns_alarms_first_then_oldest(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    t1 = buf.append_telemetry([point(value=0.1)]).seq
    t2 = buf.append_telemetry([point(value=0.2)]).seq
    a1 = buf.append_alarm(alarm(tag="A")).seq
    t3 = buf.append_telemetry([point(value=0.3)]).seq
    a2 = buf.append_alarm(alarm(tag="B")).seq
    assert [p.seq for p in buf.pending()] == [a1, a2, t1, t2, t3]
    assert [p.kind for p in buf.pending(3)] == ["alarm", "alarm", "telemetry"]
    buf.close()


def test_ack_deletes_only_acknowledged_rows(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    seqs = [buf.append_telemetry([point(value=0.1 * i)]).seq for i in range(4)]
    assert buf.ack([seqs[1], seqs[3], 999]) == 2
    assert [p.seq for p in buf.pending()] == [seqs[0], seqs[2]]
    stats = buf.stats()
    assert stats.rows == 2 and stats.last_seq == seqs[-1]
    assert stats.bytes == sum(len(p.payload) for p in buf.pending())
    buf.close()


def test_unacked_rows_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = open_buffer(path)
    buf.append_alarm(alarm())
    buf.append_telemetry([point()])
    buf.close()
    buf = open_buffer(path)
    assert [p.kind for p in buf.pending()] == ["alarm", "telemetry"]
    assert buf.stats().bytes > 0
    buf.close()


def test_overflow_drops_oldest_telemetry_records_gap_and_keeps_alarms(tmp_path: Path) -> None:
    size = len(wire.encode(wire.TelemetryBatch("gw1", "s1", 1, 1, [point() for _ in range(10)])))
    buf = open_buffer(tmp_path / "b.db", max_bytes=size * 10)
    first_alarm = buf.append_alarm(alarm(tag="early")).seq
    seqs = [buf.append_telemetry([point() for _ in range(10)]).seq for _ in range(12)]
    stats = buf.stats()
    assert stats.bytes <= buf.max_bytes
    assert stats.dropped > 0
    pending = buf.pending(1000)
    kinds = [p.kind for p in pending]
    assert pending[0].seq == first_alarm  # the alarm survived
    assert "gap" in kinds
    gaps = [wire.decode(p.payload) for p in pending if p.kind == "gap"]
    gap = gaps[0]
    assert isinstance(gap, wire.GapEvent)
    assert gap.first_seq == seqs[0] and gap.reason == "buffer_full"
    assert gap.dropped == gap.last_seq - gap.first_seq + 1
    kept = {p.seq for p in pending if p.kind == "telemetry"}
    dropped = {s for s in seqs if s not in kept}
    assert sum(g.dropped for g in gaps if isinstance(g, wire.GapEvent)) == len(dropped)
    assert seqs[-1] in kept  # the newest telemetry is kept
    assert max(dropped) < min(kept)  # oldest went first
    buf.close()


def test_alarms_are_kept_past_the_bound(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db", max_bytes=200)
    seqs = [buf.append_alarm(alarm(tag=f"T{i}")).seq for i in range(5)]
    assert [p.seq for p in buf.pending()] == seqs
    buf.append_telemetry([point()])  # no room: the new telemetry itself is dropped
    pending = buf.pending()
    assert [p.kind for p in pending] == ["alarm"] * 5 + ["gap"]
    buf.close()


def test_sqlite_errors_become_typed_and_counted(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    buf._db.execute("DROP TABLE messages")  # simulate a broken file
    with pytest.raises(BufferStorageError) as info:
        buf.append_telemetry([point()])
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert buf.errors >= 1
    assert buf.unrecorded_gaps == 1  # the lost batch waits for a place as a gap event
    buf.close()


def test_unopenable_path_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(BufferStorageError):
        open_buffer(tmp_path / "dir.db")


def test_wal_mode(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    mode = buf._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    buf.close()


def test_acked_rows_are_hidden_even_when_the_delete_fails(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    seqs = [buf.append_telemetry([point(value=0.1 * i)]).seq for i in range(3)]
    buf._db.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON messages BEGIN "
        "SELECT RAISE(FAIL, 'database or disk is full'); END"
    )
    with pytest.raises(BufferStorageError):
        buf.ack(seqs[:2])
    # the rows are still on disk but never handed out again: no resend storm
    assert [p.seq for p in buf.pending()] == [seqs[2]]
    cursor = buf.cursor()
    assert [p.seq for p in buf.exchange([], cursor, 10)] == [seqs[2]]
    assert buf.stats().acked_not_deleted == 2
    buf._db.execute("DROP TRIGGER no_delete")
    assert buf.ack([seqs[2]]) == 3  # the failed deletes are retried with the next ack
    assert buf.pending() == [] and buf.stats().bytes == 0
    buf.close()


def test_exchange_orders_alarms_live_then_rate_limited_backlog(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    old = [buf.append_telemetry([point()] * 10).seq for _ in range(3)]
    cursor = buf.cursor()  # session starts: the three batches are backlog
    live = buf.append_telemetry([point()] * 10).seq
    alarm_seq = buf.append_alarm(alarm()).seq
    got = buf.exchange([], cursor, 10, backlog_points=15)
    # alarm, live batch, then backlog until the 15-point allowance is spent (two batches)
    assert [m.seq for m in got] == [alarm_seq, live, old[0], old[1]]
    assert [m.seq for m in buf.exchange([], cursor, 10, backlog_points=5)] == [old[2]]
    assert buf.exchange([m.seq for m in got], cursor, 10) == []
    assert [m.seq for m in buf.pending()] == [old[2]]
    buf.close()


def test_queue_losses_get_their_own_sequence_number_and_a_gap(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    first = buf.append_telemetry([point()]).seq
    (batch,) = buf.append_batches([[point()]], lost_points=42, lost_reason="queue_full")
    messages = [wire.decode(m.payload) for m in buf.pending()]
    gaps = [m for m in messages if isinstance(m, wire.GapEvent)]
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.first_seq, gap.last_seq, gap.dropped, gap.reason) == (
        first + 1,
        first + 1,
        1,
        "queue_full",
    )
    assert gap.seq == first + 2 and batch.seq == first + 3
    assert buf.points_lost == 42
    buf.close()


def test_clean_close_records_no_restart_gap_unclean_does(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = open_buffer(path)
    buf.append_telemetry([point()])
    buf.close()
    buf = open_buffer(path)
    assert [m.kind for m in buf.pending()] == ["telemetry"]
    buf.close(clean=False)
    buf = open_buffer(path)
    kinds = [m.kind for m in buf.pending()]
    assert kinds == ["telemetry", "gap"]
    gap = wire.decode(buf.pending()[1].payload)
    assert isinstance(gap, wire.GapEvent) and gap.reason == "restart"
    assert gap.first_seq == gap.last_seq == 2 and gap.seq == 3
    buf.close()
