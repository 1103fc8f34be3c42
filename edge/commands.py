"""Engineer commands to a running gateway, and recorded lockout tests.

Commands arrive as JSON files (``edge.latches.submit_command``, used by
``safewatch edge reset|calibrate|lockout-test``)::

    {"action": "reset", "rule": "CH4_T1", "by": "engineer"}
    {"action": "calibrate", "tag": "CH4_T1", "minutes": 30, "by": "engineer"}
    {"action": "end_calibration", "tag": "CH4_T1", "by": "engineer"}
    {"action": "lockout_test", "rule": "fan-1201", "by": "engineer"}

A lockout test (the rules ask for one of each methane and fan lockout every
15 days) trips the lockout's rule on purpose, waits for every actuator it
drives to be written active and, where a feedback rule watches the actuator,
for the feedback to read de-energised; then it lets the rule decide again. The
result is appended to ``<state>.lockout-tests.jsonl``; lockouts with no good
test within ``lockout_tests.every_days`` are reported as overdue (an alarm
event at start and daily, and ``safewatch edge lockout-tests``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.config import LoadedSite
from edge.engine import SafetyEngine
from edge.rules import FeedbackCheck

__all__ = ["EngineerCommands", "LockoutTestRecord", "lockout_rules", "overdue", "read_records"]

log = logging.getLogger("safewatch.edge.commands")

DAY_NS = 86_400 * 10**9


@dataclass(frozen=True, slots=True)
class LockoutTestRecord:
    rule: str
    by: str
    started_ns: int
    finished_ns: int
    actuators: list[str]
    cut_observed: bool
    cut_ms: float | None
    feedback_observed: bool | None  # None: no feedback input configured
    ok: bool


def records_path(state_path: str | Path) -> Path:
    path = Path(state_path)
    return path.with_name(path.name + ".lockout-tests.jsonl")


def read_records(state_path: str | Path) -> list[LockoutTestRecord]:
    path = records_path(state_path)
    found: list[LockoutTestRecord] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        try:
            found.append(LockoutTestRecord(**json.loads(line)))
        except (ValueError, TypeError):
            log.warning("skipping a malformed lockout test record in %s", path)
    return found


def lockout_rules(site: LoadedSite) -> list[str]:
    """Lockouts that must be tested: fan lockouts and methane rules that drive a power cut."""
    power = {a.id for a in site.config.actuators if a.kind == "power_cut"}
    found = [r.id for r in site.config.rules if r.type == "fan_lockout"]
    for _, tag in site.tags():
        if site.profile_of(tag).kind == "ch4" and power.intersection(tag.actuators):
            found.append(tag.name)
    ch4_tags = {t.name for _, t in site.tags() if site.profile_of(t).kind == "ch4"}
    for row in site.config.interlocks:
        if row.effect in power:
            found.extend(c for c in row.causes if c not in found and c in ch4_tags)
    return found


def overdue(
    site: LoadedSite, records: list[LockoutTestRecord], now_ns: int
) -> dict[str, int | None]:
    """Lockout rule -> ns of its last good test (None: never), for those overdue."""
    every_ns = int(site.config.lockout_tests.every_days * DAY_NS)
    last: dict[str, int] = {}
    for rec in records:
        if rec.ok:
            last[rec.rule] = max(last.get(rec.rule, 0), rec.finished_ns)
    return {
        rule: last.get(rule)
        for rule in lockout_rules(site)
        if rule not in last or now_ns - last[rule] > every_ns
    }


@dataclass(slots=True)
class _RunningTest:
    rule: str
    by: str
    started_ns: int
    started: float
    actuators: list[str]
    cut_at: float | None = None
    feedback_at: float | None = None


class EngineerCommands:
    """Executes engineer commands against the engine; runs and records lockout tests."""

    def __init__(self, site: LoadedSite, engine: SafetyEngine, state_path: str | Path) -> None:
        self.site = site
        self.engine = engine
        self.state_path = Path(state_path)
        self.records_path = records_path(state_path)
        self._running: _RunningTest | None = None
        self._overdue_reported_ns = 0
        self.executed = 0
        self.rejected = 0
        # audit hook (the gateway's alarm database): (action, actor, target, why)
        self.on_action: Callable[[str, str, str, str], None] | None = None

    # -- commands --------------------------------------------------------------------

    def execute(self, command: Mapping[str, Any] | None, name: str = "") -> bool:
        """Run one command; a malformed one is logged and dropped (it never stops the gateway)."""
        if command is None:
            return self._reject(name, "not a JSON object")
        action = command.get("action")
        by = str(command.get("by", ""))
        if action == "reset":
            rule = str(command.get("rule", ""))
            if not self.engine.reset_latch(rule, by):
                return self._reject(name, f"rule {rule!r} has no over-range latch set")
        elif action == "calibrate":
            tag = str(command.get("tag", ""))
            minutes = command.get("minutes", 30)
            if not isinstance(minutes, int | float) or not 0 < minutes <= 24 * 60:
                return self._reject(name, f"minutes must be in (0, 1440], got {minutes!r}")
            try:
                self.engine.calibrate(tag, time.time_ns() + int(minutes * 60e9), by)
            except KeyError:
                return self._reject(name, f"unknown tag {tag!r}")
        elif action == "end_calibration":
            self.engine.end_calibration(str(command.get("tag", "")))
        elif action == "lockout_test":
            rule = str(command.get("rule", ""))
            if rule not in self.engine.rules or not self.engine.interlock.actuators_of(rule):
                return self._reject(name, f"rule {rule!r} drives no actuator")
            if self._running is not None:
                return self._reject(name, f"lockout test of {self._running.rule} still running")
            self._start_test(rule, by)
        else:
            return self._reject(name, f"unknown action {action!r}")
        self.executed += 1
        log.info("engineer command %s: %s", name, dict(command))
        target = str(command.get("rule") or command.get("tag") or "")
        why = str(command.get("why") or command.get("reason") or "")
        if action == "calibrate":
            why = f"{command.get('minutes', 30)} min{'; ' + why if why else ''}"
        self._audit(str(action), by, target, why)
        return True

    def _audit(self, action: str, by: str, target: str, why: str) -> None:
        if self.on_action is None:
            return
        try:
            self.on_action(action, by, target, why)
        except Exception:  # the audit must never stop a command or the safety loop
            log.exception("audit of %s by %s on %s failed", action, by, target)

    def _reject(self, name: str, why: str) -> bool:
        self.rejected += 1
        log.error("engineer command %s rejected: %s", name, why)
        return False

    # -- lockout tests ---------------------------------------------------------------

    def _start_test(self, rule: str, by: str) -> None:
        actuators = self.engine.interlock.actuators_of(rule)
        self._running = _RunningTest(rule, by, time.time_ns(), time.monotonic(), actuators)
        log.warning("lockout test of %s by %s: tripping %s", rule, by or "?", actuators)
        self.engine.force_trip(rule, True)

    def _feedback_rules(self, actuators: list[str]) -> list[FeedbackCheck]:
        return [
            r
            for r in self.engine.rules.values()
            if isinstance(r, FeedbackCheck) and r.actuator in actuators
        ]

    def tick(self, *, report_overdue: bool = True) -> None:
        """Follow a running lockout test; else, once a day, report overdue ones (unless
        ``report_overdue`` is False: the safety process leaves that to the gateway)."""
        test = self._running
        if test is None:
            if report_overdue:
                self._daily_overdue()
            return
        now = time.monotonic()
        lock = self.engine.interlock
        if test.cut_at is None and all(lock.written(a) is True for a in test.actuators):
            test.cut_at = now
        feedback = self._feedback_rules(test.actuators)
        if test.feedback_at is None and feedback:
            confirmed = all(
                f.value is not None and f.value < f.config.energised_at for f in feedback
            )
            if confirmed and test.cut_at is not None:
                test.feedback_at = now
        done = test.cut_at is not None and (not feedback or test.feedback_at is not None)
        timeout = now - test.started >= self.site.config.lockout_tests.timeout_s
        if done or timeout:
            self._finish(test, feedback_configured=bool(feedback))

    def _finish(self, test: _RunningTest, *, feedback_configured: bool) -> None:
        self.engine.force_trip(test.rule, False)
        self._running = None
        record = LockoutTestRecord(
            rule=test.rule,
            by=test.by,
            started_ns=test.started_ns,
            finished_ns=time.time_ns(),
            actuators=test.actuators,
            cut_observed=test.cut_at is not None,
            cut_ms=None if test.cut_at is None else round((test.cut_at - test.started) * 1000, 1),
            feedback_observed=(test.feedback_at is not None) if feedback_configured else None,
            ok=test.cut_at is not None
            and (not feedback_configured or test.feedback_at is not None),
        )
        self._append(record)
        (log.info if record.ok else log.error)("lockout test recorded: %s", asdict(record))
        self._audit(
            "lockout_test_recorded",
            test.by,
            test.rule,
            f"{'passed' if record.ok else 'FAILED'}: cut observed {record.cut_observed} "
            f"({record.cut_ms} ms), feedback observed {record.feedback_observed}",
        )
        if not record.ok:
            self.engine.alarms.on_notice(
                self._tag_of(test.rule),
                "lockout_test_failed",
                f"lockout test of {test.rule} FAILED: cut observed {record.cut_observed}, "
                f"feedback observed {record.feedback_observed}",
            )

    def _append(self, record: LockoutTestRecord) -> None:
        try:
            with self.records_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(record), sort_keys=True) + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            log.error("could not record lockout test in %s: %s", self.records_path, exc)

    def _tag_of(self, rule_id: str) -> str:
        return self.engine.rules[rule_id].tag

    def report_overdue(self) -> dict[str, int | None]:
        """Raise one notice per overdue lockout test; returns them."""
        now_ns = time.time_ns()
        self._overdue_reported_ns = now_ns
        late = overdue(self.site, read_records(self.state_path), now_ns)
        for rule, last in late.items():
            when = (
                "never tested"
                if last is None
                else f"last good test {(now_ns - last) / DAY_NS:.1f} days ago"
            )
            self.engine.alarms.on_notice(
                self._tag_of(rule),
                "lockout_test_overdue",
                f"lockout test of {rule} overdue ({when}; due every "
                f"{self.site.config.lockout_tests.every_days:g} days)",
            )
        return late

    def _daily_overdue(self) -> None:
        if time.time_ns() - self._overdue_reported_ns >= DAY_NS:
            self.report_overdue()
