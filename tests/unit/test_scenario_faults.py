"""Fault injection in scenario files: validation and the player switching faults on and off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import ConfigError, LoadedSite, load_site
from simulators import Scenario, ScenarioPlayer, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "firmware_configs" / "sites" / "demo-mine.yaml"


class RecordingSim:
    """A scenario target that records what the player asks of it (a fake at the seam)."""

    def __init__(self, site: LoadedSite) -> None:
        self.site = site
        self.values: dict[str, list[float]] = {}
        self.calls: list[tuple[str, Any, Any]] = []
        self.held: set[str] = set()

    def tags(self) -> list[str]:
        return [t.name for _, t in self.site.tags()]

    def set_value(self, tag: str, value: float) -> None:
        if tag not in self.held:
            self.values.setdefault(tag, []).append(value)

    def hold(self, tag: str, held: bool) -> None:
        self.calls.append(("hold", tag, held))
        (self.held.add if held else self.held.discard)(tag)

    async def set_dead(self, device: str, dead: bool) -> None:
        self.calls.append(("dead", device, dead))

    def set_slow(self, device: str, delay_s: float) -> None:
        self.calls.append(("slow", device, delay_s))

    def set_garbled(self, bus: str, every: int) -> None:
        self.calls.append(("garbled", bus, every))

    def set_cable(self, bus: str, plugged: bool) -> None:
        self.calls.append(("cable", bus, plugged))

    async def restart_opcua(self, bus: str, down_s: float) -> None:
        self.calls.append(("restart", bus, down_s))


async def test_player_switches_faults_on_and_off_in_order() -> None:
    site = load_site(SITE)
    scenario = Scenario.model_validate(
        {
            "name": "faults",
            "duration_s": 1.0,
            "tags": {"CH4_1201_T1": [[0, 0.5]]},
            "faults": [
                {"kind": "dead", "device": "env-1201", "at_s": 0.1, "until_s": 0.4},
                {"kind": "slow", "device": "ch4-1201-t2", "at_s": 0.2, "delay_s": 0.3},
                {"kind": "stuck", "tag": "CO_1201", "at_s": 0.0, "until_s": 0.5},
                {"kind": "drift", "tag": "CH4_1201_T1", "at_s": 0.5, "rate_per_s": 1.0},
                {"kind": "spike", "tag": "O2_1201", "at_s": 0.3, "until_s": 0.5, "magnitude": -5},
            ],
        }
    )
    sim = RecordingSim(site)
    player = ScenarioPlayer(sim, scenario, speed=4.0, tick_s=0.01)
    await player.run()
    assert ("dead", "env-1201", True) in sim.calls
    assert ("dead", "env-1201", False) in sim.calls
    assert sim.calls.index(("dead", "env-1201", True)) < sim.calls.index(
        ("dead", "env-1201", False)
    )
    assert ("slow", "ch4-1201-t2", 0.3) in sim.calls
    assert ("hold", "CO_1201", True) in sim.calls and ("hold", "CO_1201", False) in sim.calls
    ch4 = sim.values["CH4_1201_T1"]
    assert ch4[0] == pytest.approx(0.5) and max(ch4) > 0.8  # drifted up after 0.5 s
    assert min(sim.values["O2_1201"]) == pytest.approx(20.9 - 5)  # the spike


def test_fault_needs_its_target(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nduration_s: 10\nfaults:\n  - {kind: cable_pulled, at_s: 1}\n"
        "  - {kind: dead, device: x, at_s: 5, until_s: 2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert "needs a 'bus'" in text and "until_s 2.0 must be after at_s 5.0" in text
    assert "bad.yaml:4" in text
