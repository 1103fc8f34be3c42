"""Two-level thresholds with hysteresis, fault and staleness: pure, no I/O.

One :class:`ThresholdMachine` per tag turns samples into alarm levels::

    normal --(>= alarm)--> alarm --(>= cut)--> cut
    cut stays cut until the value is back below ``restore``;
    alarm stays alarm until the value is back below ``clear_at``.

``direction: low`` mirrors every comparison (O2 alarms when it *falls*).

A bad sample, or no good sample for ``stale_after_s``, puts the tag in
``fault``. For a fail-safe profile (methane) the interlock treats fault like
``cut`` (fault lockout), and leaving fault needs a good sample that is then
evaluated as if the tag had been cut: a good value still at or past
``restore`` stays cut.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass

from device_drivers import Quality, Sample
from edge.config import Direction, Thresholds

__all__ = ["Level", "ThresholdMachine", "Transition"]


class Level(enum.StrEnum):
    NORMAL = "normal"
    ALARM = "alarm"
    CUT = "cut"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Transition:
    """A tag changed level. ``threshold`` is the limit that was crossed (None for fault)."""

    tag: str
    previous: Level
    level: Level
    value: float | None
    threshold: float | None
    reason: str
    ts_ns: int


class ThresholdMachine:
    """The alarm level of one tag, driven by its samples and the clock.

    ``now`` arguments are monotonic seconds (``time.monotonic()`` by default);
    they only matter for staleness.
    """

    def __init__(
        self,
        thresholds: Thresholds,
        fail_safe: bool,
        *,
        tag: str = "",
        stale_after_s: float = math.inf,
        started_at: float | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.fail_safe = fail_safe
        self.tag = tag
        self.stale_after_s = stale_after_s
        self._level = Level.NORMAL
        self._known = False  # no sample evaluated yet (and not stale yet)
        self._before_fault = Level.NORMAL
        self._last_good = time.monotonic() if started_at is None else started_at
        self.last_value: float | None = None

    @property
    def level(self) -> Level:
        return self._level

    @property
    def known(self) -> bool:
        """True once the level reflects a sample (or staleness), not just the start-up default."""
        return self._known

    @property
    def trips(self) -> bool:
        """Whether this tag demands its interlock actuators be active."""
        return self._level is Level.CUT or (self._level is Level.FAULT and self.fail_safe)

    def update(self, sample: Sample, now: float | None = None) -> Transition | None:
        """Evaluate one sample; return the transition if the level changed."""
        now = time.monotonic() if now is None else now
        if not self.tag:
            self.tag = sample.tag
        value = sample.value
        if sample.quality is Quality.BAD or value is None or not math.isfinite(value):
            self.last_value = value
            return self._enter_fault(value, sample.reason or "bad", sample.ts_ns)
        self.last_value = value
        if sample.quality is Quality.GOOD:
            self._last_good = now
        elif self._level is Level.FAULT:
            # an uncertain reading is not enough to leave fault lockout
            return None
        previous = self._level
        base = previous
        if previous is Level.FAULT:
            base = self._recovery_base()
        level, threshold, reason = self._evaluate(value, base)
        if previous is Level.FAULT and level is not Level.FAULT:
            reason = f"sensor_recovered:{reason}" if reason else "sensor_recovered"
        return self._move(previous, level, value, threshold, reason, sample.ts_ns)

    def check_stale(self, now: float | None = None) -> Transition | None:
        """Enter fault if no good sample arrived for ``stale_after_s``."""
        now = time.monotonic() if now is None else now
        if self._level is Level.FAULT or now - self._last_good < self.stale_after_s:
            return None
        return self._enter_fault(None, "stale", time.time_ns())

    # -- internals -------------------------------------------------------------

    def _recovery_base(self) -> Level:
        if self.fail_safe:
            return Level.CUT if self.thresholds.cut is not None else Level.ALARM
        return self._before_fault

    def _enter_fault(self, value: float | None, reason: str, ts_ns: int) -> Transition | None:
        previous = self._level
        if previous is not Level.FAULT:
            self._before_fault = previous
        return self._move(previous, Level.FAULT, value, None, reason, ts_ns)

    def _move(
        self,
        previous: Level,
        level: Level,
        value: float | None,
        threshold: float | None,
        reason: str,
        ts_ns: int,
    ) -> Transition | None:
        self._known = True
        self._level = level
        if level is previous:
            return None  # includes starting up normal: not news
        return Transition(self.tag, previous, level, value, threshold, reason, ts_ns)

    def _evaluate(self, value: float, base: Level) -> tuple[Level, float | None, str]:
        th = self.thresholds
        high = th.direction is Direction.HIGH
        side = "above" if high else "below"
        back = "below" if high else "above"

        def reached(limit: float) -> bool:
            return value >= limit if high else value <= limit

        def back_past(limit: float) -> bool:
            return value < limit if high else value > limit

        if th.cut is not None and reached(th.cut):
            return Level.CUT, th.cut, f"{side}_cut"
        if base is Level.CUT and th.cut is not None:
            assert th.restore is not None, "validated: cut needs restore"
            if not back_past(th.restore):
                return Level.CUT, th.restore, f"{side}_restore"
            if reached(th.alarm) or not back_past(th.clear_at):
                return Level.ALARM, th.restore, f"{back}_restore"
            return Level.NORMAL, th.restore, f"{back}_restore"
        if reached(th.alarm):
            return Level.ALARM, th.alarm, f"{side}_alarm"
        if base in (Level.ALARM, Level.CUT) and not back_past(th.clear_at):
            return Level.ALARM, th.clear_at, f"{side}_clear"
        return Level.NORMAL, th.clear_at, f"{back}_clear"
