"""Automatic hazards for monitoring offline longer than N minutes, from edge events through
the real ingest (alarm events with a sensor fault, the gateway's offline status)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import msgspec
import pytest

import wire
from cloud import migrations
from cloud.audit import AuditLog
from cloud.hazards import AUTO_ACTOR, HazardFilter, HazardService, OfflineHazards
from cloud.ingest import Incoming, IngestService
from cloud.storage import Store
from tests.db_support import cloud_db_url
from tests.factories import alarm, gateway_status, point, telemetry
from tests.unit.test_cloud_ingest import ANY_TIME, RecordingWriter

MIN = 60 * 10**9
AFTER = dt.timedelta(minutes=10)


class Clock:
    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def __call__(self) -> int:
        return self.now_ns


@pytest.fixture
def rig(tmp_path: Path) -> tuple[IngestService, HazardService, OfflineHazards, Clock]:
    store = Store(cloud_db_url(tmp_path, "offline.db"))
    migrations.upgrade(store.engine)
    hazards = HazardService(store.engine, AuditLog(store.engine), tmp_path / "ev")
    ingest = IngestService("127.0.0.1", 1, store, RecordingWriter(), ts_window=ANY_TIME)
    clock = Clock()
    return ingest, hazards, OfflineHazards(hazards, after=AFTER, clock_ns=clock), clock


async def _deliver(ingest: IngestService, *messages: wire.Message) -> None:
    await ingest.process(
        [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
    )


def _fault(seq: int, tag: str, ts_ns: int, *, level: wire.AlarmLevel = "fault") -> wire.AlarmEvent:
    event = alarm(
        seq,
        level=level,
        previous="normal" if level == "fault" else "fault",
        tag=tag,
        kind="co",
        device="gas-2",
        value=None,
        threshold=None,
        ts_ns=ts_ns,
        actuators=(),
        message=f"{tag} not read for too long" if level == "fault" else f"{tag} back",
    )
    return msgspec.structs.replace(event, reason="stale" if level == "fault" else "")


async def test_a_sensor_offline_longer_than_n_minutes_opens_one_hazard(
    rig: tuple[IngestService, HazardService, OfflineHazards, Clock],
) -> None:
    ingest, hazards, offline, clock = rig
    now = clock.now_ns
    await _deliver(
        ingest,
        telemetry(1, point("CO-7", 12.0, now - 20 * MIN, kind="co", device="gas-2"), sent_ns=now),
        _fault(2, "CO-7", now - 4 * MIN),  # offline 4 minutes: not yet
    )
    assert offline.sweep() == []

    clock.now_ns = now + 7 * MIN  # 11 minutes offline now
    (hazard,) = offline.sweep()
    assert (hazard.kind, hazard.grade, hazard.source, hazard.found_by) == (
        "sensor_offline",
        "general",
        "auto",
        AUTO_ACTOR,
    )
    assert "CO-7" in hazard.title and hazard.area == "panel-3" and hazard.site == "mine-a"
    assert "gw-1" in hazard.description

    clock.now_ns += 30 * MIN
    assert offline.sweep() == []  # de-duplicated while open
    assert hazards.find(HazardFilter(kind="sensor_offline"))[1] == 1
    assert offline.created == 1


async def test_a_sensor_back_in_time_or_another_kind_of_event_opens_nothing(
    rig: tuple[IngestService, HazardService, OfflineHazards, Clock],
) -> None:
    ingest, hazards, offline, clock = rig
    now = clock.now_ns
    await _deliver(
        ingest,
        telemetry(
            1,
            point("CO-7", 12.0, now - 30 * MIN, kind="co", device="gas-2"),
            point("CO-8", 3.0, now - 30 * MIN, kind="co", device="gas-2"),
            sent_ns=now,
        ),
        _fault(2, "CO-7", now - 25 * MIN),
        _fault(3, "CO-7", now - 24 * MIN, level="normal"),  # came back after a minute
        # a rule-type event on CO-8 (kind "diagnosis") is not the sensor's own condition
        msgspec.structs.replace(_fault(4, "CO-8", now - 25 * MIN), kind="diagnosis"),
    )
    assert offline.sweep() == []
    assert hazards.find(HazardFilter())[1] == 0


async def test_a_gateway_offline_longer_than_n_minutes_is_a_major_hazard(
    rig: tuple[IngestService, HazardService, OfflineHazards, Clock],
) -> None:
    ingest, hazards, offline, clock = rig
    now = clock.now_ns
    await _deliver(
        ingest,
        gateway_status("offline", ts_ns=now - 12 * MIN, gateway="gw-1"),
        gateway_status("online", ts_ns=now - 13 * MIN, gateway="gw-2"),
        gateway_status("offline", ts_ns=now - 2 * MIN, gateway="gw-3"),
    )
    (hazard,) = offline.sweep()
    assert (hazard.kind, hazard.grade) == ("monitoring_offline", "major")
    assert "gw-1" in hazard.title
    await _deliver(ingest, gateway_status("online", ts_ns=now - 1 * MIN, gateway="gw-1"))
    clock.now_ns += 20 * MIN  # gw-3 is now long offline too; gw-1's hazard stays one
    (later,) = offline.sweep()
    assert "gw-3" in later.title
    assert hazards.find(HazardFilter(kind="monitoring_offline"))[1] == 2


def test_a_zero_delay_is_refused(
    rig: tuple[IngestService, HazardService, OfflineHazards, Clock],
) -> None:
    _, hazards, _, _ = rig
    with pytest.raises(ValueError, match="positive"):
        OfflineHazards(hazards, after=dt.timedelta(0))
