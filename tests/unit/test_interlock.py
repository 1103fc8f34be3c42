"""Interlock: desired actuator states from tag levels, coalesced commands, retries."""

from __future__ import annotations

from typing import Any

import wire
from device_drivers import Quality, Sample
from edge.actuation import ActuatorCommand, Interlock
from edge.alarms import AlarmManager
from edge.config import PACKAGED_PROFILES, LoadedSite, SiteConfig, load_profiles
from edge.engine import SafetyEngine
from edge.rules import Level

PROFILES = load_profiles(PACKAGED_PROFILES)


def make_site(*, breaker_active_value: bool = True) -> LoadedSite:
    def tag(name: str, profile: str, address: int, position: str, actuators: list[str]) -> Any:
        return {
            "name": name,
            "profile": profile,
            "address": address,
            "location": {"area": "1201 face", "position": position},
            "actuators": actuators,
        }

    raw = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [
            {"id": "net-a", "type": "modbus_tcp", "host": "127.0.0.1"},
            {"id": "net-b", "type": "modbus_tcp", "host": "127.0.0.2"},
        ],
        "devices": [
            {
                "id": "gas",
                "bus": "net-a",
                "unit_id": 1,
                "tags": [
                    tag("CH4_T1", "ch4", 0, "face", ["power"]),
                    tag("CH4_T2", "ch4", 2, "return", ["power"]),
                    tag("O2", "o2", 4, "face", ["horn"]),
                ],
            },
            {"id": "breaker", "bus": "net-a", "unit_id": 10},
            {"id": "siren", "bus": "net-b", "unit_id": 11},
        ],
        "actuators": [
            {
                "id": "power",
                "kind": "power_cut",
                "device": "breaker",
                "coil": 3,
                "active_value": breaker_active_value,
            },
            {"id": "horn", "kind": "horn", "device": "siren", "coil": 0},
        ],
    }
    config = SiteConfig.model_validate(raw)
    return LoadedSite(source="test", config=config, profiles=PROFILES)


def test_undecided_until_every_tag_is_known_then_inactive() -> None:
    lock = Interlock(make_site())
    assert lock.observe("CH4_T1", False) == []
    assert lock.desired("power") is None
    assert lock.take_commands("net-a", 0.0) == []  # never released blindly
    assert lock.observe("CH4_T2", False) == ["power"]
    assert lock.desired("power") is False


def test_any_tag_trips_and_restore_needs_all_clear() -> None:
    lock = Interlock(make_site())
    assert lock.observe("CH4_T1", True) == ["power"]  # one tag is enough, even if others unknown
    assert lock.desired("power") is True
    assert lock.observe("CH4_T2", True) == []
    assert lock.observe("CH4_T1", False) == []
    assert lock.desired("power") is True  # T2 still trips
    assert lock.observe("CH4_T2", False) == ["power"]
    assert lock.desired("power") is False


def test_commands_carry_coil_value_and_go_to_the_owning_bus() -> None:
    lock = Interlock(make_site(breaker_active_value=False))
    lock.observe("CH4_T1", True)
    lock.observe("O2", True)
    assert lock.take_commands("net-b", 0.0) == [
        ActuatorCommand("horn", "net-b", "siren", 11, 0, active=True, coil_value=True)
    ]
    assert lock.take_commands("net-a", 0.0) == [
        ActuatorCommand("power", "net-a", "breaker", 10, 3, active=True, coil_value=False)
    ]


def test_latest_desired_state_wins_and_in_flight_is_not_reissued() -> None:
    lock = Interlock(make_site())
    lock.observe("CH4_T2", False)
    lock.observe("CH4_T1", True)
    lock.observe("CH4_T1", False)
    lock.observe("CH4_T1", True)
    (cmd,) = lock.take_commands("net-a", 0.0)
    assert cmd.active is True
    assert lock.take_commands("net-a", 0.0) == []  # in flight
    lock.observe("CH4_T1", False)  # changes while the write is on the wire
    lock.write_succeeded(cmd, 0.1)
    assert lock.written("power") is True
    (release,) = lock.take_commands("net-a", 0.2)
    assert release.active is False
    lock.write_succeeded(release, 0.3)
    assert lock.take_commands("net-a", 100.0) == []  # inactive is not re-asserted


def test_active_actuator_is_reasserted_periodically() -> None:
    lock = Interlock(make_site(), reassert_s=5.0)
    lock.observe("CH4_T1", True)
    (cmd,) = lock.take_commands("net-a", 10.0)
    lock.write_succeeded(cmd, 10.0)
    last = lock.last_write("power")
    assert last is not None and last.ok and last.active and last.at == 10.0
    assert lock.take_commands("net-a", 14.9) == []
    assert lock.next_due("net-a", 14.9) == 15.0
    (again,) = lock.take_commands("net-a", 15.0)
    assert again.active is True


