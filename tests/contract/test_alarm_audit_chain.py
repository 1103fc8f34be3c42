"""Gateway-local operator actions reach the cloud: a CLI acknowledgement on the gateway
(no cloud command) and an engineer's calibration travel over a real Mosquitto into the
real ingest, which mirrors the alarm's ISA state and appends both actions to the
hash-chained audit log that ``safewatch audit verify`` checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from cloud import IngestService
from cloud.alarm_states import AlarmMirror, AlarmStateRecord
from cloud.audit import AuditLog
from cloud.ingest import TimeWindow
from cloud.storage import InfluxV1Writer, Store
from device_drivers import DeviceDriver
from edge.alarm_manager import AlarmStore, alarm_db_path
from edge.gateway import Gateway
from edge.latches import submit_command
from safewatch.cli import app
from tests.db_support import cloud_db_url
from tests.support import async_wait_until, start_mosquitto
from tests.unit.test_polling import FakeBus, f32, make_site


async def test_a_local_cli_ack_and_a_calibration_end_up_in_the_verified_cloud_chain(
    influx_db: tuple[str, str], tmp_path: Path
) -> None:
    influx_url, db = influx_db
    site = make_site(poll_ms=50)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    broker = start_mosquitto(tmp_path)
    db_url = cloud_db_url(tmp_path)
    store = Store(db_url)
    store.create_all()
    audit = AuditLog(store.engine)
    audit.create_all()
    mirror = AlarmMirror(store.engine, audit)
    mirror.create_all()
    writer = InfluxV1Writer(influx_url, db)
    ingest = IngestService("127.0.0.1", broker.port, store, writer, group="audit-chain",
                           ts_window=TimeWindow(past_s=None, future_s=None))  # fmt: skip
    ingest.alarm_handlers.append(mirror)

    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(site, buffer_path=tmp_path / "buf.db", mqtt_host="127.0.0.1",
                      mqtt_port=broker.port, driver_factory=factory, drain_s=0.3,
                      command_check_s=0.1)  # fmt: skip
    tasks = [
        asyncio.create_task(writer.run(), name="influx-writer"),
        asyncio.create_task(ingest.run(), name="ingest"),
        asyncio.create_task(gateway.run(), name="gateway"),
    ]

    def the_cut() -> AlarmStateRecord | None:
        rows = mirror.states("s1", include_normal=True)
        return next((r for r in rows if r.tag == "CH4_A" and r.reason == "above_cut"), None)

    def state_of(alarm_id: str) -> str | None:
        rows = mirror.states("s1", include_normal=True)
        return next((r.state for r in rows if r.alarm_id == alarm_id), None)

    try:
        await async_wait_until(lambda: ingest.connected, 20, "the ingest subscribed")
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 20, "power released")
        bus.set(1, "holding", 0, f32(1.8))  # methane over the cut
        mirrored = await async_wait_until(the_cut, 30, "the cut mirrored in the cloud")
        assert mirrored is not None
        assert (mirrored.state, mirrored.level, mirrored.priority) == (
            "unacknowledged", "cut", "critical",
        )  # fmt: skip

        # the operator acknowledges on the gateway itself: the CLI on the local database
        result = CliRunner().invoke(
            app,
            ["alarms", "ack", mirrored.alarm_id, "--db", str(alarm_db_path(gateway.state_path)),
             "--by", "wang", "--why", "seen on the wall, crew withdrawn"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        # and an engineer declares a calibration through the local command files
        calibrate = {"action": "calibrate", "tag": "CH4_B", "minutes": 5, "by": "li"}
        submit_command(gateway.state_path, {**calibrate, "why": "monthly gas test"})

        await async_wait_until(
            lambda: state_of(mirrored.alarm_id) == "acknowledged", 30, "the ack mirrored"
        )
        await async_wait_until(
            lambda: audit.entries(limit=10, action="calibration"), 30, "the calibration audited"
        )
    finally:
        gateway.stop()
        await asyncio.wait_for(tasks[2], 20)
        for task in tasks[:2]:
            task.cancel()
        await asyncio.gather(*tasks[:2], return_exceptions=True)
        broker.stop()

    (ack,) = audit.entries(limit=10, action="alarm_acknowledged")
    assert ack.actor == "gw1:wang" and ack.target == "s1/gw1/CH4_A"
    assert "crew withdrawn" in ack.details and mirrored.alarm_id in ack.details
    (cal,) = audit.entries(limit=10, action="calibration")
    assert cal.actor == "gw1:li" and "monthly gas test" in cal.details
    # the gateway audited both itself, before forwarding
    local_db = AlarmStore(alarm_db_path(gateway.state_path))
    assert [(a.action, a.actor) for a in local_db.actions()] == [("calibrate", "li")]
    changes = [(c.action, c.actor, c.why) for c in local_db.history()]
    assert ("acknowledge", "wang", "seen on the wall, crew withdrawn") in changes
    assert local_db.actions(pending_only=True) == [] and local_db.pending() == []
    local_db.close()
    store.engine.dispose()
    verify = CliRunner().invoke(app, ["audit", "verify", "--db-url", db_url])
    assert verify.exit_code == 0, verify.output
    assert "audit trail intact: 2 rows" in verify.output
