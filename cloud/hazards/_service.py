"""Hazards: their tables, the closed-loop service and the KPIs (blocking; call from threads).

Every transition is checked twice, by the lifecycle (does it exist from this status?)
and by the role table (may this caller fire it?), written with an optimistic check on
the previous status (two racing callers cannot both move one hazard), and recorded
in the hash-chained audit log (who, when, event, before/after).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloud.audit import AuditAction, AuditLog
from cloud.auth import Role
from cloud.hazards._lifecycle import (
    ROLES_FOR,
    HazardEvent,
    HazardGrade,
    HazardStatus,
    TransitionNotAllowed,
    next_status,
)
from cloud.storage import StoreError

__all__ = [
    "DEADLINE_ACTOR",
    "DEFAULT_DEADLINES",
    "DeadlineKind",
    "EvidenceRecord",
    "HazardBase",
    "HazardError",
    "HazardFilter",
    "HazardForbidden",
    "HazardIn",
    "HazardKpis",
    "HazardNotFound",
    "HazardRecord",
    "HazardService",
    "InvalidTransition",
]

log = logging.getLogger(__name__)

# Rectification deadline from discovery, by grade (site settings may override).
DEFAULT_DEADLINES: dict[HazardGrade, dt.timedelta] = {
    HazardGrade.GENERAL: dt.timedelta(hours=72),
    HazardGrade.MAJOR: dt.timedelta(days=15),
}
DEADLINE_ACTOR = "deadline-watch"
MAX_EVIDENCE_BYTES = 20 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    """Stored as UTC (SQLite keeps no offset); naive means UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # year 1 or 9999 with an offset
        return value.replace(tzinfo=dt.UTC)


class DeadlineKind(enum.StrEnum):
    REMIND = "remind"  # the deadline is near
    ESCALATE = "escalate"  # the deadline has passed


class HazardError(Exception):
    """A hazard request that cannot be done (the API maps subclasses to status codes)."""


class HazardNotFound(HazardError):
    pass


class HazardForbidden(HazardError):
    pass


class InvalidTransition(HazardError):
    pass


class HazardBase(DeclarativeBase):
    pass


