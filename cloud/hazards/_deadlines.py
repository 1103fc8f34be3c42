"""Reminders before a hazard's deadline and escalation once it is overdue.

APScheduler (3.x, a background thread) with its SQL job store in the cloud database
(table ``hazard_jobs``, made by the Alembic revision like every other table): the jobs
outlive a restart, and one that came due while the service was down fires at start
(no misfire limit, coalesced to one run). Each open hazard has two date jobs,
``hazard-<id>-remind`` (deadline minus the grade's lead time) and
``hazard-<id>-escalate`` (the deadline); a creation or transition reschedules them, a
closure removes them, and :meth:`DeadlineWatch.sync` at start adds any that are missing
(hazards made while no watch ran).

Firing is idempotent and fail-safe: :meth:`HazardService.mark_deadline` sets
``reminded_at`` / ``escalated_at`` only while the hazard is open and not yet marked,
in one transaction with its audit row, so a job that runs twice (two workers sharing
the store, a retry) writes once, and a hazard closed meanwhile is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from cloud.hazards._lifecycle import HazardGrade
from cloud.hazards._service import DeadlineKind, HazardRecord, HazardService

__all__ = [
    "DEFAULT_REMIND_BEFORE",
    "JOBS_METADATA",
    "JOBS_TABLE",
    "DeadlineNotice",
    "DeadlineWatch",
]

log = logging.getLogger(__name__)

JOBS_TABLE = "hazard_jobs"
# The job store's table as APScheduler 3.x defines it; here so Alembic owns it too.
JOBS_METADATA = sa.MetaData()
sa.Table(
    JOBS_TABLE,
    JOBS_METADATA,
    sa.Column("id", sa.Unicode(191), primary_key=True),
    sa.Column("next_run_time", sa.Float(25), index=True),
    sa.Column("job_state", sa.LargeBinary, nullable=False),
)

# How long before the deadline the reminder goes out, by grade.
DEFAULT_REMIND_BEFORE: dict[HazardGrade, dt.timedelta] = {
    HazardGrade.GENERAL: dt.timedelta(hours=12),
    HazardGrade.MAJOR: dt.timedelta(days=3),
}

# The running watches of this process by name (one name per database): what a job that
# fires looks up - a stored job holds only a function reference and plain arguments.
_WATCHES: dict[str, list[DeadlineWatch]] = {}
_WATCHES_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class DeadlineNotice:
    """A reminder or an escalation that was just recorded."""

    kind: DeadlineKind
    hazard: HazardRecord
    to: list[str]  # who is told: assignee on a reminder; supervisor/responsible on escalation


def _fire(watch: str, hazard_id: int, kind: str) -> None:
    """The job function (a module-level reference, as the SQL job store needs)."""
    with _WATCHES_LOCK:
        running = list(_WATCHES.get(watch, ()))
    if not running:
        raise RuntimeError(f"deadline job for hazard {hazard_id}: watch {watch!r} not running")
    running[0].fire(hazard_id, DeadlineKind(kind))


class _JobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """APScheduler's SQL job store, tolerant of a job another thread or worker removed.

    The scheduler's loop removes a date job after handing it to the executor; a job
    removed meanwhile (a closure's reschedule here, another worker) would raise there
    and end the loop for good. Removing what is gone is done; updating it re-adds it.
    """

    def remove_job(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            super().remove_job(job_id)

    def update_job(self, job: Any) -> None:
        try:
            super().update_job(job)
        except JobLookupError:
            super().add_job(job)


def _name_for(engine: sa.Engine) -> str:
    """The same on every start against one database (URL and schema), password left out."""
    translate = engine.get_execution_options().get("schema_translate_map") or {}
    where = f"{engine.url.render_as_string(hide_password=True)}|{translate.get(None)}"
    return "db-" + hashlib.sha256(where.encode()).hexdigest()[:16]


def job_id(hazard_id: int, kind: DeadlineKind) -> str:
    return f"hazard-{hazard_id}-{kind.value}"


class DeadlineWatch:
    """Schedules, persists and fires the deadline jobs of one :class:`HazardService`."""

    def __init__(
        self,
        hazards: HazardService,
        *,
        remind_before: dict[HazardGrade, dt.timedelta] | None = None,
        name: str | None = None,
    ) -> None:
        self.hazards = hazards
        # Stored in each job: a restarted service must look the watch up by the same name.
        self.name = name or _name_for(hazards.engine)
        self.synced = 0  # jobs sync() added at the last start
        self.remind_before = {**DEFAULT_REMIND_BEFORE, **(remind_before or {})}
        self.listeners: list[Callable[[DeadlineNotice], None]] = [_log_notice]
        self.scheduler = BackgroundScheduler(
            jobstores={"default": _JobStore(engine=hazards.engine, tablename=JOBS_TABLE)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=dt.UTC,
        )

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def start(self) -> None:
        """Start the scheduler (due jobs of earlier runs fire now) and add missing jobs."""
        with _WATCHES_LOCK:
            _WATCHES.setdefault(self.name, []).append(self)
        try:
            # Paused while the missing jobs are added: nothing fires halfway through sync().
            self.scheduler.start(paused=True)
            self.hazards.listeners.append(self.on_change)
            self.synced = self.sync()
            self.scheduler.resume()
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop firing; the jobs stay in the database for the next start."""
        if self.on_change in self.hazards.listeners:
            self.hazards.listeners.remove(self.on_change)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        with _WATCHES_LOCK:
            running = _WATCHES.get(self.name, [])
            if self in running:
                running.remove(self)
            if not running:
                _WATCHES.pop(self.name, None)

    def job_ids(self) -> set[str]:
        return {job.id for job in self.scheduler.get_jobs()}

    def sync(self) -> int:
        """Schedule the jobs missing for open hazards; returns how many were added."""
        known = self.job_ids()
        added = 0
        for hazard in self.hazards.open_hazards():
            for kind in self._due_kinds(hazard):
                if job_id(hazard.id, kind) not in known:
                    self._add(hazard, kind)
                    added += 1
        return added

    def on_change(self, hazard: HazardRecord) -> None:
        """A hazard was created or moved: (re)schedule its jobs, or drop them when closed."""
        wanted = self._due_kinds(hazard) if hazard.open else []
        for kind in DeadlineKind:
            if kind in wanted:
                self._add(hazard, kind)
            else:
                self._remove(job_id(hazard.id, kind))

    def _due_kinds(self, hazard: HazardRecord) -> list[DeadlineKind]:
        kinds = []
        if hazard.reminded_at is None:
            kinds.append(DeadlineKind.REMIND)
        if hazard.escalated_at is None:
            kinds.append(DeadlineKind.ESCALATE)
        return kinds

    def run_date(self, hazard: HazardRecord, kind: DeadlineKind) -> dt.datetime:
        if kind is DeadlineKind.ESCALATE:
            return hazard.deadline
        lead = self.remind_before.get(HazardGrade(hazard.grade), dt.timedelta(0))
        return hazard.deadline - lead

    def _add(self, hazard: HazardRecord, kind: DeadlineKind) -> None:
        self.scheduler.add_job(
            _fire,
            "date",
            run_date=self.run_date(hazard, kind),
            args=[self.name, hazard.id, kind.value],
            id=job_id(hazard.id, kind),
            name=f"{kind.value} hazard {hazard.id}",
            replace_existing=True,
        )

    def _remove(self, jid: str) -> None:
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(jid)

    def fire(self, hazard_id: int, kind: DeadlineKind) -> DeadlineNotice | None:
        """Record the reminder/escalation (once) and tell the listeners."""
        hazard = self.hazards.mark_deadline(hazard_id, kind)
        if hazard is None:
            return None
        if kind is DeadlineKind.REMIND:
            to = [hazard.assignee or hazard.responsible or "safety-engineers"]
        else:
            to = [p for p in (hazard.supervisor, hazard.responsible) if p] or ["safety-engineers"]
        notice = DeadlineNotice(kind, hazard, to)
        for listener in list(self.listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("hazard %d: deadline listener %r failed", hazard_id, listener)
        return notice


def _log_notice(notice: DeadlineNotice) -> None:
    h = notice.hazard
    what = "due soon" if notice.kind is DeadlineKind.REMIND else "OVERDUE, escalated"
    log.warning(
        "hazard %d (%s, %s, area %s) %s: deadline %s; told %s",
        h.id,
        h.grade,
        h.status,
        h.area,
        what,
        h.deadline.isoformat(),
        ", ".join(notice.to),
    )
