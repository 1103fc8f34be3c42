"""What the control-room wall shows: areas by live grade, active alarms, gateways.

One :class:`WallSnapshot` per site, recomputed at most once per ``max_age_s`` however
many walls watch (the stream of every connected wall reads the same cached snapshot),
with a ``version`` digest of its content so a stream sends only what changed.

Active alarms are derived from the stored alarm events (the cloud store keeps each
event, not the gateway's ISA-18.2 state column): per ``alarm_id``, the newest
condition event gives the level, and the state follows the gateway's lifecycle —
a raise is ``unacknowledged``, a clear of an unacknowledged alarm is
``returned_unacknowledged``, a clear of an acknowledged one ends it — while every
``alarm_state`` event (an operator action forwarded by the gateway, see
``edge.alarm_manager.AlarmForwarder``) sets the state it names. An alarm is shown
until it is back in ``normal``: condition cleared *and* acknowledged. A shelve's event
names its expiry (``... shelve by <who> until 2026-11-25T21:00:00Z: <why>: <from> ->
shelved``); the wall shows it, and the operator's reason of a shelve or an out of service.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cloud.risk import RiskService
from cloud.storage import AlarmRecord, Store

__all__ = [
    "ALARM_EVENTS_SCANNED",
    "ActiveAlarm",
    "WallArea",
    "WallGateway",
    "WallService",
    "WallSnapshot",
    "action_details",
    "active_alarms",
]

# Newest alarm events of a site read for the active list: an alarm older than this many
# events on its site (and still standing) drops off the wall; /api/v1/alarms still has it.
ALARM_EVENTS_SCANNED = 5000
ALARM_STATE_KIND = "alarm_state"
_STATES = (
    "normal",
    "unacknowledged",
    "acknowledged",
    "returned_unacknowledged",
    "shelved",
    "out_of_service",
    "suppressed",
)
_ACTIVE_LEVELS = frozenset({"alarm", "cut", "fault"})
_LEVEL_RANK = {"cut": 0, "fault": 1, "alarm": 2, "normal": 3}
_STATE_RANK = {"unacknowledged": 0, "returned_unacknowledged": 1, "acknowledged": 2}


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    alarm_id: str
    gateway: str
    tag: str
    device: str
    kind: str
    area: str
    position: str
    level: str  # the process condition: alarm / cut / fault / normal (returned)
    state: str  # ISA-18.2 state as mirrored from the gateway's events
    value: float | None
    threshold: float | None
    message: str
    since_ns: int  # the raise
    ts_ns: int  # the newest event of this alarm
    action: str  # the message of the newest operator action (alarm_state event), else ""
    shelved_until_ns: int | None = None  # while shelved: when the shelve runs out
    note: str = ""  # while shelved or out of service: the operator's reason


def _state_from_message(message: str) -> str | None:
    """The state an ``alarm_state`` event names: its message ends ``...: <from> -> <to>``."""
    _, sep, tail = message.rpartition(" -> ")
    state = tail.strip()
    return state if sep and state in _STATES else None


_UNTIL = re.compile(r" until (\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z")


def action_details(message: str) -> tuple[int | None, str]:
    """(shelve expiry in ns or None, the operator's reason) of an ``alarm_state`` message:
    ``<tag> (rule <r>) <action> by <who>[ until <UTC>][: <why>]: <from> -> <to>``."""
    head, sep, _ = message.rpartition(" -> ")
    if not sep:
        return None, ""
    head = head.rpartition(": ")[0]  # drop ": <from>"
    until = _UNTIL.search(head)
    if until is not None:
        stamp = tuple(int(g) for g in until.groups())
        expiry = calendar.timegm((*stamp, 0, 0, 0)) * 10**9
        rest = head[until.end() :]
    else:
        expiry = None
        by = head.find(" by ")
        rest = head[by + 4 :] if by >= 0 else ""
        rest = rest[rest.find(": ") :] if ": " in rest else ""
    return expiry, rest[2:].strip() if rest.startswith(": ") else ""


def active_alarms(records: Iterable[AlarmRecord]) -> list[ActiveAlarm]:
    """The alarms not back in ``normal``, worst first (level, then state, then newest).

    ``records`` in any order; events are replayed per alarm by gateway time, then by
    arrival (store id).
    """
    by_alarm: dict[str, list[AlarmRecord]] = {}
    for r in records:
        by_alarm.setdefault(r.alarm_id, []).append(r)
    out: list[ActiveAlarm] = []
    for alarm_id, events in by_alarm.items():
        events.sort(key=lambda r: (r.ts_ns, r.id))
        state = "normal"
        level = "normal"
        condition: AlarmRecord | None = None
        since = events[0].ts_ns
        action = ""
        shelved_until: int | None = None
        note = ""
        for ev in events:
            if ev.kind == ALARM_STATE_KIND:
                named = _state_from_message(ev.message)
                if named is not None:
                    state = named
                    action = ev.message
                    shelved_until, note = action_details(ev.message)
                    if state not in ("shelved", "out_of_service"):
                        shelved_until, note = None, ""
                continue
            condition = ev
            level = ev.level
            if level in _ACTIVE_LEVELS:
                if state in ("normal", "returned_unacknowledged"):
                    if state == "normal":
                        since = ev.ts_ns
                    state = "unacknowledged"
            elif state == "unacknowledged":
                state = "returned_unacknowledged"
            elif state == "acknowledged":
                state = "normal"
        if condition is None or (state == "normal" and level not in _ACTIVE_LEVELS):
            continue
        out.append(
            ActiveAlarm(
                alarm_id=alarm_id,
                gateway=condition.gateway,
                tag=condition.tag,
                device=condition.device,
                kind=condition.kind,
                area=condition.area,
                position=condition.position,
                level=level,
                state=state,
                value=condition.value,
                threshold=condition.threshold,
                message=condition.message,
                since_ns=since,
                ts_ns=events[-1].ts_ns,
                action=action,
                shelved_until_ns=shelved_until if state == "shelved" else None,
                note=note if state in ("shelved", "out_of_service") else "",
            )
        )
    out.sort(key=lambda a: (_LEVEL_RANK.get(a.level, 9), _STATE_RANK.get(a.state, 5), -a.since_ns))
    return out


@dataclass(frozen=True, slots=True)
class WallArea:
    id: str
    name: str
    polygon: list[tuple[float, float]]
    grade: str  # red / orange / yellow / blue
    static_grade: str
    points: float
    contributions: list[dict[str, Any]]  # factor, detail, points
    alarms: int  # active alarms whose area is this one


@dataclass(frozen=True, slots=True)
class WallGateway:
    gateway: str
    state: str  # online / offline / unknown
    last_seen: dt.datetime | None


@dataclass(frozen=True, slots=True)
class WallSnapshot:
    site: str
    at: dt.datetime
    risk_configured: bool
    areas: list[WallArea]
    alarms: list[ActiveAlarm]
    gateways: list[WallGateway]
    version: str  # digest of everything above but ``at``: equal versions, equal content


def _digest(areas: Sequence[WallArea], alarms: Sequence[ActiveAlarm], gws: Sequence[Any]) -> str:
    content = json.dumps(
        [
            [(a.id, a.grade, a.points, a.alarms, a.contributions) for a in areas],
            [
                (a.alarm_id, a.level, a.state, a.value, a.ts_ns, a.shelved_until_ns, a.note)
                for a in alarms
            ],
            [(g.gateway, g.state) for g in gws],
        ],
        default=str,
        sort_keys=True,
    )
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


class WallService:
    """Snapshots of one site for the wall page over the store and the risk service."""

    def __init__(self, store: Store, risk: RiskService | None = None) -> None:
        self.store = store
        self.risk = risk
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, WallSnapshot]] = {}

    def default_site(self) -> str:
        """The risk model's site, else the one site the store knows, else ``""``."""
        if self.risk is not None and self.risk.model.site:
            return self.risk.model.site
        sites = self.store.sites()
        return next(iter(sites)) if len(sites) == 1 else ""

    def known(self, site: str) -> bool:
        return bool(
            (self.risk is not None and self.risk.model.site == site) or site in self.store.sites()
        )

    def snapshot(self, site: str) -> WallSnapshot:
        """Compute now (blocking; raises ``StoreError`` when the database fails)."""
        alarms = active_alarms(self.store.alarms(site=site, limit=ALARM_EVENTS_SCANNED))
        per_area: dict[str, int] = {}
        for a in alarms:
            per_area[a.area] = per_area.get(a.area, 0) + 1
        areas: list[WallArea] = []
        risk = self.risk
        configured = risk is not None and risk.model.site in ("", site)
        if risk is not None and configured:
            for area in risk.heatmap():
                areas.append(
                    WallArea(
                        id=area.id,
                        name=area.name or area.id,
                        polygon=list(area.polygon),
                        grade=area.grade.colour,
                        static_grade=area.static_grade.colour,
                        points=area.points,
                        contributions=[
                            {"factor": c.factor, "detail": c.detail, "points": c.points}
                            for c in area.contributions
                        ],
                        alarms=per_area.get(area.id, 0),
                    )
                )
        gateways = [
            WallGateway(g.gateway, g.state, g.last_seen)
            for g in self.store.gateways()
            if g.site == site
        ]
        return WallSnapshot(
            site=site,
            at=dt.datetime.now(dt.UTC),
            risk_configured=configured,
            areas=areas,
            alarms=alarms,
            gateways=gateways,
            version=_digest(areas, alarms, gateways),
        )

    def cached(self, site: str, max_age_s: float) -> WallSnapshot:
        """The snapshot of ``site`` no older than ``max_age_s``; one computation at a time."""
        with self._lock:
            hit = self._cache.get(site)
            now = time.monotonic()
            if hit is not None and now - hit[0] < max_age_s:
                return hit[1]
            snap = self.snapshot(site)
            self._cache[site] = (time.monotonic(), snap)
            if len(self._cache) > 16:  # sites asked for that are not this cloud's
                oldest = min(self._cache, key=lambda k: self._cache[k][0])
                del self._cache[oldest]
            return snap
