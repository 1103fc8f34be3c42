"""``/api/v1/hazards``: create, list (filters, pages, CSV), get, transition, evidence, KPIs.

Validated once: the request models check the HTTP input, the service checks the rules
(roles per event, required fields, deadlines normalised to UTC) and returns typed
records, which are serialised as they are - not validated again into response models
(those document the answers). The list is cached per query for at most a second and
dropped at once when this process changes a hazard.
"""

# No ``from __future__ import annotations``: routes name local guards in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import asyncio
import csv
import datetime as dt
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from cloud._encoded import EncodedBody, encoded_response
from cloud.auth import ALL_ROLES, Guards, Principal, Role, error_responses
from cloud.hazards._lifecycle import HazardEvent, HazardGrade, HazardStatus
from cloud.hazards._service import (
    MAX_EVIDENCE_BYTES,
    HazardError,
    HazardFilter,
    HazardForbidden,
    HazardIn,
    HazardNotFound,
    HazardRecord,
    HazardService,
)
from cloud.storage import StoreError

__all__ = ["hazards_router"]

_TEXT = 256
_ID = Path(ge=1, le=2**31 - 1)  # hazards.id is INTEGER (int4 on PostgreSQL)


# A deadline as given (naive means UTC): the service keeps it in UTC.
Deadline = dt.datetime | None


class HazardCreate(BaseModel):
    title: str = Field(min_length=1, max_length=_TEXT)
    area: str = Field(min_length=1, max_length=_TEXT)
    grade: HazardGrade
    description: str = Field(default="", max_length=4000)
    site: str = Field(default="", max_length=128)
    kind: str = Field(default="manual", min_length=1, max_length=64)
    deadline: Deadline = None
    plan: str | None = Field(default=None, max_length=4000)
    responsible: str | None = Field(default=None, max_length=128)
    supervisor: str | None = Field(default=None, max_length=128)


class TransitionIn(BaseModel):
    event: HazardEvent
    assignee: str | None = Field(default=None, min_length=1, max_length=128)
    plan: str | None = Field(default=None, max_length=4000)
    responsible: str | None = Field(default=None, max_length=128)
    supervisor: str | None = Field(default=None, max_length=128)
    deadline: Deadline = None
    note: str | None = Field(default=None, max_length=4000)


class HazardOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str
    site: str
    area: str
    kind: str
    grade: HazardGrade
    status: HazardStatus
    source: str
    found_by: str
    found_at: dt.datetime
    deadline: dt.datetime
    assignee: str | None
    responsible: str | None
    supervisor: str | None
    plan: str | None
    rectification: str | None
    review_note: str | None
    rejections: int
    updated_at: dt.datetime
    closed_at: dt.datetime | None
    overdue: bool
    reminded_at: dt.datetime | None = None  # the deadline reminder went out
    escalated_at: dt.datetime | None = None  # overdue: escalated to supervisor/responsible


class HazardPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[HazardOut]
    # the id to pass as ``before`` for the next page (keyset paging); null on the last page
    next_before: int | None = None


@dataclass(frozen=True, slots=True)
class _Page:
    """A HazardPage as built from the service's records (serialised, never re-validated)."""

    total: int
    offset: int
    limit: int
    items: list[HazardRecord]
    next_before: int | None


_PAGE_JSON = TypeAdapter(_Page)
_RECORD = TypeAdapter(HazardRecord)
PAGE_CACHE_MAX_AGE_S = 1.0  # other processes' changes show after at most this long
_PAGE_CACHE_SIZE = 256


