"""The hazard lifecycle (python-statemachine) and who may drive each transition.

found -> registered -> assigned -> rectified -> reviewed -> closed; a failed review
(``reject``) sends a rectified hazard back to ``assigned`` for rectification again.
The state machine says which transitions exist from a state; ``ROLES_FOR`` says
which roles may fire each one (admin may do everything).
"""

from __future__ import annotations

import enum

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from cloud.auth import Role

__all__ = [
    "EVENTS",
    "ROLES_FOR",
    "HazardEvent",
    "HazardGrade",
    "HazardLifecycle",
    "HazardStatus",
    "TransitionNotAllowed",
    "next_status",
]


class HazardStatus(enum.StrEnum):
    FOUND = "found"
    REGISTERED = "registered"
    ASSIGNED = "assigned"
    RECTIFIED = "rectified"
    REVIEWED = "reviewed"
    CLOSED = "closed"


class HazardGrade(enum.StrEnum):
    GENERAL = "general"  # 一般隐患
    MAJOR = "major"  # 重大隐患: plan, responsible person, deadline, supervision


class HazardEvent(enum.StrEnum):
    REGISTER = "register"
    ASSIGN = "assign"
    RECTIFY = "rectify"
    APPROVE = "approve"  # review passed
    REJECT = "reject"  # review failed: back to rectification
    CLOSE = "close"


class HazardLifecycle(StateMachine):
    found = State(HazardStatus.FOUND.value, value=HazardStatus.FOUND.value, initial=True)
    registered = State(HazardStatus.REGISTERED.value, value=HazardStatus.REGISTERED.value)
    assigned = State(HazardStatus.ASSIGNED.value, value=HazardStatus.ASSIGNED.value)
    rectified = State(HazardStatus.RECTIFIED.value, value=HazardStatus.RECTIFIED.value)
    reviewed = State(HazardStatus.REVIEWED.value, value=HazardStatus.REVIEWED.value)
    closed = State(HazardStatus.CLOSED.value, value=HazardStatus.CLOSED.value, final=True)

    register = found.to(registered)
    assign = registered.to(assigned)
    rectify = assigned.to(rectified)
    approve = rectified.to(reviewed)
    reject = rectified.to(assigned)
    close = reviewed.to(closed)


EVENTS: tuple[HazardEvent, ...] = tuple(HazardEvent)

_A, _SE, _RE, _RV = Role.ADMIN, Role.SAFETY_ENGINEER, Role.RECTIFIER, Role.REVIEWER
ROLES_FOR: dict[HazardEvent, frozenset[Role]] = {
    HazardEvent.REGISTER: frozenset({_A, _SE}),
    HazardEvent.ASSIGN: frozenset({_A, _SE}),
    HazardEvent.RECTIFY: frozenset({_A, _RE}),
    HazardEvent.APPROVE: frozenset({_A, _RV}),
    HazardEvent.REJECT: frozenset({_A, _RV}),
    HazardEvent.CLOSE: frozenset({_A, _SE}),
}


def next_status(status: HazardStatus, event: HazardEvent) -> HazardStatus:
    """The status after ``event`` from ``status``; raises TransitionNotAllowed."""
    machine = HazardLifecycle(start_value=status.value)
    machine.send(event.value)
    return HazardStatus(str(machine.current_state.value))