class HazardRow(HazardBase):
    __tablename__ = "hazards"
    __table_args__ = (
        sa.Index("ix_hazards_status_deadline", "status", "deadline"),
        sa.Index("ix_hazards_area", "area"),
        sa.UniqueConstraint("dedup_key", name="uq_hazards_dedup_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(sa.String(256))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    site: Mapped[str] = mapped_column(sa.String(128), default="")
    area: Mapped[str] = mapped_column(sa.String(256))
    kind: Mapped[str] = mapped_column(sa.String(64), default="manual")
    grade: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16))
    source: Mapped[str] = mapped_column(sa.String(32), default="manual")
    dedup_key: Mapped[str | None] = mapped_column(sa.String(256))  # automatic hazards
    found_by: Mapped[str] = mapped_column(sa.String(128))
    found_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    deadline: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    assignee: Mapped[str | None] = mapped_column(sa.String(128))
    responsible: Mapped[str | None] = mapped_column(sa.String(128))
    supervisor: Mapped[str | None] = mapped_column(sa.String(128))
    plan: Mapped[str | None] = mapped_column(sa.Text)
    rectification: Mapped[str | None] = mapped_column(sa.Text)
    review_note: Mapped[str | None] = mapped_column(sa.Text)
    rejections: Mapped[int] = mapped_column(sa.Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Set once by the deadline watch (cloud/hazards/_deadlines.py); a new deadline clears them.
    reminded_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    escalated_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class EvidenceRow(HazardBase):
    __tablename__ = "hazard_evidence"
    __table_args__ = (sa.UniqueConstraint("hazard_id", "sha256", name="uq_hazard_evidence"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    hazard_id: Mapped[int] = mapped_column(sa.ForeignKey("hazards.id"), index=True)
    filename: Mapped[str] = mapped_column(sa.String(256))
    content_type: Mapped[str] = mapped_column(sa.String(128))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    uploaded_by: Mapped[str] = mapped_column(sa.String(128))
    uploaded_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


_HAZARDS = cast(sa.Table, HazardRow.__table__)
_EVIDENCE = cast(sa.Table, EvidenceRow.__table__)


@dataclass(frozen=True, slots=True)
class HazardIn:
    title: str
    area: str
    grade: HazardGrade
    description: str = ""
    site: str = ""
    kind: str = "manual"
    deadline: dt.datetime | None = None
    plan: str | None = None
    responsible: str | None = None
    supervisor: str | None = None


@dataclass(frozen=True, slots=True)
class HazardRecord:
    id: int
    title: str
    description: str
    site: str
    area: str
    kind: str
    grade: str
    status: str
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
    reminded_at: dt.datetime | None = None
    escalated_at: dt.datetime | None = None

    @property
    def open(self) -> bool:
        return self.status != HazardStatus.CLOSED


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    id: int
    hazard_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HazardFilter:
    area: str | None = None
    grade: HazardGrade | None = None
    status: HazardStatus | None = None
    kind: str | None = None
    overdue: bool | None = None


@dataclass(frozen=True, slots=True)
class HazardKpis:
    total: int
    closed: int
    open: int
    overdue: int
    rectification_rate: float | None  # closed / total
    on_time_rate: float | None  # closed by the deadline / closed
    mean_time_to_close_h: float | None
    by_area: dict[str, int] = field(default_factory=dict)  # open hazards per area


# The columns of a HazardRecord, in its field order (``overdue`` is computed): selected by
# every read, so that a row becomes a record by position (a page of 50 in ~0.5 ms, not
# 2.5 ms by column name).
_RECORD_COLUMNS = (
    "id", "title", "description", "site", "area", "kind", "grade", "status", "source",
    "found_by", "found_at", "deadline", "assignee", "responsible", "supervisor", "plan",
    "rectification", "review_note", "rejections", "updated_at", "closed_at", "reminded_at",
    "escalated_at",
)  # fmt: skip
_SELECT_RECORD = sa.select(*(_HAZARDS.c[name] for name in _RECORD_COLUMNS))
_CLOSED = HazardStatus.CLOSED.value


def _record(row: Any, now: dt.datetime) -> HazardRecord:
    """A row of ``_SELECT_RECORD`` as a record (naive datetimes from SQLite are UTC)."""
    (
        id_, title, description, site, area, kind, grade, status, source, found_by, found_at,
        deadline, assignee, responsible, supervisor, plan, rectification, review_note,
        rejections, updated_at, closed_at, reminded_at, escalated_at,
    ) = row  # fmt: skip
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=dt.UTC)
    return HazardRecord(
        id_,
        title,
        description,
        site,
        area,
        kind,
        grade,
        status,
        source,
        found_by,
        _utc_aware(found_at),
        deadline,
        assignee,
        responsible,
        supervisor,
        plan,
        rectification,
        review_note,
        rejections,
        _utc_aware(updated_at),
        _aware(closed_at),
        status != _CLOSED and now > deadline,
        _aware(reminded_at),
        _aware(escalated_at),
    )


def _utc_aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class HazardService:
    """Hazards on a SQLAlchemy engine (the cloud store's), evidence files under ``evidence_dir``."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        evidence_dir: Path,
        *,
        deadlines: dict[HazardGrade, dt.timedelta] | None = None,
        clock: Any = _utcnow,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.evidence_dir = Path(evidence_dir)
        self.deadlines = {**DEFAULT_DEADLINES, **(deadlines or {})}
        self._clock = clock
        # Called after each committed creation, regrade or transition (the deadline watch).
        self.listeners: list[Callable[[HazardRecord], None]] = []
        self._version = 0

    @property
    def version(self) -> int:
        """Counts the changes this service committed (a page cache's check); changes
        made by another process are not counted."""
        return self._version

    def _changed(self, record: HazardRecord) -> None:
        self._version += 1
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception:  # a listener's fault never undoes a committed change
                log.exception("hazard %d: listener %r failed", record.id, listener)

    def now(self) -> dt.datetime:
        value: dt.datetime = self._clock()
        return value

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"hazards: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            HazardBase.metadata.create_all(conn)

    # -- creation ---------------------------------------------------------------------------

    def create(
        self,
        data: HazardIn,
        actor: str,
        *,
        source: str = "manual",
        dedup_key: str | None = None,
    ) -> tuple[HazardRecord, bool]:
        """Record a found hazard; returns (hazard, created). With ``dedup_key``, an open
        hazard of the same key is returned instead of a second one - raised to ``major``
        (audited, event ``regrade``) when the repeat is major and it was general: a
        methane alarm that goes on to a cut makes its open hazard major. A grade is
        never lowered by a repeat, and the deadline it has stands."""
        now = self.now()
        found_at = now
        deadline = data.deadline or found_at + self.deadlines[data.grade]
        deadline = _utc(deadline)
        values = {
            "title": data.title,
            "description": data.description,
            "site": data.site,
            "area": data.area,
            "kind": data.kind,
            "grade": data.grade.value,
            "status": HazardStatus.FOUND.value,
            "source": source,
            "dedup_key": dedup_key,
            "found_by": actor,
            "found_at": found_at,
            "deadline": deadline,
            "plan": data.plan,
            "responsible": data.responsible,
            "supervisor": data.supervisor,
            "rejections": 0,
            "updated_at": now,
        }

        def work(conn: Connection) -> tuple[HazardRecord, bool, bool]:
            # The hazard and its audit row in one transaction: both or neither. A racing
            # twin of an automatic hazard (unique dedup_key) starts this again and finds it.
            if dedup_key is not None:
                row = conn.execute(_SELECT_RECORD.where(_HAZARDS.c.dedup_key == dedup_key)).first()
                if row is not None:
                    if data.grade is HazardGrade.MAJOR and row.grade != HazardGrade.MAJOR.value:
                        raised = self._raise_grade(conn, row, data, actor, source, now)
                        return raised, False, True
                    return _record(row, now), False, False
            key = conn.execute(sa.insert(_HAZARDS).values(**values)).inserted_primary_key
            assert key is not None
            record = _record(conn.execute(_SELECT_RECORD.where(_HAZARDS.c.id == key[0])).one(), now)
            self.audit.append(
                conn,
                actor,
                AuditAction.HAZARD_TRANSITION,
                f"hazard:{record.id}",
                {
                    "event": "found",
                    "before": None,
                    "after": HazardStatus.FOUND.value,
                    "grade": record.grade,
                    "area": record.area,
                    "source": source,
                    "deadline": record.deadline.isoformat(),
                },
            )
            return record, True, True

        record, created, changed = self.audit.atomic(work, "hazards")
        if changed:
            self._changed(record)
        return record, created

    def _raise_grade(
        self,
        conn: Connection,
        row: Any,
        data: HazardIn,
        actor: str,
        source: str,
        now: dt.datetime,
    ) -> HazardRecord:
        """In ``conn``'s transaction: ``row`` raised to ``data``'s grade (and title: it names
        the worse condition), with its audit row."""
        conn.execute(
            sa.update(_HAZARDS)
            .where(_HAZARDS.c.id == row.id)
            .values(grade=data.grade.value, title=data.title, updated_at=now)
        )
        after = _record(conn.execute(_SELECT_RECORD.where(_HAZARDS.c.id == row.id)).one(), now)
        self.audit.append(
            conn,
            actor,
            AuditAction.HAZARD_TRANSITION,
            f"hazard:{row.id}",
            {
                "event": "regrade",
                "before": row.status,
                "after": after.status,
                "source": source,
                "changed": {"grade": [row.grade, after.grade], "title": [row.title, after.title]},
            },
        )
        return after

    # -- reading ----------------------------------------------------------------------------

    def get(self, hazard_id: int) -> HazardRecord:
        with self._begin() as conn:
            row = conn.execute(_SELECT_RECORD.where(_HAZARDS.c.id == hazard_id)).first()
        if row is None:
            raise HazardNotFound(f"no hazard {hazard_id}")
        return _record(row, self.now())

    def _where(self, flt: HazardFilter, now: dt.datetime) -> list[Any]:
        c = _HAZARDS.c
        where: list[Any] = []
        if flt.area is not None:
            where.append(c.area == flt.area)
        if flt.grade is not None:
            where.append(c.grade == flt.grade.value)
        if flt.status is not None:
            where.append(c.status == flt.status.value)
        if flt.kind is not None:
            where.append(c.kind == flt.kind)
        if flt.overdue is True:
            where += [c.status != HazardStatus.CLOSED.value, c.deadline < now]
        elif flt.overdue is False:
            where.append(sa.or_(c.status == HazardStatus.CLOSED.value, c.deadline >= now))
        return where

    def find(
        self,
        flt: HazardFilter | None = None,
        *,
        offset: int = 0,
        limit: int = 100,
        before: int | None = None,
    ) -> tuple[list[HazardRecord], int]:
        """One page of hazards (newest first) and the total matching count.

        ``before`` (a hazard id: the last of the previous page) pages by key - the index
        finds the page wherever it is, where ``offset`` walks over every row before it."""
        now = self.now()
        where = self._where(flt or HazardFilter(), now)
        page = _SELECT_RECORD.where(*where)
        if before is not None:
            page = page.where(_HAZARDS.c.id < before)
        with self._begin() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(_HAZARDS).where(*where)
            ).scalar_one()
            rows = conn.execute(
                page.order_by(_HAZARDS.c.id.desc()).offset(offset).limit(limit)
            ).all()
        return [_record(r, now) for r in rows], int(total)

    def change_marker(self) -> tuple[object, ...]:
        """A cheap summary that changes when the open hazards or their overdue flags may
        have changed - by any process: the newest change, the count of hazards and of open
        ones past their deadline now."""
        c = _HAZARDS.c
        overdue = sa.func.sum(
            sa.case((sa.and_(c.status != _CLOSED, c.deadline < self.now()), 1), else_=0)
        )
        with self._begin() as conn:
            row = conn.execute(sa.select(sa.func.max(c.updated_at), sa.func.count(), overdue)).one()
        return (row[0], row[1], row[2] or 0)

    def open_hazards(self) -> list[HazardRecord]:
        """Every hazard not closed (for the risk service)."""
        now = self.now()
        with self._begin() as conn:
            rows = conn.execute(_SELECT_RECORD.where(_HAZARDS.c.status != _CLOSED)).all()
        return [_record(r, now) for r in rows]

    def evidence(self, hazard_id: int) -> list[EvidenceRecord]:
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(_EVIDENCE)
                .where(_EVIDENCE.c.hazard_id == hazard_id)
                .order_by(_EVIDENCE.c.id)
            ).all()
        return [
            EvidenceRecord(
                id=r.id,
                hazard_id=r.hazard_id,
                filename=r.filename,
                content_type=r.content_type,
                size=r.size,
                sha256=r.sha256,
                uploaded_by=r.uploaded_by,
                uploaded_at=_aware(r.uploaded_at) or r.uploaded_at,
            )
            for r in rows
        ]

    def kpis(self, flt: HazardFilter | None = None) -> HazardKpis:
        now = self.now()
        where = self._where(flt or HazardFilter(), now)
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(
                    _HAZARDS.c.area,
                    _HAZARDS.c.status,
                    _HAZARDS.c.found_at,
                    _HAZARDS.c.deadline,
                    _HAZARDS.c.closed_at,
                ).where(*where)
            ).all()
        total = len(rows)
        closed = [r for r in rows if r.status == HazardStatus.CLOSED.value]
        on_time = 0
        hours = 0.0
        overdue = 0
        by_area: dict[str, int] = {}
        for r in rows:
            deadline = _aware(r.deadline)
            assert deadline is not None
            if r.status == HazardStatus.CLOSED.value:
                closed_at = _aware(r.closed_at)
                found_at = _aware(r.found_at)
                assert closed_at is not None and found_at is not None
                on_time += closed_at <= deadline
                hours += (closed_at - found_at).total_seconds() / 3600
            else:
                by_area[r.area] = by_area.get(r.area, 0) + 1
                overdue += now > deadline
        return HazardKpis(
            total=total,
            closed=len(closed),
            open=total - len(closed),
            overdue=overdue,
            rectification_rate=len(closed) / total if total else None,
            on_time_rate=on_time / len(closed) if closed else None,
            mean_time_to_close_h=hours / len(closed) if closed else None,
            by_area=by_area,
        )

    # -- the closed loop --------------------------------------------------------------------

    def transition(
        self,
        hazard_id: int,
        event: HazardEvent,
        actor: str,
        role: Role,
        *,
        assignee: str | None = None,
        plan: str | None = None,
        responsible: str | None = None,
        supervisor: str | None = None,
        deadline: dt.datetime | None = None,
        note: str | None = None,
    ) -> HazardRecord:
        """Fire ``event`` on a hazard as ``actor`` holding ``role``.

        Raises HazardForbidden (role may not), InvalidTransition (not from this status,
        or a required field is missing), HazardNotFound, StoreError.
        """
        if role not in ROLES_FOR[event]:
            allowed = ", ".join(sorted(ROLES_FOR[event]))
            raise HazardForbidden(f"role {role} may not {event} a hazard (needs {allowed})")
        before = self.get(hazard_id)
        try:
            after_status = next_status(HazardStatus(before.status), event)
        except TransitionNotAllowed as exc:
            raise InvalidTransition(
                f"hazard {hazard_id} is {before.status}: cannot {event} it"
            ) from exc
        now = self.now()
        changes: dict[str, Any] = {"status": after_status.value, "updated_at": now}
        if event is HazardEvent.ASSIGN:
            if not assignee:
                raise InvalidTransition("assign needs an assignee")
            changes["assignee"] = assignee
            for name, value in (
                ("plan", plan),
                ("responsible", responsible),
                ("supervisor", supervisor),
            ):
                if value:
                    changes[name] = value
            if deadline is not None:
                changes["deadline"] = _utc(deadline)
                changes["reminded_at"] = None  # the new deadline gets its own reminder
                changes["escalated_at"] = None
            if before.grade == HazardGrade.MAJOR:
                missing = [
                    name
                    for name in ("plan", "responsible", "supervisor")
                    if not changes.get(name, getattr(before, name))
                ]
                if missing:
                    raise InvalidTransition(
                        f"a major hazard needs {', '.join(missing)} before it is assigned"
                    )
        elif event is HazardEvent.RECTIFY:
            if not self.evidence(hazard_id):
                raise InvalidTransition("rectify needs at least one evidence file first")
            changes["rectification"] = note or ""
        elif event in (HazardEvent.APPROVE, HazardEvent.REJECT):
            changes["review_note"] = note or ""
            if event is HazardEvent.REJECT:
                changes["rejections"] = before.rejections + 1
        elif event is HazardEvent.CLOSE:
            changes["closed_at"] = now
            changes["dedup_key"] = None  # a later occurrence is a new hazard

        def work(conn: Connection) -> HazardRecord:
            # The new status and its audit row in one transaction: both or neither.
            done = conn.execute(
                sa.update(_HAZARDS)
                .where(_HAZARDS.c.id == hazard_id, _HAZARDS.c.status == before.status)
                .values(**changes)
            ).rowcount
            if done != 1:
                raise InvalidTransition(f"hazard {hazard_id} changed meanwhile: try again")
            row = conn.execute(_SELECT_RECORD.where(_HAZARDS.c.id == hazard_id)).one()
            after = _record(row, now)
            self.audit.append(
                conn,
                actor,
                AuditAction.HAZARD_TRANSITION,
                f"hazard:{hazard_id}",
                {
                    "event": event.value,
                    "role": role.value,
                    "before": before.status,
                    "after": after.status,
                    "changed": {
                        k: (v.isoformat() if isinstance(v, dt.datetime) else v)
                        for k, v in changes.items()
                        if k != "updated_at"
                    },
                },
            )
            return after

        after = self.audit.atomic(work, "hazards")
        self._changed(after)
        return after

    def mark_deadline(self, hazard_id: int, kind: DeadlineKind) -> HazardRecord | None:
        """Record a reminder or an escalation once, with its audit row (one transaction).

        None when there is nothing to do: the hazard is closed or gone, already marked,
        or (escalation) not overdue after all (its deadline moved).
        """
        now = self.now()
        c = _HAZARDS.c
        column = c.reminded_at if kind is DeadlineKind.REMIND else c.escalated_at
        where = [c.id == hazard_id, c.status != HazardStatus.CLOSED.value, column.is_(None)]
        if kind is DeadlineKind.ESCALATE:
            where.append(c.deadline <= now)
        action = (
            AuditAction.HAZARD_REMINDER
            if kind is DeadlineKind.REMIND
            else AuditAction.HAZARD_ESCALATED
        )

        def work(conn: Connection) -> HazardRecord | None:
            done = conn.execute(sa.update(_HAZARDS).where(*where).values({column.name: now}))
            if done.rowcount != 1:
                return None
            record = _record(conn.execute(_SELECT_RECORD.where(c.id == hazard_id)).one(), now)
            self.audit.append(
                conn,
                DEADLINE_ACTOR,
                action,
                f"hazard:{hazard_id}",
                {
                    "deadline": record.deadline.isoformat(),
                    "grade": record.grade,
                    "status": record.status,
                    "assignee": record.assignee,
                    "responsible": record.responsible,
                    "supervisor": record.supervisor,
                },
            )
            return record

        marked = self.audit.atomic(work, "hazards")
        if marked is not None:
            self._version += 1  # reminded_at / escalated_at are shown
        return marked

    def add_evidence(
        self,
        hazard_id: int,
        filename: str,
        content_type: str,
        data: bytes,
        actor: str,
        role: Role,
    ) -> EvidenceRecord:
        """Store a photo/document for an assigned hazard as a file named by its SHA-256."""
        if role not in ROLES_FOR[HazardEvent.RECTIFY]:
            raise HazardForbidden(f"role {role} may not add rectification evidence")
        hazard = self.get(hazard_id)
        if hazard.status != HazardStatus.ASSIGNED:
            raise InvalidTransition(
                f"hazard {hazard_id} is {hazard.status}: evidence is added while assigned"
            )
        if not data:
            raise InvalidTransition("empty evidence file")
        if len(data) > MAX_EVIDENCE_BYTES:
            raise InvalidTransition(f"evidence file over {MAX_EVIDENCE_BYTES} bytes")
        digest = hashlib.sha256(data).hexdigest()
        path = self.evidence_path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        except OSError as exc:
            raise StoreError(f"evidence store {self.evidence_dir}: {exc}") from exc
        name = _SAFE_NAME.sub("_", filename)[-200:] or "evidence"
        now = self.now()

        def work(conn: Connection) -> None:
            # The evidence row and its audit row in one transaction: both or neither.
            known = conn.execute(
                sa.select(_EVIDENCE.c.id).where(
                    _EVIDENCE.c.hazard_id == hazard_id, _EVIDENCE.c.sha256 == digest
                )
            ).first()
            if known is None:
                conn.execute(
                    sa.insert(_EVIDENCE).values(
                        hazard_id=hazard_id,
                        filename=name,
                        content_type=content_type[:128],
                        size=len(data),
                        sha256=digest,
                        uploaded_by=actor,
                        uploaded_at=now,
                    )
                )
            self.audit.append(
                conn,
                actor,
                AuditAction.HAZARD_TRANSITION,
                f"hazard:{hazard_id}",
                {
                    "event": "evidence",
                    "before": hazard.status,
                    "after": hazard.status,
                    "sha256": digest,
                    "size": len(data),
                    "filename": name,
                },
            )

        self.audit.atomic(work, "hazards")
        return next(e for e in self.evidence(hazard_id) if e.sha256 == digest)

    def evidence_path(self, digest: str) -> Path:
        return self.evidence_dir / digest[:2] / digest