class _PageCache:
    """Serialised list pages by query, valid while the service's version is unchanged
    (every change this process commits) and for at most ``max_age_s`` (changes of other
    processes, hazards turning overdue)."""

    def __init__(self, version: Callable[[], int], max_age_s: float) -> None:
        self._version = version
        self.max_age_s = max_age_s
        self._pages: dict[tuple[object, ...], tuple[int, float, EncodedBody]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> EncodedBody | None:
        hit = self._pages.get(key)
        if hit is None or hit[0] != self._version():
            return None
        if time.monotonic() - hit[1] >= self.max_age_s:
            return None
        return hit[2]

    def put(self, key: tuple[object, ...], version: int, body: EncodedBody) -> None:
        with self._lock:
            self._pages.pop(key, None)
            self._pages[key] = (version, time.monotonic(), body)
            while len(self._pages) > _PAGE_CACHE_SIZE:  # the oldest entry goes
                del self._pages[next(iter(self._pages))]


class EvidenceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    hazard_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: dt.datetime


class KpisOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    total: int
    closed: int
    open: int
    overdue: int
    rectification_rate: float | None
    on_time_rate: float | None
    mean_time_to_close_h: float | None
    by_area: dict[str, int]


_CSV_FIELDS = list(HazardOut.model_fields)


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, HazardNotFound):
        return HTTPException(status_code=404, detail=str(exc))
    if isinstance(exc, HazardForbidden):
        return HTTPException(status_code=403, detail=str(exc))
    if isinstance(exc, HazardError):
        return HTTPException(status_code=409, detail=str(exc))
    return HTTPException(status_code=503, detail=f"database unavailable: {exc}"[:300])


def _json(record: HazardRecord, status_code: int = 200) -> Response:
    return Response(
        _RECORD.dump_json(record), status_code=status_code, media_type="application/json"
    )


