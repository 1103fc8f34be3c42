"""Automatic hazards from edge alarm events (the ingest hands over each newly stored alarm).

| edge event                                   | hazard kind      | grade   |
| methane (``ch4``) at ``cut``                 | methane          | major   |
| methane (``ch4``) at ``alarm``               | methane          | general |
| methane sensor ``fault`` (fail-safe cut)     | sensor_fault     | general |
| ``feedback_missing`` (cut commanded, power  | feedback         | major   |
| still on), ``energised_during_cut``,         |                  |         |
| ``feedback_fault``                           |                  |         |
| ``actuator_write_failed`` (the gateway could | actuator         | major   |
| not write an interlock output: fail-safe,    |                  |         |
| also a cut command that never reached it)    |                  |         |
| ``lockout_test_failed``                      | lockout_test     | major   |
| ``lockout_test_overdue``                     | lockout_test     | general |

De-duplicated: one open hazard per (kind, site, tag); a repeat while it is open is
counted, not added - but a major repeat raises a general hazard to major (a methane
alarm that goes on to a cut, a lockout test overdue and then failed); after it is
closed the next occurrence opens a new one. A handler failure is logged and never
stops the ingest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import wire
from cloud.hazards._lifecycle import HazardGrade
from cloud.hazards._service import HazardIn, HazardRecord, HazardService

__all__ = ["AUTO_ACTOR", "AutoHazards", "classify"]

log = logging.getLogger(__name__)
AUTO_ACTOR = "system:auto-hazards"
METHANE_KINDS = frozenset({"ch4", "methane"})
# The feedback rule's reasons for "the area is (or may be) still energised under a cut".
FEEDBACK_REASONS = frozenset({"feedback_missing", "energised_during_cut", "feedback_fault"})


def classify(event: wire.AlarmEvent) -> tuple[str, HazardGrade, str] | None:
    """(hazard kind, grade, title) for an alarm event that is a hazard, else None."""
    if event.reason.startswith("calibration:"):  # during a declared calibration: not real
        return None
    reason = event.reason
    where = f"{event.area or event.site} {event.position}".strip()
    if event.kind in METHANE_KINDS:
        if event.level == "cut":
            return (
                "methane",
                HazardGrade.MAJOR,
                f"Methane over the cut limit at {where} ({event.tag})",
            )
        if event.level == "alarm":
            return (
                "methane",
                HazardGrade.GENERAL,
                f"Methane over the alarm limit at {where} ({event.tag})",
            )
        if event.level == "fault":
            return (
                "sensor_fault",
                HazardGrade.GENERAL,
                f"Methane sensor faulty or offline at {where} ({event.tag})",
            )
    if event.level == "normal":
        return None
    if reason in FEEDBACK_REASONS:
        return (
            "feedback",
            HazardGrade.MAJOR,
            f"Power not cut after a cut command at {where} ({event.tag}: {reason})",
        )
    if reason == "actuator_write_failed":
        return (
            "actuator",
            HazardGrade.MAJOR,
            f"Interlock output could not be written at {where} ({event.tag})",
        )
    if reason == "lockout_test_failed":
        return "lockout_test", HazardGrade.MAJOR, f"Lockout test failed at {where} ({event.tag})"
    if reason == "lockout_test_overdue":
        return "lockout_test", HazardGrade.GENERAL, f"Lockout test overdue at {where} ({event.tag})"
    return None


class AutoHazards:
    """The ingest's alarm handler that opens hazards; call from a worker thread."""

    def __init__(self, service: HazardService) -> None:
        self.service = service
        self.created = 0
        self.repeats = 0
        self.failures = 0

    def __call__(self, events: Sequence[wire.AlarmEvent]) -> list[HazardRecord]:
        created: list[HazardRecord] = []
        for event in events:
            try:
                found = classify(event)
                if found is None:
                    continue
                kind, grade, title = found
                record, new = self.service.create(
                    HazardIn(
                        title=title[:256],
                        area=event.area or event.site,
                        grade=grade,
                        site=event.site,
                        kind=kind,
                        description=f"{event.message} (gateway {event.gateway}, seq {event.seq}, "
                        f"value {event.value}, threshold {event.threshold})"[:4000],
                    ),
                    AUTO_ACTOR,
                    source="auto",
                    dedup_key=f"{kind}:{event.site}:{event.tag}"[:256],
                )
            except Exception:  # one bad event or a database hiccup must not stop the ingest
                self.failures += 1
                log.exception(
                    "auto hazard from %s/%s seq %s failed", event.site, event.gateway, event.seq
                )
                continue
            if new:
                self.created += 1
                created.append(record)
            else:
                self.repeats += 1
        return created
