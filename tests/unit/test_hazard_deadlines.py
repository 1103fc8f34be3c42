"""Reminders before a hazard's deadline, escalation once overdue: APScheduler with its SQL
job store in the cloud database, surviving a restart (real scheduler, real database)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud import migrations
from cloud.audit import AuditAction, AuditLog
from cloud.auth import Role
from cloud.hazards import (
    DeadlineKind,
    DeadlineNotice,
    DeadlineWatch,
    HazardEvent,
    HazardGrade,
    HazardIn,
    HazardRecord,
    HazardService,
)
from cloud.hazards._deadlines import JOBS_TABLE, job_id
from cloud.storage import Store
from tests.db_support import cloud_db_url
from tests.support import wait_until

G = HazardGrade.GENERAL
LEAD = {G: dt.timedelta(seconds=0.6), HazardGrade.MAJOR: dt.timedelta(seconds=0.6)}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Opened:
    def __init__(self, url: str, evidence: Path) -> None:
        self.store = Store(url)
        self.audit = AuditLog(self.store.engine)
        self.hazards = HazardService(self.store.engine, self.audit, evidence)
        self.watch = DeadlineWatch(self.hazards, remind_before=LEAD)
        self.notices: list[DeadlineNotice] = []
        self.watch.listeners.append(self.notices.append)

    def close(self) -> None:
        self.watch.stop()
        self.store.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    value = cloud_db_url(tmp_path)
    store = Store(value)
    migrations.upgrade(store.engine)
    store.close()
    return value


@pytest.fixture
def cloud(url: str, tmp_path: Path) -> Iterator[Opened]:
    opened = Opened(url, tmp_path / "evidence")
    yield opened
    opened.close()


def _create(hazards: HazardService, deadline: dt.datetime, **kw: str) -> int:
    record, _ = hazards.create(
        HazardIn(title="guard rail missing", area="belt-3", grade=G, deadline=deadline, **kw),
        "se-1",
    )
    return record.id


def _escalated(hazards: HazardService, hazard_id: int) -> HazardRecord | None:
    hazard = hazards.get(hazard_id)
    return hazard if hazard.escalated_at is not None else None


def _actions(audit: AuditLog, hazard_id: int) -> list[str]:
    target = f"hazard:{hazard_id}"
    return [e.action for e in reversed(audit.entries(limit=1000)) if e.target == target]


def test_reminder_then_escalation_each_once(cloud: Opened) -> None:
    cloud.watch.start()
    deadline = _now() + dt.timedelta(seconds=1.5)
    hazard_id = _create(cloud.hazards, deadline, supervisor="shift-boss")
    assert cloud.watch.job_ids() == {
        job_id(hazard_id, DeadlineKind.REMIND),
        job_id(hazard_id, DeadlineKind.ESCALATE),
    }

    wait_until(lambda: len(cloud.notices) == 2, 10, "the reminder and the escalation")
    hazard = cloud.hazards.get(hazard_id)
    assert hazard.reminded_at is not None and hazard.escalated_at is not None
    assert deadline - LEAD[G] <= hazard.reminded_at < deadline <= hazard.escalated_at
    assert [n.kind for n in cloud.notices] == [DeadlineKind.REMIND, DeadlineKind.ESCALATE]
    assert cloud.notices[1].to == ["shift-boss"]
    assert _actions(cloud.audit, hazard_id) == [
        AuditAction.HAZARD_TRANSITION,
        AuditAction.HAZARD_REMINDER,
        AuditAction.HAZARD_ESCALATED,
    ]
    assert cloud.watch.job_ids() == set()  # date jobs run once
    assert cloud.audit.verify().ok


def test_jobs_survive_a_restart_and_fire_after_it(url: str, tmp_path: Path) -> None:
    first = Opened(url, tmp_path / "evidence")
    first.watch.start()
    deadline = _now() + dt.timedelta(seconds=1.5)
    hazard_id = _create(first.hazards, deadline)
    first.close()  # the service stops before anything is due
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text(f"SELECT id FROM {JOBS_TABLE}")).scalars())
    finally:
        engine.dispose()
    assert stored == {
        job_id(hazard_id, DeadlineKind.REMIND),
        job_id(hazard_id, DeadlineKind.ESCALATE),
    }
    wait_until(lambda: _now() > deadline, 5, "the deadline to pass while stopped")

    second = Opened(url, tmp_path / "evidence")
    try:
        assert second.hazards.get(hazard_id).reminded_at is None  # nothing ran while down
        second.watch.start()
        assert second.watch.synced == 0  # the jobs came from the store, not re-made
        wait_until(lambda: len(second.notices) == 2, 10, "both jobs after the restart")
        hazard = second.hazards.get(hazard_id)
        assert hazard.reminded_at is not None
        kinds = sorted(n.kind for n in second.notices)
        assert kinds == [DeadlineKind.ESCALATE, DeadlineKind.REMIND]
    finally:
        second.close()


def test_hazards_made_while_no_watch_ran_are_picked_up(cloud: Opened) -> None:
    overdue = _create(cloud.hazards, _now() - dt.timedelta(hours=1))
    later = _create(cloud.hazards, _now() + dt.timedelta(days=2))
    cloud.watch.start()
    assert cloud.watch.synced == 4
    wait_until(lambda: _escalated(cloud.hazards, overdue), 10, "the late escalation")
    assert cloud.watch.job_ids() == {
        job_id(later, DeadlineKind.REMIND),
        job_id(later, DeadlineKind.ESCALATE),
    }
    assert cloud.hazards.get(later).reminded_at is None


def test_a_new_deadline_reschedules_and_closing_removes_the_jobs(cloud: Opened) -> None:
    cloud.watch.start()
    hazard_id = _create(cloud.hazards, _now() + dt.timedelta(days=1))
    hz, admin = cloud.hazards, Role.ADMIN
    hz.transition(hazard_id, HazardEvent.REGISTER, "se-1", admin)
    new_deadline = _now() + dt.timedelta(days=5)
    hz.transition(
        hazard_id, HazardEvent.ASSIGN, "se-1", admin, assignee="rect-1", deadline=new_deadline
    )
    job = cloud.watch.scheduler.get_job(job_id(hazard_id, DeadlineKind.ESCALATE))
    assert job is not None
    assert abs((job.next_run_time - new_deadline).total_seconds()) < 0.01

    hz.add_evidence(hazard_id, "rail.jpg", "image/jpeg", b"\xff\xd8rail", "rect-1", admin)
    for event in (HazardEvent.RECTIFY, HazardEvent.APPROVE, HazardEvent.CLOSE):
        hz.transition(hazard_id, event, "se-1", admin)
    assert cloud.watch.job_ids() == set()


def test_firing_is_idempotent_and_leaves_closed_or_missing_hazards_alone(
    cloud: Opened,
) -> None:
    hazard_id = _create(cloud.hazards, _now() - dt.timedelta(minutes=5))
    assert cloud.watch.fire(hazard_id, DeadlineKind.ESCALATE) is not None
    assert cloud.watch.fire(hazard_id, DeadlineKind.ESCALATE) is None  # a second run
    assert cloud.watch.fire(999, DeadlineKind.REMIND) is None  # gone
    not_due = _create(cloud.hazards, _now() + dt.timedelta(days=1))
    assert cloud.watch.fire(not_due, DeadlineKind.ESCALATE) is None  # deadline moved later
    assert _actions(cloud.audit, hazard_id).count(AuditAction.HAZARD_ESCALATED) == 1
    assert [n.kind for n in cloud.notices] == [DeadlineKind.ESCALATE]


def test_a_failing_listener_does_not_lose_the_mark(cloud: Opened) -> None:
    def broken(notice: DeadlineNotice) -> None:
        raise RuntimeError("pager down")

    cloud.watch.listeners.insert(0, broken)
    hazard_id = _create(cloud.hazards, _now() - dt.timedelta(minutes=5))
    notice = cloud.watch.fire(hazard_id, DeadlineKind.ESCALATE)
    assert notice is not None
    assert cloud.hazards.get(hazard_id).escalated_at is not None
    assert [n.kind for n in cloud.notices] == [DeadlineKind.ESCALATE]
