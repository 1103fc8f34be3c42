"""Hazards (隐患): the closed loop from discovery to closure, with evidence, deadlines and KPIs.

A service package: its tables and logic (:class:`HazardService`), its lifecycle
(:class:`HazardLifecycle`, python-statemachine, with the roles allowed per event in
``ROLES_FOR``) and its router (:func:`hazards_router`). Every transition is written to
the hash-chained audit log.
"""

from cloud.hazards._api import hazards_router
from cloud.hazards._auto import AUTO_ACTOR, AutoHazards, classify
from cloud.hazards._deadlines import (
    DEFAULT_REMIND_BEFORE,
    JOBS_METADATA,
    DeadlineNotice,
    DeadlineWatch,
)
from cloud.hazards._lifecycle import (
    EVENTS,
    ROLES_FOR,
    HazardEvent,
    HazardGrade,
    HazardLifecycle,
    HazardStatus,
    next_status,
)
from cloud.hazards._offline import DEFAULT_OFFLINE_AFTER, OfflineHazards
from cloud.hazards._service import (
    DEADLINE_ACTOR,
    DEFAULT_DEADLINES,
    DeadlineKind,
    EvidenceRecord,
    HazardError,
    HazardFilter,
    HazardForbidden,
    HazardIn,
    HazardKpis,
    HazardNotFound,
    HazardRecord,
    HazardService,
    InvalidTransition,
)

__all__ = [
    "AUTO_ACTOR",
    "DEADLINE_ACTOR",
    "DEFAULT_DEADLINES",
    "DEFAULT_OFFLINE_AFTER",
    "DEFAULT_REMIND_BEFORE",
    "EVENTS",
    "JOBS_METADATA",
    "ROLES_FOR",
    "AutoHazards",
    "DeadlineKind",
    "DeadlineNotice",
    "DeadlineWatch",
    "EvidenceRecord",
    "HazardError",
    "HazardEvent",
    "HazardFilter",
    "HazardForbidden",
    "HazardGrade",
    "HazardIn",
    "HazardKpis",
    "HazardLifecycle",
    "HazardNotFound",
    "HazardRecord",
    "HazardService",
    "HazardStatus",
    "InvalidTransition",
    "OfflineHazards",
    "classify",
    "hazards_router",
    "next_status",
]
