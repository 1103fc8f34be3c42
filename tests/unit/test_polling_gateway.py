"""The whole gateway with a fake bus and no broker: the safety loop never needs the uplink."""

from __future__ import annotations

import asyncio
from pathlib import Path

import wire
from device_drivers import DeviceDriver
from edge.config import LoadedSite
from edge.gateway import Gateway
from edge.rules import Level
from edge.uplink.buffer import StoreAndForwardBuffer
from tests.support import async_wait_until
from tests.unit.test_polling import FakeBus, f32, make_site


def start(site: LoadedSite, bus: FakeBus, tmp_path: Path) -> tuple[Gateway, asyncio.Task[None]]:
    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        # nothing listens on port 1 (a free ephemeral port could even self-connect)
        mqtt_port=1,
        driver_factory=factory,
        drain_s=0.3,
    )
    return gateway, asyncio.create_task(gateway.run(), name="gateway")


async def test_cut_and_fault_lockout_without_a_broker_alarms_kept(tmp_path: Path) -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    gateway, task = start(site, bus, tmp_path)
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power released")
        assert gateway.levels()["CH4_A"] is Level.NORMAL

        bus.set(1, "holding", 0, f32(1.8))
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 5, "power cut")
        assert gateway.levels()["CH4_A"] is Level.CUT

        bus.set(1, "holding", 0, f32(0.3))
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power restored")

        bus.unreachable.add(1)  # the methane sensor goes offline: fail-safe cut
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 5, "fault lockout")
        assert gateway.levels()["CH4_A"] is Level.FAULT
        assert gateway.counters()["published"] == 0
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 10)

    buffer = StoreAndForwardBuffer(tmp_path / "buf.db", 10**7, site="s1", gateway="gw1")
    messages = [wire.decode(p.payload) for p in buffer.pending(10_000)]
    buffer.close()
    alarms = [
        m
        for m in messages
        if isinstance(m, wire.AlarmEvent) and m.tag == "CH4_A" and m.kind == "ch4"
    ]
    notices = [m for m in messages if isinstance(m, wire.AlarmEvent) and m.kind == "notice"]
    assert notices and all(n.reason == "lockout_test_overdue" for n in notices)
    assert [(a.tag, a.previous, a.level, a.reason) for a in alarms] == [
        # no saved state: the fail-safe first reading is judged as if cut, held for the hold time
        ("CH4_A", "normal", "cut", "restore_hold"),
        ("CH4_A", "cut", "normal", "below_restore"),
        ("CH4_A", "normal", "cut", "above_cut"),
        ("CH4_A", "cut", "normal", "below_restore"),
        ("CH4_A", "normal", "fault", "comms_lost"),
    ]
    assert alarms[2].actuators == ["power"] and alarms[2].threshold == 1.5
    telemetry = [m for m in messages if isinstance(m, wire.TelemetryBatch)]
    assert telemetry, "telemetry batches stored for later"
    points = [p for batch in telemetry for p in batch.points]
    assert any(p.tag == "CH4_A" and p.quality == "bad" and p.reason == "comms_lost" for p in points)
    seqs = [m.seq for m in messages if not isinstance(m, wire.GatewayStatus)]
    assert len(set(seqs)) == len(seqs)


async def test_the_gateways_own_lag_is_not_a_stale_sensor(tmp_path: Path) -> None:
    """Polling starts late (a slow connect): tags are not faulted as stale meanwhile; once the
    poller tries and the device stays silent, staleness and faults follow as usual."""
    site = make_site(poll_ms=50)  # stale after 150 ms

    class SlowStart(FakeBus):
        async def open(self) -> None:
            await asyncio.sleep(1.0)  # the gateway, not the sensors, is late
            await super().open()

    bus = SlowStart()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    gateway, task = start(site, bus, tmp_path)
    try:
        await asyncio.sleep(0.8)
        stale = [t for t, level in gateway.levels().items() if level is Level.FAULT]
        assert stale == [], stale
        # fail-safe start: the first reading is judged as cut, then restored after the hold
        await async_wait_until(lambda: gateway.levels()["CH4_A"] is Level.NORMAL, 5, "normal")
        bus.dead.add(1)  # now the sensor really goes quiet: attempted, no answer
        await async_wait_until(lambda: gateway.levels()["CH4_A"] is Level.FAULT, 5, "fault")
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 10)
