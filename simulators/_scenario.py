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
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from edge.config import ConfigError, ConfigIssue, LoadedSite, load_model
from simulators._site import SiteSimulator

__all__ = ["Scenario", "ScenarioPlayer", "load_scenario"]


def _issue(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("scenario", message), loc=loc, input=value)


class Scenario(BaseModel):
    """Tag value paths over time; validated once when loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    duration_s: float = Field(gt=0)
    tags: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)

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
        return [tag for tag in self.tags if tag not in known]


def _tag_lines(path: Path) -> dict[str, int]:
    """1-based line of each key under ``tags:`` (the file already parsed once)."""
    root = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    tags = root.get("tags") if isinstance(root, CommentedMap) else None
    if not isinstance(tags, CommentedMap):
        return {}
    return {str(k): tags.lc.key(k)[0] + 1 for k in tags}


def load_scenario(path: str | Path, site: LoadedSite | None = None) -> Scenario:
    """Load a scenario file; with ``site``, also check that every tag exists there.

    Raises :class:`edge.config.ConfigError` whose issues name file, line and field.
    """
    path = Path(path)
    scenario = load_model(path, Scenario)
    if site is not None:
        known = {tag.name for _, tag in site.tags()}
        unknown = scenario.unknown_tags(known)
        if unknown:
            lines = _tag_lines(path)
            raise ConfigError(
                [
                    ConfigIssue(
                        str(path),
                        lines.get(tag),
                        None,
                        f"tags.{tag}",
                        f"unknown tag {tag!r} in site {site.config.site.id!r}; "
                        f"known: {', '.join(sorted(known))}",
                    )
                    for tag in unknown
                ]
            )
    return scenario


class ScenarioPlayer:
    """Plays a scenario into a simulator, paced by the monotonic clock.

    ``speed`` 2.0 plays twice as fast; ``loop`` restarts at t=0 after
    ``duration_s``. Without ``loop``, :meth:`run` returns once the end is
    reached; the simulator then holds the last values.
    """

    def __init__(
        self,
        sim: SiteSimulator,
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
        self.rounds = 0  # completed passes through the scenario

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
            for tag in self.scenario.tags:
                value = self.scenario.value_at(tag, t)
                if value is not None and last.get(tag) != value:
                    self.sim.set_value(tag, value)
                    last[tag] = value
            if finished:
                self.rounds = 1
                return
            await asyncio.sleep(self.tick_s)
