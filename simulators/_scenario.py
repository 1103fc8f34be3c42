"""Scenarios: time profiles of tag values, played into a :class:`SiteSimulator`.

A scenario file::

    name: methane-face-rise
    duration_s: 40
    tags:
      CH4_1201_T1:
        - [0, 0.4]      # [seconds, engineering value]
        - [8, 1.0]

Values between points are linear; after a tag's last point its last value
holds. Tags the scenario does not list hold their profile's ``nominal``.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from edge.config import ConfigError, ConfigIssue, LoadedSite, load_model


class ScenarioTarget(Protocol):
    """What a scenario plays into: a simulator's site, tags and values."""

    @property
    def site(self) -> LoadedSite: ...

    def tags(self) -> list[str]: ...

    def set_value(self, tag: str, value: float) -> None: ...


__all__ = ["Scenario", "ScenarioPlayer", "load_scenario"]


def _issue(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("scenario", message), loc=loc, input=value)


FaultKind = Literal[
    "dead", "slow", "garbled", "stuck", "drift", "noise", "spike", "opcua_restart", "cable_pulled"
]
_FAULT_TARGET: dict[str, str] = {
    "dead": "device",
    "slow": "device",
    "garbled": "bus",
    "opcua_restart": "bus",
    "cable_pulled": "bus",
    "stuck": "tag",
    "drift": "tag",
    "noise": "tag",
    "spike": "tag",
}


