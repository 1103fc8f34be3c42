"""The cloud's mirror of the gateways' ISA-18.2 alarm states, and the audit of the
operator actions taken on the gateways.

The gateway owns the alarm state (edge/alarm_manager.py); every change reaches the
cloud as an alarm event carrying ``state``, ``priority`` and, for operator actions,
``actor`` (kind ``alarm_state``; other audited gateway actions - calibration, reset,
lockout tests, config deploys - come as kind ``operator_action``). The ingest hands
each batch's newly stored events to :class:`AlarmMirror` (``IngestService.alarm_handlers``):

* ``alarm_states`` keeps one row per (gateway, alarm id): the ISA state
  (``unacknowledged``, ``acknowledged``, ``returned_unacknowledged``, ``normal``,
  ``shelved``, ``out_of_service``, ``suppressed``), level, priority, who acted last;
  an event older than the row never moves it back (late redelivery);
* every operator action from a gateway (who, when, why) is appended to the
  hash-chained audit log (:class:`cloud.audit.AuditLog`), actor ``<gateway>:<operator>``.

A failed handler call (database down) is logged and counted by the ingest
(``alarm_handler_errors``); the next event of that alarm brings the row up to date.
``GET /api/v1/alarms/states`` serves the rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, cast

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wire
from cloud.audit import AuditAction, AuditLog
from cloud.auth import ALL_ROLES, Guards, error_responses
from cloud.commands import AUDIT_OF
from cloud.storage import StoreError

__all__ = [
    "OPERATOR_KINDS",
    "AlarmMirror",
    "AlarmStateBase",
    "AlarmStateOut",
    "AlarmStateRecord",
    "alarm_states_router",
]

log = logging.getLogger(__name__)

# event kinds that report an action on the gateway rather than the process
OPERATOR_KINDS = frozenset({"alarm_state", "operator_action"})
# gateway-made changes (chatter suppression, shelve expiry) are not operator actions
_GATEWAY_ACTORS = frozenset({"", "gateway"})
_AUDIT_ACTIONS = {**AUDIT_OF, "config_deployed": AuditAction.CONFIG_CHANGED}


class AlarmStateBase(DeclarativeBase):
    pass


class AlarmStateRow(AlarmStateBase):
    __tablename__ = "alarm_states"
    __table_args__ = (sa.Index("ix_alarm_states_site_state", "site", "state"),)

    gateway: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    alarm_id: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    site: Mapped[str] = mapped_column(sa.String(128))
    tag: Mapped[str] = mapped_column(sa.String(256))
    kind: Mapped[str] = mapped_column(sa.String(64))
    area: Mapped[str] = mapped_column(sa.String(256))
    level: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(32))
    priority: Mapped[str] = mapped_column(sa.String(16))
    actor: Mapped[str] = mapped_column(sa.String(256))
    reason: Mapped[str] = mapped_column(sa.Text)
    message: Mapped[str] = mapped_column(sa.Text)
    since_ns: Mapped[int] = mapped_column(sa.BigInteger)
    updated_ns: Mapped[int] = mapped_column(sa.BigInteger)


_STATES = cast(sa.Table, AlarmStateRow.__table__)


@dataclass(frozen=True, slots=True)
class AlarmStateRecord:
    gateway: str
    alarm_id: str
    site: str
    tag: str
    kind: str
    area: str
    level: str
    state: str
    priority: str
    actor: str
    reason: str
    message: str
    since_ns: int
    updated_ns: int


def operator_action(event: wire.AlarmEvent) -> str | None:
    """The operator action an event reports (``acknowledge``, ``calibrate``...), or None
    for condition changes and gateway-made changes."""
    if event.kind not in OPERATOR_KINDS or event.actor in _GATEWAY_ACTORS:
        return None
    prefix = "alarm_" if event.kind == "alarm_state" else "action_"
    if not event.reason.startswith(prefix):
        return None
    return event.reason[len(prefix) :] or None


class AlarmMirror:
    """Keeps ``alarm_states`` and appends gateway operator actions to the audit log.

    Called by the ingest (in a worker thread) with each batch's new alarm events.
    """

    def __init__(self, engine: Engine, audit: AuditLog | None = None) -> None:
        self.engine = engine
        self.audit = audit
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        self._ready = False
        self._lock = threading.Lock()
        self.audited = 0

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"alarm states: {exc}") from exc

    def create_all(self) -> None:
        with self._lock, self._begin() as conn:
            AlarmStateBase.metadata.create_all(conn)
            self._ready = True

    def _ensure(self) -> None:
        if not self._ready:
            self.create_all()

    # -- from the ingest ---------------------------------------------------------------

    def __call__(self, events: Sequence[wire.AlarmEvent]) -> None:
        self.apply(events)

    def apply(self, events: Sequence[wire.AlarmEvent], *, audit: bool = True) -> int:
        """Mirror the states the events carry and audit the operator actions among them;
        how many rows changed."""
        self._ensure()
        changed = 0
        ordered = sorted(events, key=lambda e: e.ts_ns)
        with self._begin() as conn:
            for ev in ordered:
                if ev.state and ev.alarm_id:
                    changed += self._upsert(conn, ev)
        if audit and self.audit is not None:
            for ev in ordered:
                action = operator_action(ev)
                if action is not None:
                    self._audit(ev, action)
        return changed

    def _upsert(self, conn: Connection, ev: wire.AlarmEvent) -> int:
        values: dict[str, Any] = {
            "gateway": ev.gateway,
            "alarm_id": ev.alarm_id,
            "site": ev.site,
            "tag": ev.tag,
            "kind": ev.kind,
            "area": ev.area,
            "level": ev.level,
            "state": ev.state,
            "priority": ev.priority,
            "actor": ev.actor,
            "reason": ev.reason,
            "message": ev.message,
            "since_ns": ev.ts_ns,
            "updated_ns": ev.ts_ns,
        }
        stmt = self._insert(_STATES).values(**values)
        update = {
            "level": stmt.excluded.level,
            "state": stmt.excluded.state,
            "priority": stmt.excluded.priority,
            "actor": stmt.excluded.actor,
            "reason": stmt.excluded.reason,
            "message": stmt.excluded.message,
            "updated_ns": stmt.excluded.updated_ns,
        }
        if ev.kind not in OPERATOR_KINDS:  # the condition's own kind and area
            update.update(kind=stmt.excluded.kind, area=stmt.excluded.area)
        stmt = stmt.on_conflict_do_update(
            index_elements=["gateway", "alarm_id"],
            set_=update,
            where=_STATES.c.updated_ns <= stmt.excluded.updated_ns,
        )
        return int(conn.execute(stmt).rowcount or 0)

    def _audit(self, ev: wire.AlarmEvent, action: str) -> None:
        assert self.audit is not None
        try:
            self.audit.record(
                f"{ev.gateway}:{ev.actor}",
                _AUDIT_ACTIONS.get(action, action),
                f"{ev.site}/{ev.gateway}/{ev.tag}",
                {
                    "action": action,
                    "alarm_id": ev.alarm_id,
                    "at_ns": ev.ts_ns,
                    "state": ev.state,
                    "message": ev.message,
                    "seq": ev.seq,
                    "source": "gateway",
                },
            )
            self.audited += 1
        except StoreError:
            log.exception("audit of %s by %s on %s failed", action, ev.actor, ev.gateway)
            raise

    # -- reads ---------------------------------------------------------------------------

    def states(
        self,
        site: str,
        *,
        gateway: str | None = None,
        include_normal: bool = False,
        limit: int = 1000,
    ) -> list[AlarmStateRecord]:
        """The site's alarms, most urgent first (unacknowledged, then by priority, newest)."""
        self._ensure()
        t = _STATES
        query = sa.select(t).where(t.c.site == site)
        if gateway is not None:
            query = query.where(t.c.gateway == gateway)
        if not include_normal:
            query = query.where(t.c.state != "normal")
        query = query.order_by(t.c.updated_ns.desc()).limit(max(0, limit))
        with self._begin() as conn:
            rows = conn.execute(query).all()
        found = [AlarmStateRecord(**r._mapping) for r in rows]
        rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
        urgent = {"unacknowledged": 0, "returned_unacknowledged": 1}
        return sorted(
            found, key=lambda r: (urgent.get(r.state, 2), rank.get(r.priority, 4), -r.updated_ns)
        )


