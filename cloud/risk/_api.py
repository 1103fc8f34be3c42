"""``/api/v1/risk``: the live heatmap (areas, grades, contributions) and the grade history."""

# No ``from __future__ import annotations``: routes name local guards in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import asyncio
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cloud._encoded import encoded_response
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


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match against a weak ETag (weak comparison, RFC 9110 13.1.2)."""
    if not header:
        return False
    opaque = etag.removeprefix("W/")
    return any(
        tag.strip() == "*" or tag.strip().removeprefix("W/") == opaque for tag in header.split(",")
    )


def risk_router(service: RiskService | None, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1/risk", tags=["risk"])
    readers = [Depends(guards(*ALL_ROLES))]

    @router.get(
        "/heatmap",
        response_model=HeatmapOut,
        summary="Each area's live grade, its units and the factors that raised it",
        description=(
            "Served from a snapshot recomputed when an input changes (alarms, hazards, "
            "latest values' quality, gateway status; at most once a second) and at least "
            "every few seconds; `at` is when it was computed. Send the `ETag` back in "
            "`If-None-Match` to get 304 while nothing changed."
        ),
        responses={
            **error_responses(401, 403, 503),
            304: {"description": "Not modified: the areas are as in the ETag sent"},
        },
        dependencies=readers,
    )
    async def heatmap(request: Request) -> Response:
        if service is None:
            empty = HeatmapOut(configured=False, site="", at=dt.datetime.now(dt.UTC), areas=[])
            return Response(empty.model_dump_json(), media_type="application/json")
        # from memory; only when a refresh is due does a thread recompute (or serve the
        # current snapshot while another request recomputes)
        snap = service.current()
        if snap is None:
            snap = await asyncio.to_thread(service.snapshot)
        headers = {"ETag": snap.etag, "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), snap.etag):
            return Response(status_code=304, headers=headers)
        return encoded_response(request, snap.body, headers)

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
