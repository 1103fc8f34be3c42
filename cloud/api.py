"""The cloud HTTP API (FastAPI): health, alarm history, latest values, gateways.

Handlers are plain functions: FastAPI runs them in its thread pool, which is where
the blocking :class:`cloud.storage.Store` belongs.

Every route but ``PUBLIC_ROUTES`` depends on a :class:`cloud.auth.RoleGuard`: the
caller must present a bearer token (an access token from the login route or a
machine API token) of a role the route admits. Error answers never echo input
unbounded: details are clipped and validation errors carry no input values.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, computed_field
from starlette.exceptions import HTTPException as StarletteHTTPException

import wire
from cloud.alarm_kpi_api import alarm_kpi_router
from cloud.audit import AuditLog
from cloud.auth import ALL_ROLES, Authenticator, Guards, auth_router, error_responses
from cloud.commands import CommandSender
from cloud.commands_api import commands_router
from cloud.hazards import HazardService, hazards_router
from cloud.risk import RiskService, risk_router
from cloud.storage import Store, StoreError
from cloud.wall import STATIC_DIR as WALL_STATIC_DIR
from cloud.wall import WallService, WallSettings, wall_router

__all__ = [
    "PUBLIC_ROUTES",
    "AlarmOut",
    "GatewayOut",
    "HealthOut",
    "LatestOut",
    "create_app",
    "iso_utc",
]

# (method, path) of the routes anyone may call; every other route needs a role.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/health"),
        ("POST", "/api/v1/auth/token"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("GET", "/wall"),  # the wall page holds no data; its data calls carry a token
    }
)
_DETAIL_MAX = 300  # characters of an error detail
_LOC_MAX = 64
_ERRORS_MAX = 20
_NAME_MAX = 128  # site and gateway ids are String(128) in the store

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def iso_utc(ts_ns: int) -> str:
    """Unix nanoseconds as ISO 8601 UTC with microseconds, e.g. ``2024-05-01T12:00:00.000001Z``."""
    stamp = _EPOCH + dt.timedelta(microseconds=ts_ns // 1000)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    db: bool
    influx: bool
    mqtt: bool
    counters: dict[str, int] = {}


class _FromRecord(BaseModel):
    """Built straight from the store's record dataclasses (same field names)."""

    model_config = ConfigDict(from_attributes=True)


class _Stamped(_FromRecord):
    ts_ns: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ts(self) -> str:
        return iso_utc(self.ts_ns)


class AlarmOut(_Stamped):
    id: int
    site: str
    gateway: str
    seq: int
    alarm_id: str
    tag: str
    device: str
    kind: str
    area: str
    position: str
    level: str
    previous: str
    value: float | None
    threshold: float | None
    message: str
    actuators: list[str]
    received_at: dt.datetime
    reason: str = ""  # why, as a field (comms_lost, over_range, fan_stopped...)


class LatestOut(_Stamped):
    tag: str
    device: str
    gateway: str
    kind: str
    unit: str
    area: str
    position: str
    value: float | None
    quality: str
    reason: str | None
    condition: wire.AlarmLevel = "normal"  # as the gateway decided it (newest alarm event)


class GatewayOut(_FromRecord):
    gateway: str
    site: str
    state: str
    version: str
    last_seq: int | None
    gaps: int  # sequence numbers below last_seq never received
    dropped: int  # sequence numbers the gateway marked lost (GapEvent.dropped), not points
    last_seen: dt.datetime | None


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """Any route: the database failing is a 503, never a 500 (one handler for all routers)."""
    return JSONResponse(
        {"detail": _clip(f"database unavailable: {exc}", _DETAIL_MAX)}, status_code=503
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse(
        {"detail": _clip(detail, _DETAIL_MAX)}, status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body without the ``input`` and ``ctx`` it would echo back."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [p if isinstance(p, int) else _clip(str(p), _LOC_MAX) for p in e["loc"][:8]],
            "msg": _clip(str(e.get("msg", "")), _DETAIL_MAX),
            "type": _clip(str(e.get("type", "")), _LOC_MAX),
        }
        for e in exc.errors()[:_ERRORS_MAX]
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(
    store: Store,
    health: Callable[[], dict[str, Any]],
    *,
    authenticator: Authenticator,
    audit: AuditLog,
    commands: CommandSender | None = None,
    hazards: HazardService | None = None,
    risk: RiskService | None = None,
    wall: WallSettings | None = None,
) -> FastAPI:
    """The API over ``store``; ``health()`` returns db/influx/mqtt booleans and counters.

    Without ``hazards`` the hazard service keeps its evidence in a fresh temporary
    directory and its tables are created here (tests, demos); the cloud service passes
    its own. Without ``risk`` the heatmap answers ``configured: false``.
    """
    if hazards is None:
        hazards = HazardService(
            store.engine, audit, Path(tempfile.mkdtemp(prefix="safewatch-evidence-"))
        )
        hazards.create_all()
    app = FastAPI(title="SafeWatch cloud", version="1")
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    guards = Guards(authenticator)
    readers = [Depends(guards(*ALL_ROLES))]
    read_errors = error_responses(401, 403, 503)

    @app.get("/health", response_model=HealthOut)
    def get_health() -> HealthOut:
        state = health()
        db, influx, mqtt = bool(state.get("db")), bool(state.get("influx")), bool(state.get("mqtt"))
        counters = {str(k): int(v) for k, v in dict(state.get("counters", {})).items()}
        return HealthOut(
            status="ok" if db and influx and mqtt else "degraded",
            db=db,
            influx=influx,
            mqtt=mqtt,
            counters=counters,
        )

    @app.get(
        "/api/v1/alarms",
        response_model=list[AlarmOut],
        dependencies=readers,
        responses={**read_errors, **error_responses(422)},
    )
    def get_alarms(
        site: Annotated[str | None, Query(max_length=_NAME_MAX)] = None,
        gateway: Annotated[str | None, Query(max_length=_NAME_MAX)] = None,
        level: wire.AlarmLevel | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AlarmOut]:
        records = store.alarms(site=site, gateway=gateway, level=level, limit=limit)
        return [AlarmOut.model_validate(r) for r in records]

    @app.get(
        "/api/v1/latest",
        response_model=list[LatestOut],
        dependencies=readers,
        responses={**read_errors, **error_responses(404, 422)},
    )
    def get_latest(
        site: Annotated[str, Query(min_length=1, max_length=_NAME_MAX)],
    ) -> list[LatestOut]:
        values = store.latest(site)
        known = bool(values) or site in store.sites()
        conditions = store.conditions(site)
        if not known:
            raise HTTPException(status_code=404, detail=f"unknown site {site!r}: no data received")
        return [
            LatestOut.model_validate(v).model_copy(
                update={"condition": conditions.get(v.tag, "normal")}
            )
            for v in values
        ]

    @app.get(
        "/api/v1/gateways",
        response_model=list[GatewayOut],
        dependencies=readers,
        responses=read_errors,
    )
    def get_gateways() -> list[GatewayOut]:
        records = store.gateways()
        return [GatewayOut.model_validate(g) for g in records]

    app.include_router(auth_router(authenticator, audit, guards))
    app.include_router(commands_router(commands, guards))
    app.include_router(hazards_router(hazards, guards))
    app.include_router(risk_router(risk, guards))
    app.include_router(alarm_kpi_router(store, guards))
    app.include_router(wall_router(WallService(store, risk), guards, wall))
    app.mount("/wall/static", StaticFiles(directory=WALL_STATIC_DIR), name="wall-static")
    return app
