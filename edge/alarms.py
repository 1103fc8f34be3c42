"""Alarm manager: level transitions -> logged, durable :class:`wire.AlarmEvent` messages.

Alarms are never dropped. They wait in an :class:`AlarmOutbox` (memory, in
order) until the buffer writer has stored them in the durable buffer; the
outbox only grows while the disk is failing, and that shows in its length.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable

import wire
from edge.actuation import ActuatorCommand
from edge.config import LoadedSite
from edge.rules import Level, Transition

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
        self._levels: dict[str, Level] = {tag: Level.NORMAL for tag in self._tags}
        self.raised = 0

    def levels(self) -> dict[str, Level]:
        """The current level of every tag."""
        return dict(self._levels)

    def level(self, tag: str) -> Level:
        return self._levels[tag]

    def on_transition(
        self, transition: Transition, actuators: Iterable[str] = ()
    ) -> wire.AlarmEvent:
        """Record, log and hand on one transition; ``actuators`` were commanded by it."""
        device, tag = self._tags[transition.tag]
        profile = self._site.profile_of(tag)
        unit = self._site.unit_of(tag)
        self._levels[transition.tag] = transition.level
        commanded = list(actuators)
        message = describe(
            transition, unit=unit, area=tag.location.area, fail_safe=profile.fail_safe
        )
        if commanded:
            message += f"; commanded {', '.join(commanded)}"
        event = wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,  # assigned by the durable buffer
            alarm_id=uuid.uuid4().hex,
            tag=tag.name,
            device=device.id,
            kind=profile.kind,
            area=tag.location.area,
            position=tag.location.position,
            level=transition.level.value,
            previous=transition.previous.value,
            value=transition.value,
            threshold=transition.threshold,
            ts_ns=transition.ts_ns,
            message=message,
            actuators=commanded,
        )
        self._emit(event, transition.level)
        return event

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
        )

    def _emit(self, event: wire.AlarmEvent, level: Level) -> None:
        self.raised += 1
        logger = log.info if level is Level.NORMAL else log.warning
        logger("ALARM %s %s -> %s: %s", event.tag, event.previous, event.level, event.message)
        self._sink(event)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def describe(transition: Transition, *, unit: str, area: str, fail_safe: bool) -> str:
    """A plain-words sentence for one transition."""
    t = transition
    where = f"{t.tag} in {area}"
    value = f"{_num(t.value)} {unit}".strip()
    limit = f"{_num(t.threshold)} {unit}".strip()
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