class AlarmStateOut(BaseModel):
    """One alarm's ISA-18.2 state as its gateway last reported it."""

    gateway: str
    alarm_id: str
    site: str
    tag: str
    kind: str
    area: str
    level: str
    state: str
    priority: str
    actor: str
    reason: str
    message: str
    since_ns: int
    updated_ns: int


def alarm_states_router(mirror: AlarmMirror, guards: Guards, prefix: str = "/api/v1") -> APIRouter:
    """``GET /api/v1/alarms/states`` (every role): the walls' list of alarms (``prefix``
    empty when included into a router that has it)."""
    router = APIRouter(prefix=prefix)

    @router.get(
        "/alarms/states",
        dependencies=[Depends(guards(*ALL_ROLES))],
        tags=["alarms"],
        response_model=list[AlarmStateOut],
        summary="The site's alarms in their ISA-18.2 states (unacknowledged first)",
        responses=error_responses(401, 403, 422, 503),
    )
    def get_alarm_states(
        site: Annotated[str, Query(min_length=1, max_length=128)],
        gateway: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        include_normal: bool = False,
        limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    ) -> list[AlarmStateOut]:
        try:
            found = mirror.states(site, gateway=gateway, include_normal=include_normal, limit=limit)
        except StoreError as exc:
            raise HTTPException(status_code=503, detail=f"store unavailable: {exc}") from exc
        return [AlarmStateOut.model_validate(r, from_attributes=True) for r in found]

    return router
