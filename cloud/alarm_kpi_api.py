"""``GET /api/v1/alarms/kpi``: EEMUA 191 / ISA-18.2 alarm-rate figures for the walls.

Computed from the stored alarm events with the same arithmetic as
``safewatch alarms kpi`` on a gateway (:mod:`wire.alarm_kpi`), counting what the
gateway counts (:func:`raises_of`): a raise is an alarm (by its stable ``alarm_id``)
going from not active to active while annunciated. A condition a restarted gateway
re-reports (``previous`` normal again, but the same alarm id, still active) is the same
alarm and not a new raise; nor is a raise while the alarm is shelved, out of service or
suppressed. Gateways' ``alarm_state`` events name those states and the alarms
suppressed for chattering.

EEMUA 191 counts alarms per operator: ``consoles`` has the figures per operator console
(the console each event carries, from the site files' ``alarms.consoles``; a console
spanning gateways adds their raises up; events of older gateways count for their
gateway). The top-level figures are the site's, divided by ``operators``.
"""

# No ``from __future__ import annotations``: FastAPI must see the Annotated guards evaluated.

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from cloud.auth import ALL_ROLES, Guards, error_responses
from cloud.storage import AlarmRecord, Store
from wire.alarm_kpi import alarm_kpis, console_kpis

__all__ = ["RaiseCount", "alarm_kpi_router", "raises_of"]

MAX_EVENTS = 100_000
_ACTIVE = frozenset({"alarm", "cut", "fault"})
# ISA-18.2 states in which a raise is not annunciated (the gateway does not count it)
_SILENT = frozenset({"shelved", "out_of_service", "suppressed"})


@dataclass(frozen=True, slots=True)
class RaiseCount:
    # (ts_ns, gateway|tag|kind, operator console) of each raise; the console is the one the
    # gateway named (alarms.consoles), else the gateway (older gateways)
    raises: list[tuple[int, str, str]]
    suppressed: list[str]  # gateway|tag of the alarms suppressed for chattering
    standing: list[tuple[str, int]]  # (key, active since) of the alarms active at the end
    floods: int  # flood summaries started in the period
    flooded: dict[str, int]  # the same, per operator console


def _named_state(message: str) -> str:
    """The state an ``alarm_state`` event's message names (``...: <from> -> <to>``)."""
    _, sep, tail = message.rpartition(" -> ")
    return tail.strip() if sep else ""


def raises_of(records: Iterable[AlarmRecord], start_ns: int, end_ns: int) -> RaiseCount:
    """Replay a site's stored alarm events per alarm id (gateway time, then arrival).

    An event is a raise when its alarm was not active before it (by the alarm's own
    earlier events, whatever their ``previous`` says) and it is annunciated: a restarted
    gateway re-reports an active condition as ``normal -> cut`` under the same alarm id,
    and that is no new alarm. Events of alarms whose earlier events fell out of the scan
    count as raises when their ``previous`` is ``normal``.
    """
    raises: list[tuple[int, str, str]] = []
    flooded: dict[str, int] = {}
    suppressed: list[str] = []
    active: dict[tuple[str, str], bool] = {}  # (gateway, alarm id) -> active now
    state: dict[tuple[str, str], str] = {}  # (gateway, alarm id) -> ISA state named last
    latest: dict[tuple[str, str], tuple[str, int]] = {}  # active alarm -> (key, since)
    floods = 0
    for r in sorted(records, key=lambda r: (r.ts_ns, r.id)):
        if r.ts_ns >= end_ns:
            break  # the figures are those of the period: standing at its end
        ident = (r.gateway, r.alarm_id)
        inside = start_ns <= r.ts_ns
        console = r.console or r.gateway
        if r.kind == "flood":  # the gateway's flood summary is not an alarm of its own
            if inside and r.level != "normal":
                floods += 1
                flooded[console] = flooded.get(console, 0) + 1
            continue
        if r.kind == "alarm_state":
            named = _named_state(r.message)
            if named:
                state[ident] = named
            if inside and ") suppress by " in r.message:
                suppressed.append(f"{r.gateway}|{r.tag}")
            continue
        now_active = r.level in _ACTIVE
        was_active = active.get(ident, r.previous in _ACTIVE)
        key = f"{r.gateway}|{r.tag}|{r.kind}"
        if now_active:
            if not was_active and state.get(ident) not in _SILENT:
                raises.append((r.ts_ns, key, console))
            latest.setdefault(ident, (key, r.ts_ns))
        else:
            latest.pop(ident, None)
        active[ident] = now_active
    return RaiseCount(raises, suppressed, list(latest.values()), floods, flooded)


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
        counted = raises_of(records, start, end)
        figures = alarm_kpis(
            [(ts, key) for ts, key, _ in counted.raises],
            start,
            end,
            operators=operators,
            suppressed=counted.suppressed,
            standing=counted.standing,
        )
        figures["consoles"] = [
            {**row, "flood_summaries": counted.flooded.get(row["console"], 0)}
            for row in console_kpis(counted.raises, start, end)
        ]
        figures["flood_summaries"] = counted.floods
        figures["events_considered"] = len(records)
        figures["truncated"] = len(records) >= MAX_EVENTS
        return figures

    # the mirrored alarm states (cloud/alarm_states.py) belong to the same walls
    from cloud.alarm_states import AlarmMirror, alarm_states_router

    router.include_router(alarm_states_router(AlarmMirror(store.engine), guards, prefix=""))
    return router
