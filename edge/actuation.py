"""Interlock: the cause-and-effect matrix, and the coil writes that make it so.

Causes are rule ids (a tag's threshold rule has the tag's name), effects are
actuators. A tag's ``actuators:`` list and the site's ``interlocks:`` rows
both add causes. The desired state of an actuator is *active* when any of its
causes trips (``cut``, or ``fault`` on a fail-safe rule) and *inactive* only
when every cause is known and none trips. Until then it is undecided and never
written (a gateway restart does not release a breaker blindly).

Commands are not queued: each actuator keeps only its latest desired state.
The poller that owns the actuator's bus takes due commands before its next
read (:meth:`Interlock.take_commands`) and reports the outcome. Active
actuators are re-asserted every ``reassert_s``; failed writes are retried
every ``retry_s`` and reported once per failure streak.

Thread-safe: the safety buses' poller runs on its own thread (``edge/fastpath.py``)
while rules on the main loop may trip its actuators; every state change holds
one lock, and a bus's wake event is set on the loop that owns the bus
(:meth:`Interlock.bind_bus`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge.config import LoadedSite, ModbusActuator

__all__ = ["ActuatorCommand", "Interlock", "WriteRecord"]

log = logging.getLogger("safewatch.edge.actuation")


@dataclass(frozen=True, slots=True)
class ActuatorCommand:
    """Write ``coil_value`` to ``coil`` of unit ``unit`` on bus ``bus``."""

    actuator: str
    bus: str
    device: str
    unit: int
    coil: int
    active: bool
    coil_value: bool


@dataclass(frozen=True, slots=True)
class WriteRecord:
    actuator: str
    active: bool
    ok: bool
    ts_ns: int  # wall clock when the write finished
    at: float  # monotonic seconds
    error: str | None = None


@dataclass(slots=True)
class _ActuatorState:
    id: str
    bus: str
    device: str
    unit: int
    coil: int
    active_value: bool
    tags: tuple[str, ...]  # the causes (rule ids)
    desired: bool | None = None
    decided_at: float | None = None  # when the desired state last became active
    written: bool | None = None
    last_ok_at: float = -math.inf
    in_flight: bool = False
    failures: int = 0
    retry_at: float = -math.inf
    last: WriteRecord | None = None
    tripping: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)


WriteFailed = Callable[[ActuatorCommand, str], None]
WriteRecovered = Callable[[ActuatorCommand], None]


def annunciator_cause(actuator: str) -> str:
    """The interlock cause under which the gateway drives a horn or beacon from the
    alarm states (``alarms.annunciators``)."""
    return f"annunciate:{actuator}"


class Interlock:
    """Desired actuator states from tag levels; coalesced commands per bus."""

    def __init__(
        self,
        site: LoadedSite,
        *,
        reassert_s: float = 5.0,
        retry_s: float = 1.0,
        on_write_failed: WriteFailed | None = None,
        on_write_recovered: WriteRecovered | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reassert_s = reassert_s
        self.retry_s = retry_s
        self.on_write_failed = on_write_failed
        self.on_write_recovered = on_write_recovered
        self._clock = clock
        users: dict[str, list[str]] = {a.id: [] for a in site.config.actuators}
        for _, tag in site.tags():
            for actuator_id in tag.actuators:
                users[actuator_id].append(tag.name)
        for row in site.config.interlocks:
            for cause in row.causes:
                if cause not in users[row.effect]:
                    users[row.effect].append(cause)
        for ann in site.config.alarms.annunciators:  # horns/beacons driven by alarm states
            users[ann.actuator].append(annunciator_cause(ann.actuator))
        self._actuators: dict[str, _ActuatorState] = {}
        self._by_tag: dict[str, list[_ActuatorState]] = {}
        self._wake: dict[str, asyncio.Event] = {b.id: asyncio.Event() for b in site.config.buses}
        # bus -> (loop, thread id) of a bus polled on another thread than the caller's
        self._wake_loop: dict[str, tuple[asyncio.AbstractEventLoop, int]] = {}
        self._lock = threading.RLock()
        for act in site.config.actuators:
            device = site.device(act.device)
            state = _ActuatorState(
                id=act.id,
                bus=device.bus,
                device=device.id,
                unit=device.unit_id,
                coil=act.coil if isinstance(act, ModbusActuator) else -1,  # -1: not a coil
                active_value=act.active_value,
                tags=tuple(users[act.id]),
            )
            self._actuators[act.id] = state
            for tag_name in state.tags:
                self._by_tag.setdefault(tag_name, []).append(state)
        self.writes_ok = 0
        self.writes_failed = 0
        # decision -> coil written (ms), for actuators going active, and when (monotonic s,
        # comparable across processes on one host); bounded
        self.react_ms: list[float] = []
        self.react_at: list[float] = []
        self.keep_react = 100_000

    # -- rule side (synchronous, called for every sample) ---------------------

    def matrix(self) -> dict[str, tuple[str, ...]]:
        """effect (actuator id) -> causes (rule ids)."""
        return {a.id: a.tags for a in self._actuators.values()}

    def causes(self) -> set[str]:
        return set(self._by_tag)

    def actuators_of(self, cause: str) -> list[str]:
        return [a.id for a in self._by_tag.get(cause, [])]

    def observe(self, cause: str, trips: bool, now: float | None = None) -> list[str]:
        """Record whether rule ``cause`` trips; return the actuators whose desired state changed."""
        with self._lock:
            return self._observe(cause, trips, now)

    def _observe(self, cause: str, trips: bool, now: float | None) -> list[str]:
        changed: list[str] = []
        for act in self._by_tag.get(cause, ()):
            act.known.add(cause)
            if trips:
                act.tripping.add(cause)
            else:
                act.tripping.discard(cause)
            desired: bool | None
            if act.tripping:
                desired = True
            elif len(act.known) == len(act.tags):
                desired = False
            else:
                desired = None
            if desired != act.desired:
                act.desired = desired
                if desired:
                    act.decided_at = self._clock() if now is None else now
                if desired is not None:
                    changed.append(act.id)
                    log.info(
                        "actuator %s desired %s (tags tripping: %s)",
                        act.id,
                        "ACTIVE" if desired else "inactive",
                        ", ".join(sorted(act.tripping)) or "none",
                    )
                    self._notify(act.bus)
        return changed

    def _notify(self, bus: str) -> None:
        owner = self._wake_loop.get(bus)
        if owner is None or owner[1] == threading.get_ident():
            self._wake[bus].set()
        else:
            owner[0].call_soon_threadsafe(self._wake[bus].set)

    def desired(self, actuator: str) -> bool | None:
        return self._actuators[actuator].desired

    def written(self, actuator: str) -> bool | None:
        """The last state written successfully (None before the first write)."""
        return self._actuators[actuator].written

    def last_write(self, actuator: str) -> WriteRecord | None:
        return self._actuators[actuator].last

    def actuator_ids(self) -> list[str]:
        return list(self._actuators)

    # -- bus side (the poller that owns the bus) ------------------------------

    def wake_event(self, bus: str) -> asyncio.Event:
        """Set when a command for ``bus`` became due; the poller clears it."""
        return self._wake[bus]

    def bind_bus(self, bus: str, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        """``bus`` is polled by ``loop`` on thread ``thread_id``: a decision taken on another
        thread sets its wake event through ``call_soon_threadsafe``."""
        self._wake_loop[bus] = (loop, thread_id)

    def _due(self, act: _ActuatorState, now: float) -> bool:
        if act.desired is None or act.in_flight:
            return False
        if act.failures and now < act.retry_at:
            return False
        if act.desired != act.written or act.failures:
            return True
        return act.desired and now - act.last_ok_at >= self.reassert_s

    def take_commands(self, bus: str, now: float | None = None) -> list[ActuatorCommand]:
        """Commands due on ``bus`` now; each is in flight until reported back."""
        now = self._clock() if now is None else now
        commands: list[ActuatorCommand] = []
        with self._lock:
            self._take(bus, now, commands)
        return commands

    def _take(self, bus: str, now: float, commands: list[ActuatorCommand]) -> None:
        for act in self._actuators.values():
            if act.bus != bus or not self._due(act, now):
                continue
            assert act.desired is not None
            act.in_flight = True
            commands.append(
                ActuatorCommand(
                    actuator=act.id,
                    bus=act.bus,
                    device=act.device,
                    unit=act.unit,
                    coil=act.coil,
                    active=act.desired,
                    coil_value=act.active_value if act.desired else not act.active_value,
                )
            )

    def next_due(self, bus: str, now: float | None = None) -> float | None:
        """Monotonic time when the next re-assert or retry on ``bus`` falls due."""
        now = self._clock() if now is None else now
        times: list[float] = []
        with self._lock:
            for act in self._actuators.values():
                if act.bus != bus or act.desired is None or act.in_flight:
                    continue
                if act.failures:
                    times.append(act.retry_at)
                elif act.desired != act.written:
                    times.append(now)
                elif act.desired:
                    times.append(act.last_ok_at + self.reassert_s)
        return min(times) if times else None

    def write_succeeded(self, command: ActuatorCommand, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            recovered = self._succeeded(command, now)
        if recovered and self.on_write_recovered is not None:
            self.on_write_recovered(command)

    def _succeeded(self, command: ActuatorCommand, now: float) -> bool:
        act = self._actuators[command.actuator]
        act.in_flight = False
        recovered = act.failures > 0
        act.failures = 0
        first = act.written != command.active
        act.written = command.active
        act.last_ok_at = now
        act.last = WriteRecord(command.actuator, command.active, True, time.time_ns(), now)
        self.writes_ok += 1
        if first and command.active and act.decided_at is not None:
            if len(self.react_ms) < self.keep_react:
                self.react_ms.append((now - act.decided_at) * 1000)
                self.react_at.append(act.decided_at)
            act.decided_at = None
        if first or recovered:
            log.info(
                "actuator %s written %s (unit %d coil %d = %s)",
                command.actuator,
                "ACTIVE" if command.active else "inactive",
                command.unit,
                command.coil,
                command.coil_value,
            )
        return recovered

    def write_failed(self, command: ActuatorCommand, error: str, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            act = self._actuators[command.actuator]
            act.in_flight = False
            act.failures += 1
            act.retry_at = now + self.retry_s
            act.last = WriteRecord(
                command.actuator, command.active, False, time.time_ns(), now, error
            )
            self.writes_failed += 1
            attempt = act.failures
        log.error(
            "actuator %s write %s FAILED (attempt %d): %s",
            command.actuator,
            "ACTIVE" if command.active else "inactive",
            attempt,
            error,
        )
        if attempt == 1 and self.on_write_failed is not None:
            self.on_write_failed(command, error)

    def release_in_flight(self, commands: Iterable[ActuatorCommand]) -> None:
        """Give back commands that were taken but never attempted (poller stopping)."""
        with self._lock:
            for command in commands:
                self._actuators[command.actuator].in_flight = False
