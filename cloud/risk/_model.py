"""Risk units from YAML and the dynamic (live) grade of each unit and area.

The risk file sits beside the site file (``<site>.risk.yaml``)::

    site: mine-a
    areas:
      - id: face-1
        name: Working face 1 / 1号工作面
        polygon: [[0, 0], [40, 0], [40, 10], [0, 10]]
        units:
          - id: face-1-gas
            name: Gas accumulation at the face
            lec: {l: 3, e: 6, c: 15}          # D = L x E x C
          - id: face-1-roof
            name: Roof fall
            matrix: {l: 3, s: 4}              # R = L x S

A unit's static grade comes from its assessment; live factors of its area add
points (each shown with its contribution) and every whole point raises the grade
one step, up to red. An area takes the highest grade of its units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cloud.risk._grading import RiskGrade, grade_lec, grade_matrix, lec_score, matrix_score

__all__ = [
    "POINTS",
    "AreaRisk",
    "Contribution",
    "LiveFactors",
    "RiskFileError",
    "RiskModel",
    "UnitRisk",
    "compute",
    "load_risk_file",
]

# Points a live factor adds to every unit of its area; each whole point is one grade step.
POINTS: dict[str, float] = {
    "alarm": 1.0,  # an active alarm
    "cut": 2.0,  # an active power-cut alarm
    "fault": 1.0,  # a sensor fault / bad or stale value (fail-safe: counts like an alarm)
    "gateway_offline": 1.0,  # the area's monitoring is offline
    "hazard_general": 0.5,  # an open general hazard
    "hazard_major": 1.0,  # an open major hazard
    "hazard_overdue": 1.0,  # extra, for a hazard past its deadline
    "forecast": 0.5,  # a model pre-alarm (advisory: half an alarm)
}


class RiskFileError(ValueError):
    """A risk file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LecIn(_Strict):
    l: float  # noqa: E741
    e: float
    c: float


class MatrixIn(_Strict):
    l: int  # noqa: E741
    s: int


_Id = Annotated[str, Field(min_length=1, max_length=256)]


class UnitIn(_Strict):
    id: _Id
    name: str = ""
    lec: LecIn | None = None
    matrix: MatrixIn | None = None

    @model_validator(mode="after")
    def _one_assessment(self) -> UnitIn:
        if (self.lec is None) == (self.matrix is None):
            raise ValueError("give exactly one of lec or matrix")
        if self.lec is not None:
            lec_score(self.lec.l, self.lec.e, self.lec.c)
        if self.matrix is not None:
            matrix_score(self.matrix.l, self.matrix.s)
        return self

    @property
    def score(self) -> float:
        if self.lec is not None:
            return lec_score(self.lec.l, self.lec.e, self.lec.c)
        assert self.matrix is not None
        return matrix_score(self.matrix.l, self.matrix.s)

    @property
    def method(self) -> str:
        return "lec" if self.lec is not None else "matrix"

    @property
    def static_grade(self) -> RiskGrade:
        return grade_lec(self.score) if self.lec is not None else grade_matrix(int(self.score))


class AreaIn(_Strict):
    id: _Id
    name: str = ""
    polygon: list[tuple[float, float]] = Field(default_factory=list)
    units: list[UnitIn] = Field(default_factory=list)


class RiskModel(_Strict):
    site: str = Field(default="", max_length=128)
    areas: list[AreaIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> RiskModel:
        seen: set[str] = set()
        for area in self.areas:
            for unit in area.units:
                if unit.id in seen:
                    raise ValueError(f"unit id {unit.id!r} appears twice")
                seen.add(unit.id)
        if len({a.id for a in self.areas}) != len(self.areas):
            raise ValueError("area ids must be unique")
        return self

    @property
    def unit_count(self) -> int:
        return sum(len(a.units) for a in self.areas)

    @cached_property
    def static(self) -> dict[str, tuple[str, float, RiskGrade]]:
        """Unit id -> (method, score, static grade), computed once (the model is frozen)."""
        return {u.id: (u.method, u.score, u.static_grade) for a in self.areas for u in a.units}


def load_risk_file(path: Path) -> RiskModel:
    try:
        data = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise RiskFileError(f"{path}: {exc}") from exc
    try:
        return RiskModel.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RiskFileError(f"{path}: {where}: {first['msg']}") from exc


@dataclass(frozen=True, slots=True)
class Contribution:
    factor: str  # a key of POINTS
    detail: str  # what: a tag, a hazard id, a gateway
    points: float


@dataclass(slots=True)
class LiveFactors:
    """What is happening now, by area id: each entry becomes one Contribution."""

    by_area: dict[str, list[Contribution]] = field(default_factory=dict)

    def add(self, area: str, factor: str, detail: str) -> None:
        self.by_area.setdefault(area, []).append(Contribution(factor, detail, POINTS[factor]))


@dataclass(frozen=True, slots=True)
class UnitRisk:
    id: str
    name: str
    method: str
    score: float
    static_grade: RiskGrade
    grade: RiskGrade


@dataclass(frozen=True, slots=True)
class AreaRisk:
    id: str
    name: str
    polygon: list[tuple[float, float]]
    static_grade: RiskGrade
    grade: RiskGrade
    points: float
    contributions: list[Contribution]
    units: list[UnitRisk]


def compute(
    model: RiskModel, live: LiveFactors | Mapping[str, Iterable[Contribution]]
) -> list[AreaRisk]:
    """Every area's dynamic grade with the contributions that raised it (pure, fast)."""
    by_area = live.by_area if isinstance(live, LiveFactors) else live
    out: list[AreaRisk] = []
    for area in model.areas:
        contributions = list(by_area.get(area.id, ()))
        points = sum(c.points for c in contributions)
        steps = math.floor(points)
        static = model.static
        units = []
        for u in area.units:
            method, score, grade = static[u.id]
            units.append(UnitRisk(u.id, u.name, method, score, grade, grade.raised(steps)))
        static_grade = max((u.static_grade for u in units), default=RiskGrade.BLUE)
        grade = max((u.grade for u in units), default=RiskGrade.BLUE.raised(steps))
        out.append(
            AreaRisk(
                area.id,
                area.name,
                list(area.polygon),
                static_grade,
                grade,
                points,
                contributions,
                units,
            )
        )
    return out