class Fault(BaseModel):
    """One injected fault from ``at_s`` until ``until_s`` (default: the end).

    ``dead`` / ``slow`` a ``device`` (``delay_s``); ``garbled`` (every ``every``-th
    line), ``cable_pulled`` and ``opcua_restart`` (down ``down_s``) a ``bus``;
    ``stuck``, ``drift`` (``rate_per_s``), ``noise`` (``amplitude``, Gaussian sigma)
    and ``spike`` (``magnitude``) a ``tag``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    at_s: float = Field(ge=0)
    until_s: float | None = None
    device: str | None = None
    bus: str | None = None
    tag: str | None = None
    delay_s: float = Field(default=2.0, ge=0, le=60)
    every: int = Field(default=2, ge=1)
    rate_per_s: float = 0.0
    amplitude: float = Field(default=0.0, ge=0)
    magnitude: float = 0.0
    down_s: float = Field(default=2.0, ge=0, le=60)

    @model_validator(mode="after")
    def _target(self) -> Fault:
        need = _FAULT_TARGET[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"fault {self.kind!r} needs a {need!r}")
        if self.until_s is not None and self.until_s <= self.at_s:
            raise ValueError(f"until_s {self.until_s} must be after at_s {self.at_s}")
        return self

    def active(self, t: float) -> bool:
        return self.at_s <= t and (self.until_s is None or t < self.until_s)


class Scenario(BaseModel):
    """Tag value paths over time, and faults; validated once when loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    site: str | None = None  # the site id it was written for; refused on another site
    duration_s: float = Field(gt=0)
    tags: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _paths(self) -> Scenario:
        # Raised as a ValidationError so each problem points at its own point
        # (file:line through edge.config.load_model), not at the whole model.
        issues: list[InitErrorDetails] = []
        for tag, points in self.tags.items():
            if not points:
                issues.append(_issue(("tags", tag), "needs at least one [t_s, value] point", []))
                continue
            if points[0][0] != 0:
                issues.append(
                    _issue(
                        ("tags", tag, 0, 0),
                        f"first point must be at t=0, not {points[0][0]}",
                        points[0][0],
                    )
                )
            for i, (t, value) in enumerate(points):
                if not (math.isfinite(t) and math.isfinite(value)):
                    issues.append(
                        _issue(("tags", tag, i), "time and value must be finite", [t, value])
                    )
                if i and t <= points[i - 1][0]:
                    issues.append(
                        _issue(
                            ("tags", tag, i, 0),
                            f"times must be strictly increasing: {t} after {points[i - 1][0]}",
                            t,
                        )
                    )
                if t > self.duration_s:
                    issues.append(
                        _issue(
                            ("tags", tag, i, 0),
                            f"t={t} is after the end (duration_s {self.duration_s})",
                            t,
                        )
                    )
        if issues:
            raise ValidationError.from_exception_data(type(self).__name__, issues)
        return self

    def value_at(self, tag: str, t: float) -> float | None:
        """The tag's value at ``t`` seconds, or ``None`` if the scenario does not set it."""
        points = self.tags.get(tag)
        if not points:
            return None
        if t <= points[0][0]:
            return points[0][1]
        if t >= points[-1][0]:
            return points[-1][1]
        i = bisect.bisect_right([p[0] for p in points], t)
        (t0, v0), (t1, v1) = points[i - 1], points[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def unknown_tags(self, known: set[str]) -> list[str]:
        named = list(self.tags) + [f.tag for f in self.faults if f.tag is not None]
        return [tag for tag in dict.fromkeys(named) if tag not in known]


# the bus types each bus fault can act on (the simulator has the fault for those only)
FAULT_BUS_TYPES: dict[str, tuple[str, ...]] = {
    "garbled": ("serial", "modbus_rtu", "modbus_rtu_over_tcp"),
    "cable_pulled": ("serial",),
    "opcua_restart": ("opcua",),
}


class _Lines:
    """1-based lines of a scenario file's keys (the file already parsed once)."""

    def __init__(self, path: Path) -> None:
        root = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
        self.root = root if isinstance(root, CommentedMap) else CommentedMap()

    def key(self, key: str) -> int | None:
        return self.root.lc.key(key)[0] + 1 if key in self.root else None

    def tag(self, tag: str) -> int | None:
        tags = self.root.get("tags")
        if isinstance(tags, CommentedMap) and tag in tags:
            return int(tags.lc.key(tag)[0]) + 1
        return None

    def fault(self, index: int, field: str) -> int | None:
        faults = self.root.get("faults")
        try:
            entry = faults[index]
        except (TypeError, IndexError, KeyError):
            return None
        if isinstance(entry, CommentedMap) and field in entry:
            return int(entry.lc.key(field)[0]) + 1
        return int(faults.lc.item(index)[0]) + 1


def site_issues(path: Path, scenario: Scenario, site: LoadedSite) -> list[ConfigIssue]:
    """Everything in ``scenario`` that ``site`` cannot play: another site's scenario, tags,
    devices or buses it does not have, a bus fault on a bus of the wrong protocol."""
    lines = _Lines(path)
    site_id = site.config.site.id
    file = str(path)
    issues: list[ConfigIssue] = []
    if scenario.site is not None and scenario.site != site_id:
        issues.append(
            ConfigIssue(
                file,
                lines.key("site"),
                None,
                "site",
                f"scenario is for site {scenario.site!r}, not {site_id!r}",
            )
        )
    known = {tag.name for _, tag in site.tags()}
    listing = ", ".join(sorted(known))
    for tag in scenario.tags:
        if tag not in known:
            issues.append(
                ConfigIssue(
                    file,
                    lines.tag(tag),
                    None,
                    f"tags.{tag}",
                    f"unknown tag {tag!r} in site {site_id!r}; known: {listing}",
                )
            )
    devices = {d.id: d for d in site.config.devices}
    buses = {b.id: b for b in site.config.buses}
    for i, fault in enumerate(scenario.faults):
        where = f"faults.{i}"
        if fault.tag is not None and fault.tag not in known:
            issues.append(
                ConfigIssue(
                    file,
                    lines.fault(i, "tag"),
                    None,
                    f"{where}.tag",
                    f"fault {fault.kind!r}: unknown tag {fault.tag!r} in site {site_id!r}; "
                    f"known: {listing}",
                )
            )
        if fault.device is not None and fault.device not in devices:
            issues.append(
                ConfigIssue(
                    file,
                    lines.fault(i, "device"),
                    None,
                    f"{where}.device",
                    f"fault {fault.kind!r}: unknown device {fault.device!r} in site "
                    f"{site_id!r}; known: {', '.join(sorted(devices))}",
                )
            )
        if fault.bus is None:
            continue
        bus = buses.get(fault.bus)
        if bus is None:
            issues.append(
                ConfigIssue(
                    file,
                    lines.fault(i, "bus"),
                    None,
                    f"{where}.bus",
                    f"fault {fault.kind!r}: unknown bus {fault.bus!r} in site {site_id!r}; "
                    f"known: {', '.join(sorted(buses))}",
                )
            )
            continue
        types = FAULT_BUS_TYPES.get(fault.kind, ())
        if types and bus.type not in types:
            issues.append(
                ConfigIssue(
                    file,
                    lines.fault(i, "bus"),
                    None,
                    f"{where}.bus",
                    f"fault {fault.kind!r} acts on a bus of type {' or '.join(types)}; "
                    f"bus {fault.bus!r} is {bus.type}",
                )
            )
    return issues


def load_scenario(path: str | Path, site: LoadedSite | None = None) -> Scenario:
    """Load a scenario file; with ``site``, also check that the site can play it
    (:func:`site_issues`).

    Raises :class:`edge.config.ConfigError` whose issues name file, line and field.
    """
    path = Path(path)
    scenario = load_model(path, Scenario)
    if site is not None:
        issues = site_issues(path, scenario, site)
        if issues:
            raise ConfigError(issues)
    return scenario


class ScenarioPlayer:
    """Plays a scenario into a simulator, paced by the monotonic clock.

    ``speed`` 2.0 plays twice as fast; ``loop`` restarts at t=0 after
    ``duration_s``. Without ``loop``, :meth:`run` returns once the end is
    reached; the simulator then holds the last values.
    """

    def __init__(
        self,
        sim: ScenarioTarget,
        scenario: Scenario,
        speed: float = 1.0,
        tick_s: float = 0.05,
        loop: bool = False,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed must be > 0")
        if not tick_s > 0:
            raise ValueError("tick_s must be > 0")
        unknown = scenario.unknown_tags(set(sim.tags()))
        if unknown:
            raise ValueError(
                f"scenario {scenario.name!r} names tags not in the site: {', '.join(unknown)}"
            )
        self.sim = sim
        self.scenario = scenario
        self.speed = speed
        self.tick_s = tick_s
        self.loop = loop
        self.scenario_time = 0.0  # seconds into the scenario, as last played
        self.faults_applied: list[tuple[float, str, bool]] = []  # (t, kind, active)
        self._active: set[int] = set()
        self._rng = random.Random(0)
        self.rounds = 0  # completed passes through the scenario

    def _played_tags(self) -> list[str]:
        faulted = [f.tag for f in self.scenario.faults if f.tag is not None]
        return list(dict.fromkeys([*self.scenario.tags, *faulted]))

    def _value(self, tag: str, t: float) -> float | None:
        value = self.scenario.value_at(tag, t)
        if value is None:
            site = self.sim.site
            spec = next((tg for _, tg in site.tags() if tg.name == tag), None)
            value = site.profile_of(spec).nominal if spec is not None else None
        if value is None:
            return None
        for fault in self.scenario.faults:
            if fault.tag != tag or not fault.active(t):
                continue
            if fault.kind == "drift":
                value += fault.rate_per_s * (t - fault.at_s)
            elif fault.kind == "noise":
                value += self._rng.gauss(0.0, fault.amplitude)
            elif fault.kind == "spike":
                value += fault.magnitude
        return value

    async def _faults(self, t: float) -> None:
        """Switch device and bus faults (and stuck values) on and off as ``t`` passes."""
        for i, fault in enumerate(self.scenario.faults):
            if fault.kind in ("drift", "noise", "spike"):
                continue
            active = fault.active(t)
            if active == (i in self._active):
                continue
            if active:
                self._active.add(i)
            else:
                self._active.discard(i)
            self.faults_applied.append((t, fault.kind, active))
            await self._apply(fault, active)

    async def _apply(self, fault: Fault, active: bool) -> None:
        sim: Any = self.sim  # device and bus faults need a simulator that has them
        if fault.kind == "stuck":
            sim.hold(fault.tag, active)
        elif fault.kind == "dead":
            await sim.set_dead(fault.device, active)
        elif fault.kind == "slow":
            sim.set_slow(fault.device, fault.delay_s if active else 0.0)
        elif fault.kind == "garbled":
            sim.set_garbled(fault.bus, fault.every if active else 0)
        elif fault.kind == "cable_pulled":
            sim.set_cable(fault.bus, not active)
        elif fault.kind == "opcua_restart" and active:
            await sim.restart_opcua(fault.bus, fault.down_s)

    def _hold_nominal(self) -> None:
        site = self.sim.site
        for _, tag in site.tags():
            if tag.name not in self.scenario.tags:
                self.sim.set_value(tag.name, site.profile_of(tag).nominal)

    async def run(self) -> None:
        self._hold_nominal()
        duration = self.scenario.duration_s
        last: dict[str, float] = {}
        start = time.monotonic()
        while True:
            elapsed = (time.monotonic() - start) * self.speed
            finished = not self.loop and elapsed >= duration
            if self.loop:
                self.rounds = int(elapsed // duration)
                t = elapsed - self.rounds * duration
            else:
                t = min(elapsed, duration)
            self.scenario_time = t
            await self._faults(t)
            for tag in self._played_tags():
                value = self._value(tag, t)
                if value is not None and last.get(tag) != value:
                    self.sim.set_value(tag, value)
                    last[tag] = value
            if finished:
                self.rounds = 1
                return
            await asyncio.sleep(self.tick_s)
