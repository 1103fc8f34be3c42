"""A heading (掘进工作面) site and a pure safety rig for rule tests: the engine, the interlock
matrix and a latch store on disk, driven by a fake clock. A "restart" builds a new engine on
the same state file, as a SIGKILL'd or SIGTERM'd gateway would find it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import wire
from device_drivers import Quality, Sample
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import PACKAGED_PROFILES, LoadedSite, SiteConfig, load_profiles
from edge.engine import SafetyEngine
from edge.latches import LatchStore

PROFILES = load_profiles(PACKAGED_PROFILES)
POLL_S = 1.0  # every device polls at 1 s: the default restore hold is 4 s, staleness 3 s
HOLD_S = 4 * POLL_S
STALE_S = 3 * POLL_S
METHANE_CLASSES = (
    "face",
    "return",
    "intake_outburst",
    "heading_face",
    "heading_return",
    "machine",
    "main_return",
)


def heading_config(position: str = "heading_face", profile: str = "ch4") -> dict[str, Any]:
    """One methane sensor at ``position``, the heading's auxiliary fan and the breaker's
    feedback input; the methane rule and the fan lockout both cut ``power``."""

    def tag(name: str, prof: str, address: int, pos: str, actuators: list[str]) -> Any:
        return {
            "name": name,
            "profile": prof,
            "address": address,
            "type": "uint16",
            "location": {"area": "heading 1302", "position": pos},
            "actuators": actuators,
        }

    guarded = [] if PROFILES[profile].thresholds[position].restore is None else ["CH4"]
    return {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            {
                "id": "gas",
                "bus": "net",
                "unit_id": 1,
                "poll_ms": int(POLL_S * 1000),
                "tags": [tag("CH4", profile, 0, position, ["power"])],
            },
            {
                "id": "fan",
                "bus": "net",
                "unit_id": 2,
                "poll_ms": int(POLL_S * 1000),
                "tags": [tag("FAN", "fan_state", 0, "default", [])],
            },
            {
                "id": "fb",
                "bus": "net",
                "unit_id": 3,
                "poll_ms": int(POLL_S * 1000),
                "tags": [tag("FEEDBACK", "breaker_feedback", 0, "default", [])],
            },
            {"id": "breaker", "bus": "net", "unit_id": 10},
        ],
        "actuators": [{"id": "power", "kind": "power_cut", "device": "breaker", "coil": 0}],
        "rules": [
            {"type": "fan_lockout", "id": "fan-lockout", "fan": "FAN", "methane": guarded},
            {"type": "feedback", "id": "power-feedback", "actuator": "power", "tag": "FEEDBACK"},
        ],
        "interlocks": [{"effect": "power", "causes": ["fan-lockout"]}],
    }


def heading_site(position: str = "heading_face", profile: str = "ch4") -> LoadedSite:
    config = SiteConfig.model_validate(heading_config(position, profile))
    return LoadedSite(source="test", config=config, profiles=PROFILES)


class Rig:
    """Engine + interlock + latch store on a fake clock."""

    def __init__(self, site: LoadedSite, state: Path, now: float = 0.0) -> None:
        self.site = site
        self.now = now
        self.events: list[wire.AlarmEvent] = []
        self.lock = Interlock(site, clock=lambda: self.now)
        self.latches = LatchStore(state)
        self.engine = SafetyEngine(
            site,
            self.lock,
            AlarmManager(site, self.events.append),
            clock=lambda: self.now,
            latches=self.latches,
        )

    def restart(self) -> Rig:
        self.latches.close()
        return Rig(self.site, self.latches.path, self.now)

    def read(self, tag: str, value: float | None, quality: Quality = Quality.GOOD) -> None:
        device = self.site.tag(tag)[0].id
        reason = "timeout" if value is None or quality is Quality.BAD else None
        if value is None:
            quality = Quality.BAD
        self.engine.handle(Sample(tag, device, value, quality, 1, reason))

    def poll(
        self, ch4: float | None, *, fan: float | None = 1.0, feedback: float | None = None
    ) -> None:
        """One poll cycle of every device, then one poll period passes (with ticks).

        The feedback input follows the breaker (de-energised while cut) unless given."""
        self.read("CH4", ch4)
        self.read("FAN", fan)
        if feedback is None:
            feedback = 0.0 if self.power_cut else 1.0
        self.read("FEEDBACK", feedback)
        self.advance(POLL_S)

    def advance(self, seconds: float) -> None:
        steps = max(1, round(seconds / 0.25))
        for _ in range(steps):
            self.now += seconds / steps
            self.engine.tick(self.now)

    @property
    def power_cut(self) -> bool | None:
        return self.lock.desired("power")

    def reasons(self, rule: str) -> list[str]:
        return [e.reason for e in self.events if self._rule_of(e) == rule]

    def _rule_of(self, event: wire.AlarmEvent) -> str:
        if event.kind == "lockout":
            return "fan-lockout"
        if event.kind == "feedback":
            return "power-feedback"
        return event.tag

    def settle(self, ch4: float = 0.3) -> None:
        """Fan running, methane low, for longer than every hold: power on."""
        for _ in range(int(HOLD_S / POLL_S) + 2):
            self.poll(ch4)
        assert self.power_cut is False, self.engine.conditions()
        self.events.clear()
