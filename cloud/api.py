"""The cloud HTTP API (FastAPI): health, alarm history, latest values, gateways.

Handlers are plain functions: FastAPI runs them in its thread pool, which is where
the blocking :class:`cloud.storage.Store` belongs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, computed_field

import wire
from cloud.storage import Store, StoreError

__all__ = ["AlarmOut", "GatewayOut", "HealthOut", "LatestOut", "create_app", "iso_utc"]

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


class GatewayOut(_FromRecord):
    gateway: str
    site: str
    state: str
    version: str
    last_seq: int | None
    gaps: int
    dropped: int
    last_seen: dt.datetime | None


def _unavailable(exc: StoreError) -> HTTPException:
    return HTTPException(status_code=503, detail=f"database unavailable: {exc}")


def create_app(store: Store, health: Callable[[], dict[str, Any]]) -> FastAPI:
    """The API over ``store``; ``health()`` returns db/influx/mqtt booleans and counters."""
    app = FastAPI(title="SafeWatch cloud", version="1")

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

    @app.get("/api/v1/alarms", response_model=list[AlarmOut])
    def get_alarms(
        site: str | None = None,
        gateway: str | None = None,
        level: wire.AlarmLevel | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AlarmOut]:
        try:
            records = store.alarms(site=site, gateway=gateway, level=level, limit=limit)
        except StoreError as exc:
            raise _unavailable(exc) from exc
        return [AlarmOut.model_validate(r) for r in records]

    @app.get("/api/v1/latest", response_model=list[LatestOut])
    def get_latest(site: Annotated[str, Query(min_length=1)]) -> list[LatestOut]:
        try:
            values = store.latest(site)
            known = bool(values) or site in store.sites()
        except StoreError as exc:
            raise _unavailable(exc) from exc
        if not known:
            raise HTTPException(status_code=404, detail=f"unknown site {site!r}: no data received")
        return [LatestOut.model_validate(v) for v in values]

    @app.get("/api/v1/gateways", response_model=list[GatewayOut])
    def get_gateways() -> list[GatewayOut]:
        try:
            records = store.gateways()
        except StoreError as exc:
            raise _unavailable(exc) from exc
        return [GatewayOut.model_validate(g) for g in records]

    return app
