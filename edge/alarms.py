"""Alarm manager: level transitions -> logged, durable :class:`wire.AlarmEvent` messages.

Alarms are never dropped. They wait in an :class:`AlarmOutbox` (memory, in
order) until the buffer writer has stored them in the durable buffer; the
outbox only grows while the disk is failing, and that shows in its length.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

import wire
from edge.actuation import ActuatorCommand
from edge.config import LoadedSite
from edge.rules import Condition, Level, Transition

if TYPE_CHECKING:
    from edge.alarm_manager import AlarmStore, FloodDetector

__all__ = ["AlarmManager", "AlarmOutbox"]

log = logging.getLogger("safewatch.edge.alarms")


class AlarmOutbox:
    """In-order hand-off of alarm events from the safety path to the buffer writer.

    ``put`` never blocks and never drops; the writer takes everything with
    :meth:`drain` and puts back what it could not store with :meth:`requeue`.
    """

    def __init__(self) -> None:
        self._events: deque[wire.AlarmEvent] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: wire.AlarmEvent) -> None:
        self._events.append(event)
        self._ready.set()

    def drain(self) -> list[wire.AlarmEvent]:
        events = list(self._events)
        self._events.clear()
        self._ready.clear()
        return events

    def requeue(self, events: Iterable[wire.AlarmEvent]) -> None:
        self._events.extendleft(reversed(list(events)))
        if self._events:
            self._ready.set()

    async def wait(self) -> None:
        await self._ready.wait()


class AlarmManager:
    """Turns transitions (and actuator write failures) into alarm events."""

    def __init__(
        self,
        site: LoadedSite,
        sink: Callable[[wire.AlarmEvent], None],
    ) -> None:
        self._site = site
        self._sink = sink
        self._site_id = site.config.site.id
        self._gateway = site.config.gateway.id
        self._tags = {tag.name: (device, tag) for device, tag in site.tags()}
        self._levels: dict[str, Level] = {}
        self.raised = 0
        # ISA-18.2 alarm states (edge/alarm_manager.py): stable ids across a raise..clear
        self.lifecycle: AlarmStore | None = None
        self.lifecycle_errors = 0
        # alarm floods (edge/alarm_manager.FloodDetector): one summary event per flood and
        # operator console; ``flood`` holds the limits (and is the detector itself when the
        # whole gateway is one console, no alarms.consoles configured)
        self.flood: FloodDetector | None = None
        self._floods: dict[str, FloodDetector] = {}
        self._per_console = bool(site.config.alarms.consoles)
        self.floods = 0
        self.announcing = True

    def levels(self) -> dict[str, Level]:
        """The last reported condition of every rule that reported one (by rule id)."""
        return dict(self._levels)

    def level(self, rule_id: str) -> Level:
        return self._levels.get(rule_id, Condition.NORMAL)

    def on_transition(
        self,
        transition: Transition,
        actuators: Iterable[str] = (),
        *,
        kind: str = "threshold",
        calibration: bool = False,
    ) -> wire.AlarmEvent:
        """Record, log and hand on one transition; ``actuators`` were commanded by it.

        ``kind`` is the rule's kind: threshold, limit and zone rules report the
        sensor's kind (``ch4``...), the others their own (``lockout``,
        ``feedback``, ``diagnosis``, ``rate``, ``compound``), so that the cloud
        can tell a tag's process condition from a maintenance alarm on it.
        """
        device, tag = self._tags[transition.tag]
        profile = self._site.profile_of(tag)
        unit = self._site.unit_of(tag)
        self._levels[transition.rule_id] = transition.level
        commanded = list(actuators)
        message = describe(
            transition, unit=unit, area=tag.location.area, fail_safe=profile.fail_safe
        )
        if commanded:
            message += f"; commanded {', '.join(commanded)}"
        reason = transition.reason
        if calibration:
            message += " [calibration: not a real alarm; cuts still act]"
            reason = f"calibration:{reason}"
        event_kind = profile.kind if kind in ("threshold", "limits", "zones") else kind
        alarm_id, state, priority = uuid.uuid4().hex, "", ""
        # a condition re-reported after a restart is the same alarm: recorded and forwarded,
        # not announced again (no notification, no flood count)
        re_reported = False
        if self.lifecycle is not None:
            try:
                alarm = self.lifecycle.on_condition(
                    transition.rule_id,
                    tag.name,
                    transition.level.value,
                    kind=event_kind,
                    fail_safe=profile.fail_safe,
                    reason=reason,
                    ts_ns=transition.ts_ns,
                )
                alarm_id = alarm.alarm_id or alarm_id
                state, priority = alarm.state, alarm.priority
                re_reported = (
                    transition.previous is Level.NORMAL and self.lifecycle.last_action == "change"
                )
            except Exception:  # the alarm state must never stop the safety path
                self.lifecycle_errors += 1
                log.exception("alarm state of %s not recorded", transition.rule_id)
        event = wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,  # assigned by the durable buffer
            alarm_id=alarm_id,
            tag=tag.name,
            device=device.id,
            kind=event_kind,
            area=tag.location.area,
            position=tag.location.position,
            level=transition.level.value,
            previous=transition.previous.value,
            value=transition.value,
            threshold=transition.threshold,
            ts_ns=transition.ts_ns,
            message=message,
            actuators=commanded,
            reason=reason,
            state=state,
            priority=priority,
        )
        event = self._emit(event, transition.level, announce=not re_reported)
        console = event.console
        flood = self.flood_of(console)
        if (
            flood is not None
            and not calibration
            and not re_reported
            and transition.previous is Level.NORMAL
            and transition.level is not Level.NORMAL
            and flood.note(transition.ts_ns)
        ):
            self.floods += 1
            self._emit(self._flood_event(console, flood, transition.ts_ns, start=True), Level.ALARM)
        return event

    def flood_of(self, console: str) -> FloodDetector | None:
        """The flood detector of one operator console (None: no flood detection)."""
        if self.flood is None or not self._per_console:
            return self.flood
        found = self._floods.get(console)
        if found is None:
            found = self._floods[console] = type(self.flood)(
                self.flood.per_minute, self.flood.clear_s
            )
        return found

    def flooded(self, console: str = "") -> bool:
        """Whether ``console`` (any console: ``""``) is in an alarm flood now."""
        if self.flood is None:
            return False
        if not self._per_console:
            return self.flood.active
        if console:
            found = self._floods.get(console)
            return found is not None and found.active
        return any(f.active for f in self._floods.values())

    def check_flood(self, now_ns: int | None = None) -> bool:
        """End the floods whose rate has stayed under the limit (called every second or
        so); True when one ended now (its end event is emitted)."""
        now = time.time_ns() if now_ns is None else now_ns
        if self.flood is None:
            return False
        floods = (
            self._floods.items() if self._per_console else [(self._site.console_of(""), self.flood)]
        )
        ended = False
        for console, flood in list(floods):
            if flood.check(now):
                self._emit(self._flood_event(console, flood, now, start=False), Level.NORMAL)
                ended = True
        return ended

    def _flood_event(
        self, console: str, flood: FloodDetector, ts_ns: int, *, start: bool
    ) -> wire.AlarmEvent:
        """The flood summary: one alarm (``kind`` flood, tag = the gateway, ``console`` the
        operator console flooded) from start to end."""
        where = (
            f"console {console} (gateway {self._gateway})"
            if self._per_console
            else f"gateway {self._gateway}"
        )
        if start:
            message = (
                f"alarm flood on {where}: {flood.during} alarms within a minute "
                f"(limit {flood.per_minute}); every alarm is still recorded and forwarded, "
                "notifications are summarised until the flood ends"
            )
        else:
            message = (
                f"alarm flood on {where} over: {flood.during} alarms during "
                f"{(ts_ns - flood.started_ns) / 1e9:.0f} s, peak {flood.peak} a minute"
            )
        return wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,
            alarm_id=flood.flood_id,
            tag=self._gateway,
            device=self._gateway,
            kind="flood",
            # the wire's area and position are never empty
            area=console if self._per_console else "site-wide",
            position="gateway",
            level="alarm" if start else "normal",
            previous="normal" if start else "alarm",
            value=float(flood.during),
            threshold=float(flood.per_minute),
            ts_ns=ts_ns,
            message=message,
            actuators=[],
            reason="flood" if start else "flood_end",
            state="unacknowledged" if start else "normal",
            priority="high",
            console=console,
        )

    def on_notice(
        self, tag_name: str, reason: str, message: str, level: Level = Level.ALARM
    ) -> None:
        """A gateway notice about a tag that is not a rule's transition (e.g. an overdue
        lockout test): an alarm event of kind ``notice``."""
        device, tag = self._tags[tag_name]
        self._emit(
            wire.AlarmEvent(
                gateway=self._gateway,
                site=self._site_id,
                seq=0,
                alarm_id=uuid.uuid4().hex,
                tag=tag.name,
                device=device.id,
                kind="notice",
                area=tag.location.area,
                position=tag.location.position,
                level=level.value,
                previous=level.value,
                value=None,
                threshold=None,
                ts_ns=time.time_ns(),
                message=message,
                actuators=[],
                reason=reason,
            ),
            level,
        )

    def on_actuator_failed(self, command: ActuatorCommand, error: str, ts_ns: int) -> None:
        """A coil write failed (first of a streak): an alarm of its own."""
        self._emit(
            self._actuator_event(
                command,
                "alarm",
                "normal",
                ts_ns,
                f"actuator {command.actuator} could not be set "
                f"{'active' if command.active else 'inactive'}: {error} "
                "(reason actuator_write_failed)",
                reason="actuator_write_failed",
            ),
            Level.ALARM,
        )

    def on_actuator_recovered(self, command: ActuatorCommand, ts_ns: int) -> None:
        self._emit(
            self._actuator_event(
                command,
                "normal",
                "alarm",
                ts_ns,
                f"actuator {command.actuator} written "
                f"{'active' if command.active else 'inactive'} again after failures",
                reason="actuator_write_recovered",
            ),
            Level.NORMAL,
        )

    def _actuator_event(
        self,
        command: ActuatorCommand,
        level: wire.AlarmLevel,
        previous: wire.AlarmLevel,
        ts_ns: int,
        message: str,
        *,
        reason: str = "",
    ) -> wire.AlarmEvent:
        area = position = ""
        for _, tag in self._tags.values():
            if command.actuator in tag.actuators:
                area, position = tag.location.area, tag.location.position
                break
        return wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,
            alarm_id=uuid.uuid4().hex,
            tag=command.actuator,
            device=command.device,
            kind="actuator",
            area=area,
            position=position,
            level=level,
            previous=previous,
            value=None,
            threshold=None,
            ts_ns=ts_ns,
            message=message,
            actuators=[command.actuator],
            reason=reason,
        )

    def _emit(
        self, event: wire.AlarmEvent, level: Level, *, announce: bool = True
    ) -> wire.AlarmEvent:
        """Hand one event on, stamped with its operator console; the event as sent."""
        if not event.console:
            event = msgspec.structs.replace(event, console=self._site.console_of(event.area))
        self.raised += 1
        logger = log.info if level is Level.NORMAL else log.warning
        logger("ALARM %s %s -> %s: %s", event.tag, event.previous, event.level, event.message)
        # the sink (the gateway) reads ``announcing``: False while handing on a re-report
        self.announcing = announce
        try:
            self._sink(event)
        finally:
            self.announcing = True
        return event


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


_REASON_TEXT = {
    "fan_stopped": "auxiliary fan stopped: heading power cut (fan-electric lockout)",
    "fan_fault": "auxiliary fan state unknown (bad reading): heading power cut (fail-safe)",
    "fan_stale": "auxiliary fan state not read for too long: heading power cut (fail-safe)",
    "startup": "lockout starts tripped until the fan is seen running and methane is below restore",
    "restored_waiting_for_fan": "restarted: lockout held until the fan is seen running",
    "restored": "restarted with this condition latched on the gateway's disk; held until safe",
    "methane_not_below_restore": "fan running but methane not below restore: power stays cut",
    "fan_restart_hold": "fan running again; power held until it has run for the hold time",
    "fan_running_methane_below_restore": "fan running and methane below restore: power may return",
    "feedback_missing": "cut commanded but the feedback input still reads energised",
    "energised_during_cut": "feedback reads energised again while the cut is commanded",
    "deenergised_without_command": "feedback reads de-energised but no cut is commanded",
    "feedback_confirmed": "feedback confirms the area is de-energised",
    "feedback_fault": "feedback input unreadable",
    "energised": "feedback reads energised, no cut commanded",
    "stuck": "reading has not changed beyond noise: sensor may be stuck (maintenance)",
    "spike": "reading jumped more than the allowed step: spike (maintenance)",
    "no_spike": "no further spikes",
    "changing": "reading changes again",
    "drift": "reading disagrees with its neighbour sensor (maintenance)",
    "agrees": "reading agrees with its neighbour again",
    "forecast_over": "model pre-alarm: the forecast crossed its threshold (advisory, no actuator)",
    "forecast_clear": "model pre-alarm ended: the forecast is back past its clear value",
    "forecast_stale": "model pre-alarm unknown: the model has had no input for too long",
}


def describe(transition: Transition, *, unit: str, area: str, fail_safe: bool) -> str:
    """A plain-words sentence for one transition."""
    t = transition
    where = f"{t.tag} in {area}"
    value = f"{_num(t.value)} {unit}".strip()
    limit = f"{_num(t.threshold)} {unit}".strip()
    rule = f" (rule {t.rule})" if t.rule and t.rule != t.tag else ""
    text = _REASON_TEXT.get(t.reason)
    if text is not None:
        return f"{where}{rule}: {text}"
    if t.reason.startswith(("rate_", "compound", "zone_", "H", "L", "within")):
        return f"{where}{rule}: {t.level.value} ({t.reason}) at {value}"
    if t.reason == "over_range":
        return (
            f"{where}: {value} at or beyond full scale {limit}: over range; treated as over limit"
        )
    if t.reason == "over_range_latched":
        return f"{where}: reached full scale earlier; cut held until an engineer resets it"
    if t.reason.endswith("restore_hold"):
        return f"{where}: {value} below restore {limit}; power held until it stays there"
    if t.level is Level.FAULT:
        text = f"{where}: sensor fault ({t.reason})"
        if fail_safe:
            text += "; fail-safe: interlock tripped as if over limit"
        return text
    if t.level is Level.CUT:
        if t.previous is Level.FAULT:
            return (
                f"{where}: sensor good again at {value}, still not below restore {limit}; cut held"
            )
        return f"{where}: {value} reached the cut limit {limit}; power cut"
    if t.level is Level.ALARM:
        if t.previous is Level.CUT:
            return f"{where}: {value} back past restore {limit}; power may return, alarm remains"
        if t.previous is Level.FAULT:
            return f"{where}: sensor good again at {value}; alarm level"
        return f"{where}: {value} reached the alarm limit {limit}"
    if t.previous is Level.FAULT:
        return f"{where}: sensor good again at {value}; normal"
    return f"{where}: {value} back to normal (past {limit})"
