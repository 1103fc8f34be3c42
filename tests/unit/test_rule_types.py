"""Rule types beyond thresholds: limits, vibration zones, rate, stuck, spike, drift, compound;
calibration marking, engineer commands, lockout tests and their config validation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from device_drivers import Quality, Sample
from edge.commands import EngineerCommands, overdue, read_records
from edge.config import (
    ConfigError,
    Limit,
    LimitName,
    RateRule,
    SpikeRule,
    StuckRule,
    ZonesRule,
    load_site,
)
from edge.latches import read_commands, submit_command
from edge.rules import (
    Condition,
    DriftCheck,
    MultiLimit,
    RateOfChange,
    SpikeCheck,
    StuckCheck,
    VibrationZones,
)
from tests.safety_rig import Rig, heading_config, heading_site

N, A, C, F = Condition.NORMAL, Condition.ALARM, Condition.CUT, Condition.FAULT


def s(value: float | None, tag: str = "T") -> Sample:
    if value is None:
        return Sample(tag, "d", None, Quality.BAD, 1, "timeout")
    return Sample(tag, "d", value, Quality.GOOD, 1)


def feed(rule: Any, points: list[tuple[float, float | None]]) -> list[Condition]:
    out = []
    for now, value in points:
        rule.update(s(value), now)
        out.append(rule.condition)
    return out


def test_limits_h_hh_l_ll_with_deadband_and_delays() -> None:
    rule = MultiLimit(
        "temp",
        "T",
        (
            Limit(name=LimitName.H, value=40, deadband=2, on_delay_s=2, off_delay_s=1),
            Limit(name=LimitName.HH, value=60, deadband=2),
            Limit(name=LimitName.L, value=5, deadband=1),
            Limit(name=LimitName.LL, value=0),
        ),
    )
    # H needs 2 s over the limit; HH at once; H clears below 38 after 1 s
    assert feed(rule, [(0, 20), (1, 41), (2, 41), (3, 41), (4, 61), (5, 59), (6, 57)]) == [
        N, N, N, A, C, C, A,
    ]  # fmt: skip
    assert rule.reason == "H"
    assert feed(rule, [(7, 39), (8, 37), (8.5, 37), (9.5, 37)]) == [A, A, A, N]
    assert feed(rule, [(10, 4), (11, 5.5), (12, 6.1), (13, -1)]) == [A, A, N, C]
    assert feed(rule, [(14, None)]) == [F]


def test_limits_tick_raises_after_the_on_delay_without_a_new_sample() -> None:
    rule = MultiLimit("p", "T", (Limit(name=LimitName.H, value=10, on_delay_s=2),))
    rule.update(s(11), 0.0)
    assert rule.tick(1.0) is None
    t = rule.tick(2.0)
    assert t is not None and t.level is A


@pytest.mark.parametrize(
    ("group", "foundation", "values", "zones"),
    [
        (2, "rigid", [1.0, 2.0, 3.0, 5.0, 4.4, 2.7], ["A", "B", "C", "D", "C", "B"]),
        (1, "flexible", [3.0, 5.0, 8.0, 11.5], ["A", "B", "C", "D"]),
    ],
)
def test_iso10816_zones(group: int, foundation: str, values: list[float], zones: list[str]) -> None:
    cfg = ZonesRule.model_validate(
        {"type": "zones", "id": "v", "tag": "T", "group": group, "foundation": foundation}
    )
    rule = VibrationZones(cfg)
    seen = []
    for i, v in enumerate(values):
        rule.update(s(v), float(i))
        seen.append(rule.zone())
    assert seen == zones
    assert rule.reason == f"zone_{zones[-1]}"


def test_zone_deadband_holds_zone_c_near_the_boundary() -> None:
    cfg = ZonesRule.model_validate(
        {"type": "zones", "id": "v", "tag": "T", "boundaries": [1.4, 2.8, 4.5], "deadband": 0.2}
    )
    rule = VibrationZones(cfg)
    assert feed(rule, [(0, 2.9), (1, 2.7), (2, 2.59)]) == [A, A, N]


def test_roof_separation_rate_mm_per_day() -> None:
    cfg = RateRule.model_validate(
        {
            "type": "rate", "id": "roof-rate", "tag": "T", "window_s": 86400, "per": "day",
            "alarm_rate": 0.3, "cut_rate": 1.0, "deadband": 0.05,
        }
    )  # fmt: skip
    rule = RateOfChange(cfg)
    hour = 3600.0
    # 0.1 mm/day for a day: normal
    assert feed(rule, [(h * hour, 5 + 0.1 * h / 24) for h in range(25)])[-1] is N
    # then 0.5 mm/day: alarm once the window sees it
    conditions = feed(rule, [(h * hour, 5.1 + 0.5 * (h - 24) / 24) for h in range(25, 60)])
    assert conditions[-1] is A and rule.rate is not None and 0.3 < rule.rate < 0.6
    assert rule.reason == "rate_above_alarm_per_day"


def test_methane_rise_rate_cuts() -> None:
    cfg = RateRule.model_validate(
        {"type": "rate", "id": "r", "tag": "T", "window_s": 60, "per": "min",
         "alarm_rate": 0.2, "cut_rate": 0.5}
    )  # fmt: skip
    rule = RateOfChange(cfg)
    assert feed(rule, [(t, 0.2 + 0.01 * t) for t in range(0, 61, 5)])[-1] is C  # 0.6 %/min


def test_stuck_sensor_is_a_maintenance_alarm_and_marks_quality() -> None:
    rule = StuckCheck(StuckRule(type="stuck", id="st", tag="T", window_s=60, noise=0.005))
    assert feed(rule, [(t, 0.30 + (0.001 if t % 2 else 0)) for t in range(0, 61, 10)])[-1] is A
    assert rule.reason == "stuck" and rule.marks == "stuck"
    assert feed(rule, [(70, 0.35)]) == [N]


def test_spike_then_clears() -> None:
    rule = SpikeCheck(SpikeRule(type="spike", id="sp", tag="T", max_step=0.5, clear_after_s=10))
    assert feed(rule, [(0, 0.3), (1, 1.2), (2, 0.3)]) == [N, A, A]
    assert rule.tick(12.0) is not None and rule.condition is N


def test_drift_against_a_neighbour() -> None:
    rule = DriftCheck("dr", "A", "B", max_diff=0.2, window_s=30)
    rule.update(s(0.3, "A"), 0)
    rule.update(s(0.8, "B"), 0)
    assert rule.condition is N
    rule.update(s(0.3, "A"), 30)
    assert rule.condition is A and rule.reason == "drift"


def _write(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / "site.yaml"
    with path.open("w", encoding="utf-8") as out:
        YAML().dump(doc, out)
    return path


def test_compound_condition_in_yaml_and_engine(tmp_path: Path) -> None:
    doc = heading_config()
    doc["devices"][0]["tags"].append(
        {"name": "CO", "profile": "co", "address": 1, "type": "uint16",
         "location": {"area": "heading 1302", "position": "default"}}
    )  # fmt: skip
    doc["rules"] += [
        {"type": "rate", "id": "co-rise", "tag": "CO", "window_s": 60, "alarm_rate": 5},
        {"type": "rate", "id": "ch4-rise", "tag": "CH4", "window_s": 60, "alarm_rate": 0.1},
        {"type": "compound", "id": "fire-sign", "all": ["co-rise", "ch4-rise"], "level": "cut"},
    ]
    doc["interlocks"].append({"effect": "power", "causes": ["fire-sign"]})
    site = load_site(_write(tmp_path, doc))
    rig = Rig(site, tmp_path / "state.json")
    rig.settle()
    for t in range(0, 61, 5):
        rig.read("CO", 2 + t * 0.2)  # 12 ppm/min
        rig.read("CH4", 0.3)
        rig.read("FAN", 1.0)
        rig.read("FEEDBACK", 1.0)
        rig.advance(5.0)
    assert rig.engine.conditions()["co-rise"] is A
    assert rig.engine.conditions()["fire-sign"] is N  # methane not rising
    for t in range(0, 61, 5):
        rig.read("CO", 14 + t * 0.2)
        rig.read("CH4", 0.3 + t * 0.005)  # 0.3 %/min
        rig.read("FAN", 1.0)
        rig.read("FEEDBACK", 1.0)
        rig.advance(5.0)
    assert rig.engine.conditions()["fire-sign"] is C
    assert rig.power_cut is True
    assert any(e.kind == "compound" and e.reason.startswith("compound:") for e in rig.events)


@pytest.mark.parametrize(
    ("change", "field", "complaint"),
    [
        (lambda d: d["rules"][0].update(fan="NOPE"), "rules.0.fan", "unknown tag 'NOPE'"),
        (
            lambda d: d["interlocks"][0].update(causes=["ghost"]),
            "interlocks.0.causes.0",
            "unknown rule 'ghost'",
        ),
        (
            lambda d: d["rules"].append({"type": "zones", "id": "z", "tag": "CH4"}),
            "rules.2",
            "group",
        ),
        (
            lambda d: d["rules"].append(
                {
                    "type": "limits",
                    "id": "l",
                    "tag": "CH4",
                    "limits": [{"name": "HH", "value": 1.5, "on_delay_s": 3}],
                }
            ),
            "rules.2.limits.0.on_delay_s",
            "never waits",
        ),
        (
            lambda d: d["rules"][1].update(actuator="pump"),
            "rules.1.actuator",
            "unknown actuator",
        ),
    ],
)
def test_rule_config_errors_name_the_field(
    tmp_path: Path, change: Any, field: str, complaint: str
) -> None:
    doc = heading_config()
    change(doc)
    with pytest.raises(ConfigError) as err:
        load_site(_write(tmp_path, doc))
    issue = next(i for i in err.value.issues if i.field.startswith(field))
    assert complaint in issue.message and issue.line is not None


def test_calibration_marks_readings_and_alarms_but_cuts_still_happen(tmp_path: Path) -> None:
    rig = Rig(heading_site(), tmp_path / "state.json")
    rig.settle()
    commands = EngineerCommands(rig.site, rig.engine, tmp_path / "state.json")
    submit_command(tmp_path / "state.json", {"action": "calibrate", "tag": "CH4", "minutes": 5})
    for path, command in read_commands(tmp_path / "state.json"):
        assert commands.execute(command, path.name)
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    rig.engine.uplink = queue
    rig.poll(2.0)  # test gas over the cut limit
    assert rig.power_cut is True
    cut = next(e for e in rig.events if e.tag == "CH4")
    assert cut.reason == "calibration:above_cut" and "calibration" in cut.message
    marked = queue.get_nowait()
    assert marked.quality is Quality.UNCERTAIN and marked.reason == "calibration"
    assert commands.execute({"action": "end_calibration", "tag": "CH4"})
    assert not rig.engine.calibrations
    assert not commands.execute({"action": "calibrate", "tag": "NOPE"})
    assert not commands.execute(None, "garbage.json")
    assert not commands.execute({"action": "format_disk"})


def test_lockout_test_recorded_and_overdue_reported(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    rig = Rig(heading_site(), state)
    rig.settle()
    commands = EngineerCommands(rig.site, rig.engine, state)
    late = commands.report_overdue()
    assert set(late) == {"fan-lockout", "CH4"} and all(v is None for v in late.values())
    assert {e.reason for e in rig.events} == {"lockout_test_overdue"}
    assert commands.execute({"action": "lockout_test", "rule": "fan-lockout", "by": "wang"})
    assert rig.power_cut is True  # tripped on purpose
    (cmd,) = rig.lock.take_commands("net", rig.now)
    rig.lock.write_succeeded(cmd, rig.now)  # the coil write, as the poller would do it
    rig.read("FEEDBACK", 0.0)  # the breaker opened
    commands.tick()
    (record,) = read_records(state)
    assert record.rule == "fan-lockout" and record.by == "wang" and record.ok
    assert record.cut_observed and record.feedback_observed is True
    assert rig.power_cut is False  # the rule decides again: fan running, methane low
    assert set(overdue(rig.site, read_records(state), time.time_ns())) == {"CH4"}
    assert not commands.execute({"action": "lockout_test", "rule": "power-feedback"})
