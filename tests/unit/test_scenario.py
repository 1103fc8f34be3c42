"""Scenarios: interpolation, validation with file:line, and playback into a simulator.

The simulator here is never started: its datastore is plain memory, so
playback is tested without sockets.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from edge.config import ConfigError, LoadedSite, load_model, load_site
from simulators import Scenario, ScenarioPlayer, SiteSimulator, load_scenario
from tests.support import async_wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO_SITE = ROOT / "firmware_configs" / "sites" / "demo-mine.yaml"
METHANE = ROOT / "firmware_configs" / "scenarios" / "methane-face.yaml"


@pytest.fixture(scope="module")
def site() -> LoadedSite:
    return load_site(DEMO_SITE)


def _scenario(**tags: list[tuple[float, float]]) -> Scenario:
    return Scenario(name="t", duration_s=10, tags=tags)


# -- interpolation ------------------------------------------------------------------


def test_value_at_interpolates_linearly() -> None:
    s = _scenario(A=[(0, 0.0), (4, 2.0), (6, 1.0)])
    assert s.value_at("A", 0) == 0.0
    assert s.value_at("A", 1) == pytest.approx(0.5)
    assert s.value_at("A", 4) == 2.0
    assert s.value_at("A", 5) == pytest.approx(1.5)
    assert s.value_at("A", 5.5) == pytest.approx(1.25)


def test_value_at_holds_last_value_after_the_end_and_first_before_start() -> None:
    s = _scenario(A=[(0, 0.4), (2, 1.0)])
    assert s.value_at("A", 2) == 1.0
    assert s.value_at("A", 9.9) == 1.0
    assert s.value_at("A", 1e9) == 1.0
    assert s.value_at("A", -1) == 0.4


def test_value_at_single_point_is_constant() -> None:
    s = _scenario(A=[(0, 3.0)])
    assert [s.value_at("A", t) for t in (0, 5, 10)] == [3.0, 3.0, 3.0]


def test_value_at_unknown_tag_is_none() -> None:
    assert _scenario(A=[(0, 1.0)]).value_at("B", 1) is None


def test_packaged_methane_scenario(site: LoadedSite) -> None:
    s = load_scenario(METHANE, site)
    assert s.name == "methane-face-rise"
    assert s.duration_s == 40
    assert s.value_at("CH4_1201_T1", 11) == pytest.approx(1.3)  # between (8,1.0) and (14,1.6)
    assert s.value_at("CH4_1201_T1", 20) == pytest.approx(1.6)
    assert s.value_at("CH4_1201_T2", 7) == pytest.approx(0.45)
    assert s.value_at("CO_1201", 7) is None


# -- validation: every error names file, line and field ------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _issues(path: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_model(path, Scenario)
    assert all(i.file == str(path) for i in info.value.issues)
    return [(i.line, i.field, i.message) for i in info.value.issues]


def test_times_must_start_at_zero(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "name: x\nduration_s: 10\ntags:\n  A:\n    - [1, 0.4]\n    - [2, 0.5]\n"
    )
    [(line, field, message)] = _issues(path)
    assert (line, field) == (5, "tags.A.0.0")
    assert "t=0" in message


def test_times_must_strictly_increase(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\n"
        "duration_s: 10\n"
        "tags:\n"
        "  A:\n"
        "    - [0, 0.4]\n"
        "    - [3, 0.5]\n"
        "    - [3, 0.6]\n"  # line 7: equal time
        "  B:\n"
        "    - [0, 1]\n"
        "    - [5, 1]\n"
        "    - [4, 1]\n",  # line 11: goes back
    )
    issues = _issues(path)
    assert [(line, field) for line, field, _ in issues] == [(7, "tags.A.2.0"), (11, "tags.B.2.0")]
    assert all("strictly increasing" in m for _, _, m in issues)


def test_times_must_be_within_duration(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nduration_s: 10\ntags:\n  A:\n    - [0, 0.4]\n    - [12, 1]\n")
    [(line, field, message)] = _issues(path)
    assert (line, field) == (6, "tags.A.1.0")
    assert "duration_s 10" in message


def test_point_shape_and_types_are_checked(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "name: x\nduration_s: 10\ntags:\n  A:\n    - [0, 0.4]\n    - [2, high]\n"
    )
    [(line, field, _)] = _issues(path)
    assert (line, field) == (6, "tags.A.1.1")


def test_empty_path_and_bad_duration(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nduration_s: 0\ntags:\n  A: []\n")
    issues = _issues(path)
    assert [(line, field) for line, field, _ in issues] == [(2, "duration_s")]
    path = _write(tmp_path, "name: x\nduration_s: 5\ntags:\n  A: []\n")
    [(line, field, message)] = _issues(path)
    assert (line, field) == (4, "tags.A")
    assert "at least one" in message


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nduration_s: 5\nspeed: 2\ntags: {}\n")
    [(line, field, _)] = _issues(path)
    assert (line, field) == (3, "speed")


def test_unknown_site_tag_names_its_line(tmp_path: Path, site: LoadedSite) -> None:
    path = _write(
        tmp_path,
        "name: x\nduration_s: 5\ntags:\n  CH4_1201_T1: [[0, 1]]\n  CH4_9999: [[0, 1]]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(path, site)
    [issue] = info.value.issues
    assert (issue.file, issue.line, issue.field) == (str(path), 5, "tags.CH4_9999")
    assert "unknown tag 'CH4_9999'" in issue.message
    assert load_scenario(path).tags.keys() == {"CH4_1201_T1", "CH4_9999"}  # no site: no check


LONGWALL = ROOT / "firmware_configs" / "sites" / "longwall-panel.yaml"
HEADING = ROOT / "firmware_configs" / "sites" / "heading-face.yaml"


def _site_issues(path: Path, site: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path, load_site(site))
    assert all(i.file == str(path) for i in info.value.issues)
    return [(i.line, i.field, i.message) for i in info.value.issues]


def test_a_scenario_written_for_another_site_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nsite: tank-farm-t100\nduration_s: 5\n")
    assert _site_issues(path, LONGWALL) == [
        (2, "site", "scenario is for site 'tank-farm-t100', not 'longwall-1302'")
    ]


def test_faults_name_devices_buses_and_tags_the_site_has(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\n"
        "duration_s: 5\n"
        "faults:\n"
        "  - {kind: slow, device: face-t9, at_s: 0}\n"  # line 4
        "  - kind: garbled\n"
        "    at_s: 1\n"
        "    bus: no-such-bus\n"  # line 7
        "  - {kind: stuck, tag: CH4_9999, at_s: 0}\n",  # line 8
    )
    issues = _site_issues(path, LONGWALL)
    assert [(line, field) for line, field, _ in issues] == [
        (4, "faults.0.device"),
        (7, "faults.1.bus"),
        (8, "faults.2.tag"),
    ]
    assert issues[0][2].startswith("fault 'slow': unknown device 'face-t9' in site")
    assert "known: face-t1, intake-env, panel-breaker" in issues[0][2]
    assert issues[1][2].startswith("fault 'garbled': unknown bus 'no-such-bus'")
    assert issues[2][2].startswith("fault 'stuck': unknown tag 'CH4_9999'")


def test_a_bus_fault_must_fit_the_bus_protocol(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\n"
        "duration_s: 5\n"
        "faults:\n"
        "  - {kind: opcua_restart, bus: shearer, at_s: 0}\n"
        "  - {kind: cable_pulled, bus: panel-plc, at_s: 0}\n"
        "  - {kind: garbled, bus: face-net, at_s: 0}\n"
        # fit: CRC-bad RTU frames, garbled serial lines, an OPC UA restart, a pulled cable
        "  - {kind: garbled, bus: old-panel, at_s: 0}\n"
        "  - {kind: garbled, bus: shearer, at_s: 0}\n"
        "  - {kind: opcua_restart, bus: panel-plc, at_s: 0}\n"
        "  - {kind: cable_pulled, bus: shearer, at_s: 0}\n",
    )
    assert _site_issues(path, LONGWALL) == [
        (4, "faults.0.bus", "fault 'opcua_restart' acts on a bus of type opcua; bus 'shearer' "
         "is serial"),
        (5, "faults.1.bus", "fault 'cable_pulled' acts on a bus of type serial; bus "
         "'panel-plc' is opcua"),
        (6, "faults.2.bus", "fault 'garbled' acts on a bus of type serial or modbus_rtu or "
         "modbus_rtu_over_tcp; bus 'face-net' is modbus_tcp"),
    ]  # fmt: skip
    rtu = _write(
        tmp_path, "name: x\nduration_s: 5\nfaults: [{kind: garbled, bus: heading-rtu, at_s: 0}]\n"
    )
    assert load_scenario(rtu, load_site(HEADING)).faults[0].bus == "heading-rtu"


def test_a_fault_without_its_target_or_ending_before_it_starts(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: x\nduration_s: 5\nfaults:\n"
        "  - {kind: cable_pulled, at_s: 0}\n"
        "  - {kind: dead, device: face-t1, at_s: 3, until_s: 2}\n"
        "  - {kind: meltdown, device: face-t1, at_s: 0}\n",
    )
    issues = _issues(path)
    assert [(line, field) for line, field, _ in issues] == [
        (4, "faults.0"),
        (5, "faults.1"),
        (6, "faults.2.kind"),
    ]
    assert "fault 'cable_pulled' needs a 'bus'" in issues[0][2]
    assert "until_s 2.0 must be after at_s 3.0" in issues[1][2]
    assert "meltdown" in issues[2][2] or "'dead'" in issues[2][2]


# -- playback ------------------------------------------------------------------------


def test_player_refuses_tags_not_in_the_site(site: LoadedSite) -> None:
    with pytest.raises(ValueError, match="NOPE"):
        ScenarioPlayer(SiteSimulator(site), _scenario(NOPE=[(0, 1.0)]))
    with pytest.raises(ValueError, match="speed"):
        ScenarioPlayer(SiteSimulator(site), _scenario(), speed=0)


async def test_player_plays_the_scenario_and_holds_nominal_elsewhere(site: LoadedSite) -> None:
    sim = SiteSimulator(site)
    scenario = load_scenario(METHANE, site)
    sim.set_value("CO_1201", 50.0)  # the player must put untouched tags back to nominal
    player = ScenarioPlayer(sim, scenario, speed=40.0, tick_s=0.005)  # 40 s in 1 s
    await asyncio.wait_for(player.run(), timeout=10)

    assert player.scenario_time == 40
    assert sim.value("CH4_1201_T1") == pytest.approx(0.4)
    assert sim.value("CH4_1201_T2") == pytest.approx(0.3)
    assert sim.value("CO_1201") == pytest.approx(site.profiles["co"].nominal)
    assert sim.value("O2_1201") == pytest.approx(site.profiles["o2"].nominal)

    t1 = [(t, v) for t, tag, v in sim.value_log if tag == "CH4_1201_T1"]
    assert [t for t, _ in t1] == sorted(t for t, _ in t1)
    assert t1[0][1] == pytest.approx(0.4, abs=0.01)
    assert max(v for _, v in t1) == pytest.approx(1.6)  # the plateau 14..24 s is always hit
    assert all(0.4 <= v <= 1.6 for _, v in t1)
    # each logged value lies on the scenario's path at some time
    path = [scenario.value_at("CH4_1201_T1", s / 10) for s in range(401)]
    assert all(any(p is not None and abs(p - v) < 0.02 for p in path) for _, v in t1)


async def test_player_loops_until_cancelled(site: LoadedSite) -> None:
    sim = SiteSimulator(site)
    scenario = _scenario(CH4_1201_T1=[(0, 0.2), (10, 1.2)])  # a saw tooth
    player = ScenarioPlayer(sim, scenario, speed=500.0, tick_s=0.002, loop=True)
    task = asyncio.create_task(player.run(), name="player")
    try:
        await async_wait_until(lambda: player.rounds >= 3, 10, "three rounds")
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    values = [v for _, tag, v in sim.value_log if tag == "CH4_1201_T1"]
    # the ramp restarted from its bottom at least twice
    drops = sum(1 for a, b in itertools.pairwise(values) if b < a - 0.5)
    assert drops >= 2
