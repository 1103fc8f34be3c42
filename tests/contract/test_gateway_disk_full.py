"""The whole gateway with its buffer on a full disk: the safety loop keeps tripping, every lost
point is a counted, marked gap, and storage resumes when space comes back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import wire
from edge.uplink.buffer import StoreAndForwardBuffer
from tests.contract.test_buffer_disk_full import assert_accounted, small_disk  # noqa: F401
from tests.support import async_wait_until
from tests.unit.test_polling import FakeBus, f32, make_site
from tests.unit.test_polling_gateway import start

pytestmark = pytest.mark.contract


def fill_disk(path: Path) -> None:
    """Write zeros into ``path`` until the file system says it is full."""
    chunk = b"\0" * 65536
    with path.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(chunk)
            out.flush()


async def test_full_disk_keeps_the_interlock_tripping_and_marks_every_loss(
    small_disk: Path,  # noqa: F811
) -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    gateway, task = start(site, bus, small_disk)
    filler = small_disk / "filler"
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power released")
        await async_wait_until(
            lambda: gateway.counters().get("telemetry_batches", 0) > 0, 5, "stored"
        )
        assert gateway.buffer is not None
        gateway.buffer.reserve_retry_s = 0.2  # notice returning space quickly
        await asyncio.to_thread(fill_disk, filler)
        await async_wait_until(
            lambda: gateway.counters()["points_lost"] + gateway.counters()["buffer_dropped"] > 0,
            10,
            "the full disk noticed (a refused batch or old telemetry shed)",
        )

        bus.set(1, "holding", 0, f32(1.8))  # methane over the cut limit while the disk is full
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 5, "power cut")
        bus.set(1, "holding", 0, f32(0.3))
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power restored")
        assert gateway.task_failures == 0

        filler.unlink()  # space comes back: telemetry is stored again
        batches = gateway.counters()["telemetry_batches"]
        await async_wait_until(
            lambda: gateway.counters()["telemetry_batches"] > batches, 10, "storing again"
        )
    finally:
        filler.unlink(missing_ok=True)
        gateway.stop()
        await asyncio.wait_for(task, 10)
    assert gateway.unsaved_alarms == []

    buffer = StoreAndForwardBuffer(small_disk / "buf.db", 10**7, site="s1", gateway="gw1")
    messages = [wire.decode(p.payload) for p in buffer.pending(100_000)]
    buffer.close()
    gaps = [m for m in messages if isinstance(m, wire.GapEvent)]
    assert gaps and {g.reason for g in gaps} <= {"disk_full"}
    alarms = [m for m in messages if isinstance(m, wire.AlarmEvent)]
    assert [
        (a.tag, a.previous, a.level, a.reason)
        for a in alarms
        if a.tag == "CH4_A" and a.kind == "ch4"
    ] == [
        ("CH4_A", "normal", "cut", "restore_hold"),  # no saved state: fail-safe start
        ("CH4_A", "cut", "normal", "below_restore"),
        ("CH4_A", "normal", "cut", "above_cut"),  # cut, and saved state refused, disk full
        ("CH4_A", "cut", "normal", "below_restore"),
    ]
    assert_accounted(
        messages, max(m.seq for m in messages if not isinstance(m, wire.GatewayStatus))
    )
