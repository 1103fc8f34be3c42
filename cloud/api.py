"""The cloud HTTP API (FastAPI): health, alarm history, latest values, gateways.

Handlers are plain functions: FastAPI runs them in its thread pool, which is where
the blocking :class:`cloud.storage.Store` belongs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

import wire
from cloud.storage import AlarmRecord, LatestValue, Store, StoreError

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


class AlarmOut(BaseModel):
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
    ts: str
    ts_ns: int
    received_at: dt.datetime

    @classmethod
    def of(cls, r: AlarmRecord) -> AlarmOut:
        return cls(
            id=r.id,
            site=r.site,
            gateway=r.gateway,
            seq=r.seq,
            alarm_id=r.alarm_id,
            tag=r.tag,
            device=r.device,
            kind=r.kind,
            area=r.area,
            position=r.position,
            level=r.level,
            previous=r.previous,
            value=r.value,
            threshold=r.threshold,
            message=r.message,
            actuators=r.actuators,
            ts=iso_utc(r.ts_ns),
            ts_ns=r.ts_ns,
            received_at=r.received_at,
        )


class LatestOut(BaseModel):
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
    ts: str
    ts_ns: int

    @classmethod
    def of(cls, v: LatestValue) -> LatestOut:
        return cls(
            tag=v.tag,
            device=v.device,
            gateway=v.gateway,
            kind=v.kind,
            unit=v.unit,
            area=v.area,
            position=v.position,
            value=v.value,
            quality=v.quality,
            reason=v.reason,
            ts=iso_utc(v.ts_ns),
            ts_ns=v.ts_ns,
        )


class GatewayOut(BaseModel):
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
        return [AlarmOut.of(r) for r in records]

    @app.get("/api/v1/latest", response_model=list[LatestOut])
    def get_latest(site: Annotated[str, Query(min_length=1)]) -> list[LatestOut]:
        try:
            values = store.latest(site)
            known = bool(values) or site in store.sites()
        except StoreError as exc:
            raise _unavailable(exc) from exc
        if not known:
            raise HTTPException(status_code=404, detail=f"unknown site {site!r}: no data received")
        return [LatestOut.of(v) for v in values]

    @app.get("/api/v1/gateways", response_model=list[GatewayOut])
    def get_gateways() -> list[GatewayOut]:
        try:
            records = store.gateways()
        except StoreError as exc:
            raise _unavailable(exc) from exc
        return [
            GatewayOut(
                gateway=g.gateway,
                site=g.site,
                state=g.state,
                version=g.version,
                last_seq=g.last_seq,
                gaps=g.gaps,
                dropped=g.dropped,
                last_seen=g.last_seen,
            )
            for g in records
        ]

    return app
