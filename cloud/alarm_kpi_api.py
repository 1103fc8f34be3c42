"""``GET /api/v1/alarms/kpi``: EEMUA 191 / ISA-18.2 alarm-rate figures for the walls.

Computed from the stored alarm events with the same arithmetic as
``safewatch alarms kpi`` on a gateway (:mod:`wire.alarm_kpi`). A raise is an event
whose previous level was ``normal``; gateways' ``alarm_state`` events with reason
``alarm_suppress`` name the alarms suppressed for chattering.
"""

# No ``from __future__ import annotations``: FastAPI must see the Annotated guards evaluated.

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from cloud.auth import ALL_ROLES, Guards, error_responses
from cloud.storage import Store
from wire.alarm_kpi import alarm_kpis

__all__ = ["alarm_kpi_router"]

MAX_EVENTS = 100_000


def alarm_kpi_router(store: Store, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    readers = [Depends(guards(*ALL_ROLES))]

    @router.get(
        "/alarms/kpi",
        dependencies=readers,
        tags=["alarms"],
        summary="Alarm rates per operator per 10 min, flood share, top 10, chattering, standing",
        responses=error_responses(401, 403, 422, 503),
    )
    def get_alarm_kpi(
        site: Annotated[str, Query(min_length=1, max_length=128)],
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 12.0,
        operators: Annotated[int, Query(ge=1, le=100)] = 1,
        until_ns: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    ) -> dict[str, Any]:
        end = time.time_ns() if until_ns is None else until_ns
        start = end - int(hours * 3600e9)
        records = store.alarms(site=site, limit=MAX_EVENTS)
        raises: list[tuple[int, str]] = []
        suppressed: list[str] = []
        latest: dict[str, tuple[int, str, str]] = {}  # alarm id -> (ts, key, level)
        first: dict[str, int] = {}
        floods = 0
        for r in sorted(records, key=lambda r: (r.ts_ns, r.id)):
            key = f"{r.gateway}|{r.tag}|{r.kind}"
            if r.kind == "flood":  # the gateway's flood summary is not an alarm of its own
                if start <= r.ts_ns < end and r.level != "normal":
                    floods += 1
                continue
            if r.kind == "alarm_state":
                if start <= r.ts_ns < end and ") suppress by " in r.message:
                    suppressed.append(f"{r.gateway}|{r.tag}")
                continue
            first.setdefault(r.alarm_id, r.ts_ns)
            latest[r.alarm_id] = (r.ts_ns, key, r.level)
            if r.previous == "normal" and r.level != "normal":
                raises.append((r.ts_ns, key))
        standing = [
            (key, first[alarm_id])
            for alarm_id, (_, key, level) in latest.items()
            if level != "normal"
        ]
        figures = alarm_kpis(
            raises, start, end, operators=operators, suppressed=suppressed, standing=standing
        )
        figures["flood_summaries"] = floods
        figures["events_considered"] = len(records)
        figures["truncated"] = len(records) >= MAX_EVENTS
        return figures

    # the mirrored alarm states (cloud/alarm_states.py) belong to the same walls
    from cloud.alarm_states import AlarmMirror, alarm_states_router

    router.include_router(alarm_states_router(AlarmMirror(store.engine), guards, prefix=""))
    return router
