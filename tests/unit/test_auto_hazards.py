"""Automatic hazards from edge alarm events handed over by the ingest, de-duplicated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import wire
from cloud.audit import AuditLog
from cloud.hazards import AUTO_ACTOR, AutoHazards, HazardFilter, HazardService, classify
from cloud.ingest import Incoming, IngestService
from cloud.storage import Store
from tests.db_support import cloud_db_url
from tests.factories import alarm
from tests.unit.test_cloud_ingest import ANY_TIME, RecordingWriter


@pytest.fixture
def setup(tmp_path: Path) -> tuple[IngestService, HazardService, AutoHazards]:
    store = Store(cloud_db_url(tmp_path, "auto.db"))
    store.create_all()
    audit = AuditLog(store.engine)
    audit.create_all()
    hazards = HazardService(store.engine, audit, tmp_path / "ev")
    hazards.create_all()
    ingest = IngestService("127.0.0.1", 1, store, RecordingWriter(), ts_window=ANY_TIME)
    auto = AutoHazards(hazards)
    ingest.alarm_handlers.append(auto)
    return ingest, hazards, auto


async def _deliver(ingest: IngestService, *messages: wire.AlarmEvent) -> None:
    await ingest.process(
        [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
    )


async def test_edge_events_through_the_ingest_open_deduplicated_hazards(
    setup: tuple[IngestService, HazardService, AutoHazards],
) -> None:
    ingest, hazards, auto = setup
    await _deliver(
        ingest,
        alarm(1, level="cut", tag="CH4-101"),
        alarm(2, level="cut", tag="CH4-101"),  # the same condition again: one hazard
        alarm(3, level="normal", previous="cut", tag="CH4-101"),  # not a hazard
        alarm(4, level="alarm", tag="FB-1", kind="feedback", previous="normal"),
        alarm(5, level="alarm", tag="T-9", kind="notice"),  # no reason: not a hazard
    )
    await _deliver(ingest, alarm(1, level="cut", tag="CH4-101"))  # a redelivery: not new
    found, total = hazards.find(HazardFilter(kind="methane"))
    assert total == 1
    methane = found[0]
    assert (methane.grade, methane.source, methane.found_by) == ("major", "auto", AUTO_ACTOR)
    assert methane.area == "panel-3" and "CH4-101" in methane.title
    assert auto.repeats == 1 and auto.failures == 0
    # feedback with no reason (older gateway) is not classified; with the reason it is
    assert hazards.find(HazardFilter(kind="feedback"))[1] == 0


def test_classification_table() -> None:
    def event(**kw: object) -> wire.AlarmEvent:
        base = alarm(1)
        return wire.AlarmEvent(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **kw})

    assert classify(event(level="cut")) is not None
    assert classify(event(level="alarm"))[:2] == ("methane", "general")  # type: ignore[index]
    assert classify(event(level="fault"))[:2] == ("sensor_fault", "general")  # type: ignore[index]
    assert classify(event(level="cut", reason="calibration:above_cut")) is None
    assert classify(event(level="normal")) is None
    fb = event(kind="feedback", level="alarm", reason="feedback_missing")
    assert classify(fb)[:2] == ("feedback", "major")  # type: ignore[index]
    overdue = event(kind="notice", level="alarm", reason="lockout_test_overdue")
    assert classify(overdue)[:2] == ("lockout_test", "general")  # type: ignore[index]
    failed = event(kind="notice", level="alarm", reason="lockout_test_failed")
    assert classify(failed)[:2] == ("lockout_test", "major")  # type: ignore[index]
    assert classify(event(kind="co", level="alarm")) is None


async def test_feedback_and_lockout_events_through_the_ingest(
    setup: tuple[IngestService, HazardService, AutoHazards],
) -> None:
    ingest, hazards, _ = setup
    base = alarm(10, level="alarm", kind="feedback", tag="FB-1", previous="normal")
    fields = {f: getattr(base, f) for f in base.__struct_fields__}
    await _deliver(
        ingest,
        wire.AlarmEvent(**{**fields, "reason": "feedback_missing"}),
        wire.AlarmEvent(**{**fields, "seq": 11, "tag": "LK-1", "kind": "notice",
                           "reason": "lockout_test_overdue"}),
    )  # fmt: skip
    kinds = {h.kind: h.grade for h in hazards.find()[0]}
    assert kinds == {"feedback": "major", "lockout_test": "general"}


async def test_a_failing_handler_never_stops_the_ingest(
    setup: tuple[IngestService, HazardService, AutoHazards], tmp_path: Path
) -> None:
    ingest, _, _ = setup

    def broken(events: object) -> None:
        raise RuntimeError("boom")

    ingest.alarm_handlers.insert(0, broken)
    await _deliver(ingest, alarm(20, level="cut", tag="CH4-7"))
    assert ingest.counters()["alarm_handler_errors"] == 1
    assert ingest.counters()["alarms"] == 1