def test_failed_write_is_retried_and_reported_once_per_streak() -> None:
    failures: list[tuple[str, str]] = []
    recovered: list[str] = []
    lock = Interlock(
        make_site(),
        retry_s=1.0,
        on_write_failed=lambda c, e: failures.append((c.actuator, e)),
        on_write_recovered=lambda c: recovered.append(c.actuator),
    )
    lock.observe("CH4_T1", True)
    (cmd,) = lock.take_commands("net-a", 0.0)
    lock.write_failed(cmd, "timeout", 0.0)
    assert lock.take_commands("net-a", 0.5) == []  # not before retry_s
    (retry,) = lock.take_commands("net-a", 1.0)
    lock.write_failed(retry, "timeout", 1.0)
    assert failures == [("power", "timeout")]
    assert lock.writes_failed == 2
    (retry,) = lock.take_commands("net-a", 2.0)
    lock.write_succeeded(retry, 2.0)
    assert recovered == ["power"] and lock.written("power") is True


def test_wake_event_set_for_the_owning_bus_only() -> None:
    lock = Interlock(make_site())
    lock.observe("CH4_T1", True)
    assert lock.wake_event("net-a").is_set()
    assert not lock.wake_event("net-b").is_set()


def _engine(now: list[float] | None = None) -> tuple[SafetyEngine, list[wire.AlarmEvent]]:
    site = make_site()
    events: list[wire.AlarmEvent] = []
    lock = Interlock(site)
    clock = now if now is not None else [0.0]
    engine = SafetyEngine(site, lock, AlarmManager(site, events.append), clock=lambda: clock[0])
    return engine, events


def _settled(engine: SafetyEngine, now: list[float], events: list[wire.AlarmEvent]) -> None:
    """Both methane tags read 0.3 for longer than the restore hold (no saved state)."""
    for _ in range(3):
        engine.handle(sample("CH4_T1", 0.3))
        engine.handle(sample("CH4_T2", 0.3))
        now[0] += 2.0  # the default hold: 4 poll periods of 1 s
    assert engine.interlock.desired("power") is False
    events.clear()


def sample(tag: str, value: float | None, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(tag, "gas", value, quality, 123, None if value is not None else "timeout")


def test_engine_fault_with_fail_safe_cuts_and_raises_alarm() -> None:
    now = [0.0]
    engine, events = _engine(now)
    _settled(engine, now, events)
    engine.handle(sample("CH4_T2", None, Quality.BAD))
    assert engine.levels()["CH4_T2"] is Level.FAULT
    assert engine.interlock.desired("power") is True
    (event,) = events
    assert (event.tag, event.level, event.previous, event.actuators) == (
        "CH4_T2",
        "fault",
        "normal",
        ["power"],
    )
    assert "sensor fault" in event.message and "fail-safe" in event.message
    assert engine.alarms.level("CH4_T2") is Level.FAULT
    # good again but still >= restore: cut holds (no release)
    engine.handle(sample("CH4_T2", 1.0))
    assert engine.levels()["CH4_T2"] is Level.CUT
    assert engine.interlock.desired("power") is True
    engine.handle(sample("CH4_T2", 0.5))
    assert engine.interlock.desired("power") is True  # below restore: the hold starts
    now[0] += 4.0  # the default hold: 4 poll periods of 1 s
    engine.handle(sample("CH4_T2", 0.5))
    assert engine.interlock.desired("power") is False
    assert events[-1].level == "normal" and events[-1].actuators == ["power"]


def test_engine_o2_fault_does_not_sound_horn_but_o2_cut_does() -> None:
    engine, events = _engine()
    engine.handle(sample("O2", None, Quality.BAD))
    assert engine.interlock.desired("horn") is False
    engine.handle(sample("O2", 17.0))
    assert engine.interlock.desired("horn") is True
    assert events[-1].level == "cut" and events[-1].threshold == 18.0


def test_engine_stale_faults_and_cuts() -> None:
    site = make_site()
    now = [0.0]
    lock = Interlock(site)
    engine = SafetyEngine(site, lock, AlarmManager(site, lambda e: None), clock=lambda: now[0])
    _settled(engine, now, [])
    engine.handle(sample("O2", 20.9))
    now[0] += 10.0  # stale_after defaults to 3 x poll (1 s)
    stale = engine.check_stale()
    assert {t.tag for t in stale} == {"CH4_T1", "CH4_T2", "O2"}
    assert lock.desired("power") is True
    assert lock.desired("horn") is False


def test_failed_write_becomes_an_alarm_event_naming_the_actuator() -> None:
    site = make_site()
    events: list[wire.AlarmEvent] = []
    alarms = AlarmManager(site, events.append)
    lock = Interlock(
        site,
        on_write_failed=lambda c, e: alarms.on_actuator_failed(c, e, 42),
        on_write_recovered=lambda c: alarms.on_actuator_recovered(c, 43),
    )
    lock.observe("CH4_T1", True)
    (cmd,) = lock.take_commands("net-a", 0.0)
    lock.write_failed(cmd, "timeout: no answer", 0.0)
    (event,) = events
    assert (event.tag, event.device, event.kind, event.level) == (
        "power",
        "breaker",
        "actuator",
        "alarm",
    )
    assert "actuator_write_failed" in event.message and "timeout" in event.message
    assert event.area == "1201 face" and event.ts_ns == 42
    (retry,) = lock.take_commands("net-a", 5.0)
    lock.write_succeeded(retry, 5.0)
    assert [e.level for e in events] == ["alarm", "normal"]
