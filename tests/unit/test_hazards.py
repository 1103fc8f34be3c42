"""Hazard closed loop: every transition per status and role, evidence, deadlines, KPIs, audit."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.audit import AuditAction, AuditLog
from cloud.auth import Role
from cloud.hazards import (
    HazardEvent,
    HazardFilter,
    HazardForbidden,
    HazardGrade,
    HazardIn,
    HazardService,
    HazardStatus,
    InvalidTransition,
    next_status,
)
from cloud.hazards._lifecycle import TransitionNotAllowed
from cloud.storage import Store
from tests.db_support import cloud_db_url

S, E = HazardStatus, HazardEvent
A, SE, RE, RV, V = Role.ADMIN, Role.SAFETY_ENGINEER, Role.RECTIFIER, Role.REVIEWER, Role.VIEWER

# Reviewed here, apart from the code: the loop of SAFETY_REFERENCE.md "Hazards".
EXPECTED_NEXT: dict[tuple[HazardStatus, HazardEvent], HazardStatus] = {
    (S.FOUND, E.REGISTER): S.REGISTERED,
    (S.REGISTERED, E.ASSIGN): S.ASSIGNED,
    (S.ASSIGNED, E.RECTIFY): S.RECTIFIED,
    (S.RECTIFIED, E.APPROVE): S.REVIEWED,
    (S.RECTIFIED, E.REJECT): S.ASSIGNED,  # failed review: back to rectification
    (S.REVIEWED, E.CLOSE): S.CLOSED,
}
WHO_MAY: dict[HazardEvent, frozenset[Role]] = {
    E.REGISTER: frozenset({A, SE}),
    E.ASSIGN: frozenset({A, SE}),
    E.RECTIFY: frozenset({A, RE}),
    E.APPROVE: frozenset({A, RV}),
    E.REJECT: frozenset({A, RV}),
    E.CLOSE: frozenset({A, SE}),
}
# The admin path from FOUND to each status.
PATH_TO: dict[HazardStatus, list[HazardEvent]] = {
    S.FOUND: [],
    S.REGISTERED: [E.REGISTER],
    S.ASSIGNED: [E.REGISTER, E.ASSIGN],
    S.RECTIFIED: [E.REGISTER, E.ASSIGN, E.RECTIFY],
    S.REVIEWED: [E.REGISTER, E.ASSIGN, E.RECTIFY, E.APPROVE],
    S.CLOSED: [E.REGISTER, E.ASSIGN, E.RECTIFY, E.APPROVE, E.CLOSE],
}
T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, clock: Clock) -> Iterator[HazardService]:
    store = Store(cloud_db_url(tmp_path, "hz.db"))
    audit = AuditLog(store.engine)
    audit.create_all()
    svc = HazardService(store.engine, audit, tmp_path / "evidence", clock=clock)
    svc.create_all()
    yield svc
    store.close()


def _new(svc: HazardService, grade: HazardGrade = HazardGrade.GENERAL, area: str = "face-1") -> int:
    major = grade is HazardGrade.MAJOR
    record, created = svc.create(
        HazardIn(
            title="loose roof bolt",
            area=area,
            grade=grade,
            plan="re-bolt" if major else None,
            responsible="chief" if major else None,
            supervisor="mine director" if major else None,
        ),
        "finder",
    )
    assert created
    return record.id


def _fire(svc: HazardService, hazard_id: int, event: HazardEvent, role: Role = A) -> None:
    if event is E.RECTIFY:
        svc.add_evidence(hazard_id, "after.jpg", "image/jpeg", b"photo %d" % hazard_id, "r", A)
    svc.transition(hazard_id, event, "someone", role, assignee="team-3", note="n")


def _at(svc: HazardService, status: HazardStatus) -> int:
    hazard_id = _new(svc)
    for event in PATH_TO[status]:
        _fire(svc, hazard_id, event)
    assert svc.get(hazard_id).status == status
    return hazard_id


@pytest.mark.parametrize(("status", "event"), list(itertools.product(S, E)))
def test_lifecycle_allows_exactly_the_loop(status: HazardStatus, event: HazardEvent) -> None:
    expected = EXPECTED_NEXT.get((status, event))
    if expected is None:
        with pytest.raises(TransitionNotAllowed):
            next_status(status, event)
    else:
        assert next_status(status, event) == expected


def test_every_transition_per_status_and_role(service: HazardService) -> None:
    """All 6 statuses x 6 events x 5 roles against the service: allowed moves, else refusal."""
    checked = 0
    for status, event, role in itertools.product(S, E, Role):
        hazard_id = _at(service, status)
        if event is E.RECTIFY and status is S.ASSIGNED:
            service.add_evidence(hazard_id, "a.jpg", "image/jpeg", b"x", "r", A)
        expected = EXPECTED_NEXT.get((status, event))
        if role not in WHO_MAY[event]:
            with pytest.raises(HazardForbidden):
                service.transition(hazard_id, event, "u", role, assignee="t")
            assert service.get(hazard_id).status == status
        elif expected is None:
            with pytest.raises(InvalidTransition):
                service.transition(hazard_id, event, "u", role, assignee="t")
            assert service.get(hazard_id).status == status
        else:
            assert service.transition(hazard_id, event, "u", role, assignee="t").status == expected
        checked += 1
    assert checked == 6 * 6 * 5


def test_closed_loop_with_failed_review_evidence_and_audit(
    service: HazardService, clock: Clock, tmp_path: Path
) -> None:
    hazard_id = _new(service)
    service.transition(hazard_id, E.REGISTER, "eng", SE)
    with pytest.raises(InvalidTransition, match="assignee"):
        service.transition(hazard_id, E.ASSIGN, "eng", SE)
    service.transition(hazard_id, E.ASSIGN, "eng", SE, assignee="team-3")
    with pytest.raises(InvalidTransition, match="evidence"):
        service.transition(hazard_id, E.RECTIFY, "fixer", RE)
    photo = b"\xff\xd8 jpeg bytes"
    evidence = service.add_evidence(hazard_id, "../../etc/x.jpg", "image/jpeg", photo, "fixer", RE)
    assert evidence.sha256 == hashlib.sha256(photo).hexdigest()
    assert service.evidence_path(evidence.sha256).read_bytes() == photo
    assert "/" not in evidence.filename
    service.transition(hazard_id, E.RECTIFY, "fixer", RE, note="re-bolted")
    back = service.transition(hazard_id, E.REJECT, "rev", RV, note="bolt still loose")
    assert back.status == S.ASSIGNED and back.rejections == 1
    service.add_evidence(hazard_id, "again.jpg", "image/jpeg", b"second photo", "fixer", RE)
    service.transition(hazard_id, E.RECTIFY, "fixer", RE)
    service.transition(hazard_id, E.APPROVE, "rev", RV)
    clock.now = T0 + dt.timedelta(hours=10)
    closed = service.transition(hazard_id, E.CLOSE, "eng", SE)
    assert closed.status == S.CLOSED and closed.closed_at == clock.now
    assert len(service.evidence(hazard_id)) == 2

    entries = [
        e
        for e in reversed(service.audit.entries(limit=100))
        if e.action == AuditAction.HAZARD_TRANSITION
    ]
    moves = [(e.details_dict()["before"], e.details_dict()["after"]) for e in entries]
    assert [m for m in moves if m[0] != m[1]] == [
        (None, "found"),
        ("found", "registered"),
        ("registered", "assigned"),
        ("assigned", "rectified"),
        ("rectified", "assigned"),
        ("assigned", "rectified"),
        ("rectified", "reviewed"),
        ("reviewed", "closed"),
    ]
    assert {e.actor for e in entries} >= {"finder", "eng", "fixer", "rev"}
    assert all(e.target == f"hazard:{hazard_id}" for e in entries)
    assert service.audit.verify().ok


def test_major_hazard_needs_plan_responsible_and_supervision(service: HazardService) -> None:
    record, _ = service.create(
        HazardIn(title="gas drainage", area="f", grade=HazardGrade.MAJOR), "x"
    )
    assert record.deadline == T0 + dt.timedelta(days=15)
    service.transition(record.id, E.REGISTER, "eng", SE)
    with pytest.raises(InvalidTransition, match="plan, responsible, supervisor"):
        service.transition(record.id, E.ASSIGN, "eng", SE, assignee="t")
    due = T0 + dt.timedelta(days=5)
    done = service.transition(
        record.id,
        E.ASSIGN,
        "eng",
        SE,
        assignee="t",
        plan="p",
        responsible="r",
        supervisor="s",
        deadline=due,
    )
    assert (done.plan, done.responsible, done.supervisor, done.deadline) == ("p", "r", "s", due)


def test_deadlines_overdue_filters_and_kpis(service: HazardService, clock: Clock) -> None:
    general = _new(service, area="face-1")  # due T0 + 72 h
    major = _new(service, HazardGrade.MAJOR, area="face-2")  # due T0 + 15 d
    late = _new(service, area="face-1")
    assert service.get(general).deadline == T0 + dt.timedelta(hours=72)
    for event in PATH_TO[S.CLOSED]:
        clock.now += dt.timedelta(hours=2)
        _fire(service, general, event)  # closed after 10 h: on time
    assert not service.get(late).overdue
    clock.now = T0 + dt.timedelta(hours=80)
    assert service.get(late).overdue and not service.get(major).overdue
    for event in PATH_TO[S.CLOSED][:-1]:
        _fire(service, late, event)
    clock.now = T0 + dt.timedelta(hours=100)
    page, total = service.find(HazardFilter(overdue=True))
    assert total == 1 and page[0].id == late
    _fire(service, late, E.CLOSE)  # closed after 100 h: late

    assert service.find(HazardFilter(overdue=True))[1] == 0
    assert service.find(HazardFilter(area="face-2"))[1] == 1
    assert service.find(HazardFilter(grade=HazardGrade.MAJOR))[0][0].id == major
    assert service.find(HazardFilter(status=S.CLOSED))[1] == 2
    assert [h.id for h in service.find(offset=1, limit=1)[0]] == [major]

    kpis = service.kpis()
    assert (kpis.total, kpis.closed, kpis.open, kpis.overdue) == (3, 2, 1, 0)
    assert kpis.rectification_rate == pytest.approx(2 / 3)
    assert kpis.on_time_rate == pytest.approx(0.5)
    assert kpis.mean_time_to_close_h == pytest.approx((10 + 100) / 2)
    assert kpis.by_area == {"face-2": 1}
    clock.now = T0 + dt.timedelta(days=16)
    assert service.kpis().overdue == 1
    empty = service.kpis(HazardFilter(area="nowhere"))
    assert empty.total == 0 and empty.rectification_rate is None


def test_evidence_only_while_assigned_and_by_rectifiers(service: HazardService) -> None:
    hazard_id = _at(service, S.REGISTERED)
    with pytest.raises(InvalidTransition, match="assigned"):
        service.add_evidence(hazard_id, "a.jpg", "image/jpeg", b"x", "r", RE)
    _fire(service, hazard_id, E.ASSIGN)
    for role in (SE, RV, V):
        with pytest.raises(HazardForbidden):
            service.add_evidence(hazard_id, "a.jpg", "image/jpeg", b"x", "r", role)
    with pytest.raises(InvalidTransition, match="empty"):
        service.add_evidence(hazard_id, "a.jpg", "image/jpeg", b"", "r", RE)
    one = service.add_evidence(hazard_id, "a.jpg", "image/jpeg", b"x", "r", RE)
    again = service.add_evidence(hazard_id, "b.jpg", "image/jpeg", b"x", "r", RE)
    assert one.id == again.id and len(service.evidence(hazard_id)) == 1


def test_automatic_hazards_are_deduplicated_until_closed(service: HazardService) -> None:
    data = HazardIn(
        title="methane over limit", area="face-1", grade=HazardGrade.MAJOR, kind="methane"
    )
    first, created = service.create(data, "ingest", source="auto", dedup_key="methane:face-1:T1")
    again, created_again = service.create(
        data, "ingest", source="auto", dedup_key="methane:face-1:T1"
    )
    assert created and not created_again and again.id == first.id
    service.transition(first.id, E.REGISTER, "eng", SE)
    service.transition(
        first.id, E.ASSIGN, "e", SE, assignee="t", plan="p", responsible="r", supervisor="s"
    )
    for event in (E.RECTIFY, E.APPROVE, E.CLOSE):
        _fire(service, first.id, event)
    later, created_later = service.create(
        data, "ingest", source="auto", dedup_key="methane:face-1:T1"
    )
    assert created_later and later.id != first.id