def hazards_router(service: HazardService, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["hazards"])
    readers = guards(*ALL_ROLES)
    finders = guards(Role.ADMIN, Role.SAFETY_ENGINEER, Role.RECTIFIER, Role.REVIEWER)
    movers = guards(Role.ADMIN, Role.SAFETY_ENGINEER, Role.RECTIFIER, Role.REVIEWER)
    rectifiers = guards(Role.ADMIN, Role.RECTIFIER)
    errors = error_responses(401, 403, 422, 503)

    def _filter(
        area: str | None,
        grade: HazardGrade | None,
        status: HazardStatus | None,
        kind: str | None,
        overdue: bool | None,
    ) -> HazardFilter:
        return HazardFilter(area=area, grade=grade, status=status, kind=kind, overdue=overdue)

    Area = Annotated[str | None, Query(max_length=_TEXT)]
    Kind = Annotated[str | None, Query(max_length=64)]

    @router.post(
        "/hazards",
        response_model=HazardOut,
        status_code=201,
        summary="Record a found hazard (audited)",
        responses=errors,
    )
    def create(body: HazardCreate, principal: Annotated[Principal, Depends(finders)]) -> Response:
        data = HazardIn(**body.model_dump())
        try:
            record, _ = service.create(data, principal.name)
        except (HazardError, StoreError) as exc:
            raise _http(exc) from exc
        return _json(record, status_code=201)

    pages = _PageCache(lambda: service.version, PAGE_CACHE_MAX_AGE_S)

    def _page(flt: HazardFilter, offset: int, limit: int, before: int | None) -> EncodedBody:
        key = (flt, offset, limit, before)
        version = service.version  # before the query: a change meanwhile makes it stale
        items, total = service.find(flt, offset=offset, limit=limit, before=before)
        last = items[-1].id if len(items) == limit and items[-1].id > 1 else None
        body = EncodedBody.of(_PAGE_JSON.dump_json(_Page(total, offset, limit, items, last)))
        pages.put(key, version, body)
        return body

    @router.get(
        "/hazards",
        response_model=HazardPage,
        summary="Hazards, newest first, filtered and paged",
        description=(
            "Page with `limit` and either `before` (keyset: the previous page's "
            "`next_before`; cheap at any depth) or `offset`. `total` counts every match."
        ),
        responses=errors,
        dependencies=[Depends(readers)],
    )
    async def list_hazards(
        request: Request,
        area: Area = None,
        grade: HazardGrade | None = None,
        status: HazardStatus | None = None,
        kind: Kind = None,
        overdue: bool | None = None,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> Response:
        flt = _filter(area, grade, status, kind, overdue)
        body = pages.get((flt, offset, limit, before))
        if body is None:
            try:
                body = await asyncio.to_thread(_page, flt, offset, limit, before)
            except StoreError as exc:
                raise _http(exc) from exc
        return encoded_response(request, body)

    @router.get(
        "/hazards.csv",
        summary="Hazards as CSV (same filters, up to 100,000 rows)",
        responses={**errors, 200: {"content": {"text/csv": {}}, "description": "CSV"}},
        response_class=Response,
        dependencies=[Depends(readers)],
    )
    def export_csv(
        area: Area = None,
        grade: HazardGrade | None = None,
        status: HazardStatus | None = None,
        kind: Kind = None,
        overdue: bool | None = None,
    ) -> Response:
        try:
            items, _ = service.find(_filter(area, grade, status, kind, overdue), limit=100_000)
        except StoreError as exc:
            raise _http(exc) from exc
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for item in items:
            writer.writerow(_RECORD.dump_python(item, mode="json"))
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="hazards.csv"'},
        )

    @router.get(
        "/hazards/kpis",
        response_model=KpisOut,
        summary="Rectification rate, on-time rate, mean time to close, overdue count",
        responses=errors,
        dependencies=[Depends(readers)],
    )
    def kpis(
        area: Area = None,
        grade: HazardGrade | None = None,
        kind: Kind = None,
    ) -> KpisOut:
        try:
            result = service.kpis(_filter(area, grade, None, kind, None))
        except StoreError as exc:
            raise _http(exc) from exc
        return KpisOut.model_validate(result)

    @router.get(
        "/hazards/{hazard_id}",
        response_model=HazardOut,
        responses={**errors, **error_responses(404)},
        dependencies=[Depends(readers)],
    )
    def get(hazard_id: Annotated[int, _ID]) -> Response:
        try:
            return _json(service.get(hazard_id))
        except (HazardError, StoreError) as exc:
            raise _http(exc) from exc

    @router.post(
        "/hazards/{hazard_id}/transitions",
        response_model=HazardOut,
        summary="Move a hazard along its closed loop (role per event; audited)",
        responses={**errors, **error_responses(404, 409)},
    )
    def transition(
        hazard_id: Annotated[int, _ID],
        body: TransitionIn,
        principal: Annotated[Principal, Depends(movers)],
    ) -> Response:
        try:
            record = service.transition(
                hazard_id,
                body.event,
                principal.name,
                principal.role,
                assignee=body.assignee,
                plan=body.plan,
                responsible=body.responsible,
                supervisor=body.supervisor,
                deadline=body.deadline,
                note=body.note,
            )
        except (HazardError, StoreError) as exc:
            raise _http(exc) from exc
        return _json(record)

    @router.get(
        "/hazards/{hazard_id}/evidence",
        response_model=list[EvidenceOut],
        responses={**errors, **error_responses(404)},
        dependencies=[Depends(readers)],
    )
    def list_evidence(hazard_id: Annotated[int, _ID]) -> list[EvidenceOut]:
        try:
            service.get(hazard_id)
            return [EvidenceOut.model_validate(e) for e in service.evidence(hazard_id)]
        except (HazardError, StoreError) as exc:
            raise _http(exc) from exc

    @router.post(
        "/hazards/{hazard_id}/evidence",
        response_model=EvidenceOut,
        status_code=201,
        summary="Upload a photo or document of the rectification (stored with its SHA-256)",
        responses={**errors, **error_responses(404, 409)},
    )
    async def upload_evidence(
        hazard_id: Annotated[int, _ID],
        file: Annotated[UploadFile, File()],
        principal: Annotated[Principal, Depends(rectifiers)],
    ) -> EvidenceOut:
        data = await file.read(MAX_EVIDENCE_BYTES + 1)
        try:
            record = await asyncio.to_thread(
                service.add_evidence,
                hazard_id,
                file.filename or "evidence",
                file.content_type or "application/octet-stream",
                data,
                principal.name,
                principal.role,
            )
        except (HazardError, StoreError) as exc:
            raise _http(exc) from exc
        return EvidenceOut.model_validate(record)

    return router
