"""Telemetry batcher and alarm writer: bulk draining, queue drops as gaps, loud shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

import wire
from device_drivers import Quality, Sample
from edge.alarms import AlarmOutbox
from edge.uplink.batcher import AlarmWriter, SampleQueue, TelemetryBatcher
from edge.uplink.buffer import StoreAndForwardBuffer
from tests.factories import alarm
from tests.support import async_wait_until
from tests.unit.test_polling import FakeBus, make_site
from tests.unit.test_polling_gateway import start


def sample(i: int) -> Sample:
    return Sample("CH4_A", "gas", 0.01 * i, Quality.GOOD, 1_700_000_000_000_000_000 + i, None)


def messages(buffer: StoreAndForwardBuffer) -> list[wire.Message]:
    return [wire.decode(m.payload) for m in buffer.pending(10_000)]


async def test_queue_overflow_becomes_a_queue_full_gap_never_silent(tmp_path: Path) -> None:
    buffer = StoreAndForwardBuffer(tmp_path / "b.db", 10**7, site="s1", gateway="gw1")
    queue = SampleQueue(maxsize=5)
    for i in range(8):
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(sample(i))
    assert queue.dropped == 3
    batcher = TelemetryBatcher(make_site(), buffer, queue)
    await batcher.flush()
    got = messages(buffer)
    gaps = [m for m in got if isinstance(m, wire.GapEvent)]
    batches = [m for m in got if isinstance(m, wire.TelemetryBatch)]
    assert [g.reason for g in gaps] == ["queue_full"]
    assert [len(b.points) for b in batches] == [5]
    # the lost samples own a sequence number: the cloud sees the hole the gap explains
    assert gaps[0].first_seq == gaps[0].last_seq
    assert gaps[0].first_seq not in {m.seq for m in got if not isinstance(m, wire.GatewayStatus)}
    assert buffer.points_lost == 3
    buffer.close()


async def test_batches_are_stored_in_bulk_within_the_interval(tmp_path: Path) -> None:
    buffer = StoreAndForwardBuffer(tmp_path / "b.db", 10**7, site="s1", gateway="gw1")
    queue = SampleQueue(maxsize=10_000)
    stored: list[int] = []
    batcher = TelemetryBatcher(
        make_site(),
        buffer,
        queue,
        max_points=100,
        interval_s=0.1,
        on_stored=lambda: stored.append(1),
    )
    task = asyncio.create_task(batcher.run(), name="batcher")
    try:
        for i in range(250):
            queue.put_nowait(sample(i))
        await async_wait_until(lambda: batcher.batches == 3, 5, "three batches stored")
        sizes = [len(m.points) for m in messages(buffer) if isinstance(m, wire.TelemetryBatch)]
        assert sizes == [100, 100, 50]
        assert len(stored) <= 2  # the two full batches went in one buffer call
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    buffer.close()


async def test_full_batches_wait_for_the_interval_and_go_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Full batches are not stored one by one as they fill (a transaction and an fsync
    each): what arrived within the interval goes in one buffer call."""
    buffer = StoreAndForwardBuffer(tmp_path / "b.db", 10**7, site="s1", gateway="gw1")
    queue = SampleQueue(maxsize=10_000)
    stored: list[int] = []
    batcher = TelemetryBatcher(
        make_site(),
        buffer,
        queue,
        max_points=100,
        interval_s=0.3,
        on_stored=lambda: stored.append(1),
    )
    task = asyncio.create_task(batcher.run(), name="batcher")
    try:
        for i in range(350):
            queue.put_nowait(sample(i))
        await async_wait_until(lambda: batcher.batches == 4, 5, "four batches stored")
        sizes = [len(m.points) for m in messages(buffer) if isinstance(m, wire.TelemetryBatch)]
        assert sizes == [100, 100, 100, 50]
        assert len(stored) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    buffer.close()


async def test_max_batches_bounds_what_waits_for_the_interval(tmp_path: Path) -> None:
    buffer = StoreAndForwardBuffer(tmp_path / "b.db", 10**7, site="s1", gateway="gw1")
    queue = SampleQueue(maxsize=10_000)
    batcher = TelemetryBatcher(
        make_site(), buffer, queue, max_points=100, max_batches=3, interval_s=600
    )
    task = asyncio.create_task(batcher.run(), name="batcher")
    try:
        for i in range(350):
            queue.put_nowait(sample(i))
        # three full batches waiting: stored long before the (ten-minute) interval
        await async_wait_until(lambda: batcher.batches == 3, 10, "three batches stored")
        sizes = [len(m.points) for m in messages(buffer) if isinstance(m, wire.TelemetryBatch)]
        assert sizes == [100, 100, 100]
        assert len(batcher._batch) == 50  # the partial one waits for its interval
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    buffer.close()


async def test_alarms_that_cannot_be_stored_at_shutdown_are_returned_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = StoreAndForwardBuffer(tmp_path / "b.db", 10**7, site="s1", gateway="gw1")
    buffer._db.execute("DROP TABLE messages")  # the buffer is unusable
    outbox = AlarmOutbox()
    events = [alarm(tag="CH4_A", alarm_id="a1"), alarm(tag="CH4_B", alarm_id="a2")]
    for event in events:
        outbox.put(event)
    writer = AlarmWriter(buffer, outbox, retry_s=0.05)
    with caplog.at_level(logging.CRITICAL, logger="safewatch.edge.uplink"):
        lost = await writer.flush_at_shutdown(0.2)
    assert lost == events
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 2 and "a1" in critical[0] and "a2" in critical[1]
    assert writer.failures >= 2  # retried before giving up
    buffer.close(clean=False)


async def test_gateway_shutdown_with_unstorable_alarms_is_not_silent(tmp_path: Path) -> None:
    bus = FakeBus()
    gateway, task = start(make_site(poll_ms=50), bus, tmp_path)
    gateway.alarm_flush_s = 0.2
    await asyncio.wait_for(gateway.ready.wait(), 5)
    assert gateway.buffer is not None
    buffer = gateway.buffer

    def drop_table() -> None:
        # under the buffer's lock: outside it, the DROP could land inside another
        # writer's transaction (batcher, health reporter) and be rolled back with it
        with buffer._lock:
            buffer._db.execute("DROP TABLE messages")

    await asyncio.to_thread(drop_table)
    gateway.outbox.put(alarm(tag="CH4_A", alarm_id="late"))
    gateway.stop()
    await asyncio.wait_for(task, 10)
    assert "late" in [a.alarm_id for a in gateway.unsaved_alarms]
