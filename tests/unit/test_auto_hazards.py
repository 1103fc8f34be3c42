"""Automatic hazards from edge alarm events handed over by the ingest, de-duplicated."""

from __future__ import annotations

import json
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
from tests.safety_rig import Rig, heading_site
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


def _sequenced(events: list[wire.AlarmEvent], first_seq: int) -> list[wire.AlarmEvent]:
    """The rig's events as the gateway's durable buffer sends them (seq assigned there)."""
    fields = wire.AlarmEvent.__struct_fields__
    return [
        wire.AlarmEvent(**{**{f: getattr(e, f) for f in fields}, "seq": first_seq + i})
        for i, e in enumerate(events)
    ]


async def test_a_methane_alarm_that_goes_on_to_a_cut_makes_its_hazard_major(
    setup: tuple[IngestService, HazardService, AutoHazards], tmp_path: Path
) -> None:
    """Real edge events (the gateway's engine on a heading site) through the real ingest:
    the alarm opens a general hazard, the cut a moment later raises that same hazard to
    major (audited), and the fall back to alarm never lowers it again."""
    ingest, hazards, auto = setup
    rig = Rig(heading_site(), tmp_path / "state.json")
    rig.settle()
    rig.poll(1.2)  # over the alarm limit (1.0), under the cut (1.5)
    sent = len(rig.events)
    assert [e.level for e in rig.events if e.kind == "ch4"] == ["alarm"]
    await _deliver(ingest, *_sequenced(rig.events, 1))
    (opened,) = hazards.find(HazardFilter(kind="methane"))[0]
    assert opened.grade == "general" and "alarm limit" in opened.title

    rig.poll(1.7)  # over the cut limit: the gateway cuts power
    rig.poll(1.2)  # falling, still over the alarm limit
    assert next(e.level for e in rig.events[sent:] if e.kind == "ch4") == "cut"
    await _deliver(ingest, *_sequenced(rig.events[sent:], 1 + sent))
    found, total = hazards.find(HazardFilter(kind="methane"))
    assert total == 1, "the cut is the same hazard, not a second one"
    raised = found[0]
    assert (raised.id, raised.grade) == (opened.id, "major")
    assert "cut limit" in raised.title and auto.failures == 0
    details = [
        json.loads(e.details)
        for e in hazards.audit.entries(limit=50)
        if e.target == f"hazard:{opened.id}"
    ]
    regrades = [d for d in details if d["event"] == "regrade"]
    assert len(regrades) == 1 and regrades[0]["changed"]["grade"] == ["general", "major"]
    assert hazards.audit.verify().ok


async def test_power_not_cut_after_a_cut_command_is_a_major_hazard(
    setup: tuple[IngestService, HazardService, AutoHazards], tmp_path: Path
) -> None:
    """The fan stops, the gateway commands the cut, the breaker's feedback still reads
    energised: the real feedback rule's ``feedback_missing`` opens a major hazard."""
    ingest, hazards, _ = setup
    rig = Rig(heading_site(), tmp_path / "state.json")
    rig.settle()
    for _ in range(10):
        rig.poll(0.3, fan=0.0, feedback=1.0)  # cut commanded, the breaker does not open
    assert rig.power_cut
    assert any(e.reason == "feedback_missing" for e in rig.events)
    await _deliver(ingest, *_sequenced(rig.events, 1))
    found, total = hazards.find(HazardFilter(kind="feedback"))
    assert total == 1 and found[0].grade == "major" and found[0].area == "heading 1302"
    assert "Power not cut" in found[0].title


def test_every_way_power_stays_on_under_a_cut_is_classified_major() -> None:
    def event(**kw: object) -> wire.AlarmEvent:
        base = alarm(1)
        return wire.AlarmEvent(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **kw})

    for reason in ("feedback_missing", "energised_during_cut", "feedback_fault"):
        found = classify(event(kind="feedback", level="alarm", reason=reason))
        assert found is not None and found[:2] == ("feedback", "major"), reason
        assert classify(event(kind="feedback", level="normal", reason=reason)) is None
    write = classify(event(kind="actuator", level="alarm", reason="actuator_write_failed"))
    assert write is not None and write[:2] == ("actuator", "major")
    assert (
        classify(event(kind="actuator", level="normal", reason="actuator_write_recovered")) is None
    )
    # a feedback that confirms, or power off without a command, is not a hazard
    assert classify(event(kind="feedback", level="normal", reason="feedback_confirmed")) is None


async def test_a_repeat_never_lowers_a_grade_and_a_closed_hazard_is_not_raised(
    setup: tuple[IngestService, HazardService, AutoHazards],
) -> None:
    ingest, hazards, _ = setup
    await _deliver(
        ingest, alarm(30, level="cut", tag="CH4-9"), alarm(31, level="alarm", tag="CH4-9")
    )
    (major,) = hazards.find(HazardFilter(kind="methane"))[0]
    assert major.grade == "major"
    overdue = alarm(32, kind="notice", level="alarm", tag="LK-2", reason="lockout_test_overdue")
    failed = alarm(33, kind="notice", level="alarm", tag="LK-2", reason="lockout_test_failed")
    await _deliver(ingest, overdue, failed)
    (lockout,) = hazards.find(HazardFilter(kind="lockout_test"))[0]
    assert lockout.grade == "major"  # overdue (general), then failed (major): raised
