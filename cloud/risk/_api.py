"""``/api/v1/risk``: the live heatmap (areas, grades, contributions) and the grade history."""

# No ``from __future__ import annotations``: routes name local guards in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from cloud.auth import ALL_ROLES, Guards, error_responses
from cloud.risk._service import RiskService

__all__ = ["risk_router"]


class ContributionOut(BaseModel):
    factor: str
    detail: str
    points: float


class UnitOut(BaseModel):
    id: str
    name: str
    method: str
    score: float
    static_grade: str
    grade: str


class AreaOut(BaseModel):
    id: str
    name: str
    polygon: list[tuple[float, float]]
    static_grade: str
    grade: str  # red / orange / yellow / blue
    points: float
    contributions: list[ContributionOut]
    units: list[UnitOut]


class HeatmapOut(BaseModel):
    configured: bool
    site: str
    at: dt.datetime
    areas: list[AreaOut]


class GradeChangeOut(BaseModel):
    area: str
    at: dt.datetime
    grade: str
    points: float
    contributions: list[ContributionOut]


def risk_router(service: RiskService | None, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1/risk", tags=["risk"])
    readers = [Depends(guards(*ALL_ROLES))]

    @router.get(
        "/heatmap",
        response_model=HeatmapOut,
        summary="Each area's live grade, its units and the factors that raised it",
        responses=error_responses(401, 403, 503),
        dependencies=readers,
    )
    def heatmap() -> HeatmapOut:
        now = dt.datetime.now(dt.UTC)
        if service is None:
            return HeatmapOut(configured=False, site="", at=now, areas=[])
        areas = service.heatmap()
        return HeatmapOut(
            configured=True,
            site=service.model.site,
            at=now,
            areas=[
                AreaOut(
                    id=a.id,
                    name=a.name,
                    polygon=a.polygon,
                    static_grade=a.static_grade.colour,
                    grade=a.grade.colour,
                    points=a.points,
                    contributions=[
                        ContributionOut(factor=c.factor, detail=c.detail, points=c.points)
                        for c in a.contributions
                    ],
                    units=[
                        UnitOut(
                            id=u.id,
                            name=u.name,
                            method=u.method,
                            score=u.score,
                            static_grade=u.static_grade.colour,
                            grade=u.grade.colour,
                        )
                        for u in a.units
                    ],
                )
                for a in areas
            ],
        )

    @router.get(
        "/history",
        response_model=list[GradeChangeOut],
        summary="Changes of the areas' live grades, oldest first (replay a day)",
        responses=error_responses(401, 403, 422, 503),
        dependencies=readers,
    )
    def history(
        area: Annotated[str | None, Query(max_length=256)] = None,
        since: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[GradeChangeOut]:
        if service is None:
            return []
        changes = service.history(area, since=since, limit=limit)
        return [
            GradeChangeOut(
                area=c.area,
                at=c.at,
                grade=c.grade,
                points=c.points,
                contributions=[ContributionOut.model_validate(x) for x in c.contributions],
            )
            for c in changes
        ]

    return router
