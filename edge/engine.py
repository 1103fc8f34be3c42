"""The safety path for one sample: threshold machine -> interlock -> alarm manager.

Synchronous and allocation-light: the bus poller calls :meth:`SafetyEngine.handle`
for every sample. The only hand-off to the uplink is a ``put_nowait`` into a
bounded queue; when that queue is full the sample is counted and dropped, and
the safety decision has already been taken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from device_drivers import Quality, Sample
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import LoadedSite
from edge.rules import Level, ThresholdMachine, Transition

__all__ = ["SafetyEngine"]


class SafetyEngine:
    """One :class:`ThresholdMachine` per tag, wired to the interlock and the alarms."""

    def __init__(
        self,
        site: LoadedSite,
        interlock: Interlock,
        alarms: AlarmManager,
        uplink: asyncio.Queue[Sample] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interlock = interlock
        self.alarms = alarms
        self.uplink = uplink
        self._clock = clock
        start = clock()
        self._devices: dict[str, str] = {}
        self.machines: dict[str, ThresholdMachine] = {}
        for device, tag in site.tags():
            self._devices[tag.name] = device.id
            self.machines[tag.name] = ThresholdMachine(
                site.thresholds_of(tag),
                site.profile_of(tag).fail_safe,
                tag=tag.name,
                stale_after_s=device.stale_after_s,
                started_at=start,
            )
        self.samples = 0
        self.uplink_dropped = 0

    def levels(self) -> dict[str, Level]:
        return {tag: m.level for tag, m in self.machines.items()}

    def handle(self, sample: Sample) -> Transition | None:
        """Decide on one sample now; queue it for the uplink without waiting."""
        machine = self.machines.get(sample.tag)
        if machine is None:
            return None
        self.samples += 1
        transition = machine.update(sample, self._clock())
        self._decide(machine, transition)
        self._to_uplink(sample)
        return transition

    def check_stale(self, now: float | None = None) -> list[Transition]:
        """Put every tag without a good sample for too long into fault."""
        now = self._clock() if now is None else now
        found: list[Transition] = []
        for tag, machine in self.machines.items():
            transition = machine.check_stale(now)
            if transition is None:
                continue
            found.append(transition)
            self._decide(machine, transition)
            self._to_uplink(
                Sample(tag, self._devices[tag], None, Quality.BAD, transition.ts_ns, "stale")
            )
        return found

    def _decide(self, machine: ThresholdMachine, transition: Transition | None) -> None:
        if not machine.known:
            return
        changed = self.interlock.observe(machine.tag, machine.trips)
        if transition is not None:
            # entering a trip holds all of the tag's actuators; leaving releases those that changed
            commanded = self.interlock.actuators_of(machine.tag) if machine.trips else changed
            self.alarms.on_transition(transition, commanded)

    def _to_uplink(self, sample: Sample) -> None:
        if self.uplink is None:
            return
        try:
            self.uplink.put_nowait(sample)
        except asyncio.QueueFull:
            self.uplink_dropped += 1
