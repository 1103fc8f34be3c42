"""Safety rules: pure state machines from samples and the clock to a condition. No I/O.

Every rule has an id, its input tags, :meth:`Rule.update` (one sample),
:meth:`Rule.tick` (time passing: delays, staleness, rate windows, feedback
timeouts) and a :class:`Condition` (normal / alarm / cut / fault) with a
machine-readable reason. A rule *trips* when its condition is ``cut``, or
``fault`` on a fail-safe rule; the interlock matrix (``edge.actuation``)
turns trips into actuator states. The engine (``edge.engine``) owns the
rules: nobody else keeps a copy of a condition.

The threshold rule (one per tag with thresholds, id = tag name)::

    normal --(>= alarm)--> alarm --(>= cut)--> cut
    cut stays cut until the value has been below ``restore`` for ``restore_hold_s``;
    alarm stays alarm until the value is back past ``clear_at`` (alarm - deadband).

``direction: low`` mirrors every comparison (O2 alarms when it *falls*). A bad
sample, or no good sample for ``stale_after_s``, is ``fault``; a fail-safe
rule (methane) trips in fault and leaves it as if it had been cut. A reading
at or beyond full scale is ``over_range``: cut (or alarm), and on a latching
profile (catalytic methane) held until an engineer resets it. A fail-safe rule
with no saved state judges its first sample as if it had been cut.

``now`` arguments are monotonic seconds.
"""

from __future__ import annotations

import abc
import enum
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from device_drivers import Quality, Sample
from edge.config import (
    PER_SECONDS,
    Direction,
    FanLockoutRule,
    FeedbackRule,
    Limit,
    LimitName,
    RateRule,
    SpikeRule,
    StuckRule,
    Thresholds,
    ZonesRule,
)

__all__ = [
    "CompoundCondition",
    "Condition",
    "DriftCheck",
    "FanLockout",
    "FeedbackCheck",
    "Level",
    "MultiLimit",
    "RateOfChange",
    "Rule",
    "SpikeCheck",
    "StuckCheck",
    "ThresholdMachine",
    "ThresholdRule",
    "Transition",
    "VibrationZones",
]


class Condition(enum.StrEnum):
    NORMAL = "normal"
    ALARM = "alarm"
    CUT = "cut"
    FAULT = "fault"


Level = Condition  # the name the first gateway used

_SEVERITY = {Condition.NORMAL: 0, Condition.ALARM: 1, Condition.FAULT: 2, Condition.CUT: 3}


def worst(conditions: list[Condition]) -> Condition:
    return max(conditions, key=_SEVERITY.__getitem__, default=Condition.NORMAL)


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule changed condition. ``threshold`` is the limit involved (None for fault)."""

    tag: str
    previous: Condition
    level: Condition
    value: float | None
    threshold: float | None
    reason: str
    ts_ns: int
    rule: str = ""  # the rule id ("" means the tag's threshold rule)

    @property
    def rule_id(self) -> str:
        return self.rule or self.tag


class Rule(abc.ABC):
    """One rule: inputs in, a condition with a reason out."""

    kind = "rule"

    def __init__(self, rule_id: str, inputs: tuple[str, ...], *, fail_safe: bool = False) -> None:
        self.id = rule_id
        self.inputs = inputs
        self.fail_safe = fail_safe
        self._condition = Condition.NORMAL
        self._reason = ""
        self._known = False

    @property
    def tag(self) -> str:
        """The tag an alarm of this rule is reported on (its first input)."""
        return self.inputs[0] if self.inputs else self.id

    @property
    def condition(self) -> Condition:
        return self._condition

    level = condition

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def known(self) -> bool:
        """True once the condition reflects inputs (or restored latched state)."""
        return self._known

    @property
    def trips(self) -> bool:
        """Whether this rule demands its effects (actuators) be active."""
        return self._condition is Condition.CUT or (
            self._condition is Condition.FAULT and self.fail_safe
        )

    @abc.abstractmethod
    def update(self, sample: Sample, now: float) -> Transition | None:
        """Evaluate one sample of one of :attr:`inputs`."""

    def tick(self, now: float) -> Transition | None:
        """Let time pass (delays, staleness, windows)."""
        return None

    # latched state (restart safety): only rules that latch override these

    def snapshot(self) -> dict[str, Any] | None:
        return None

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def _move(
        self,
        level: Condition,
        value: float | None,
        threshold: float | None,
        reason: str,
        ts_ns: int,
        *,
        known: bool = True,
    ) -> Transition | None:
        previous = self._condition
        self._known = self._known or known
        self._condition = level
        if level is previous:
            if reason:
                self._reason = reason
            return None
        self._reason = reason
        return Transition(self.tag, previous, level, value, threshold, reason, ts_ns, self.id)


def _bad(sample: Sample) -> bool:
    v = sample.value
    return sample.quality is Quality.BAD or v is None or not math.isfinite(v)


# -- thresholds --------------------------------------------------------------------


class ThresholdRule(Rule):
    """Two-level thresholds with hysteresis, restore hold, fault, staleness and over range."""

    kind = "threshold"

    def __init__(
        self,
        thresholds: Thresholds,
        fail_safe: bool,
        *,
        tag: str = "",
        stale_after_s: float = math.inf,
        started_at: float | None = None,
        restore_hold_s: float = 0.0,
        full_scale: float = math.inf,
        over_range_latch: bool = False,
    ) -> None:
        super().__init__(tag, (tag,) if tag else (), fail_safe=fail_safe)
        self.thresholds = thresholds
        self.stale_after_s = stale_after_s
        self.restore_hold_s = restore_hold_s
        self.full_scale = full_scale
        self.over_range_latch = over_range_latch
        self._before_fault = Condition.NORMAL
        self._last_good = time.monotonic() if started_at is None else started_at
        self._below_since: float | None = None  # first reading back past restore (hold)
        self._alarm_since: float | None = None  # on-delay pending
        self._clear_since: float | None = None  # off-delay pending
        self.latched_over_range = False
        # no saved state: a fail-safe rule judges its first sample as if it had been cut
        self._first_base: Condition | None = self._recovery_base() if fail_safe else None
        self.last_value: float | None = None
        # the quiet band: a GOOD reading strictly inside it changes nothing but
        # last_value and the staleness clock (SafetyEngine.handle_block's fast path);
        # empty unless the rule sits in its steady normal state (see _refresh_quiet)
        self._quiet_lo = math.inf
        self._quiet_hi = -math.inf

    @property
    def high(self) -> bool:
        return self.thresholds.direction is Direction.HIGH

    def _reached(self, value: float, limit: float) -> bool:
        return value >= limit if self.high else value <= limit

    def _back_past(self, value: float, limit: float) -> bool:
        return value < limit if self.high else value > limit

    def over_range(self, value: float) -> bool:
        return self.high and value >= self.full_scale

    def check_stale(self, now: float | None = None) -> Transition | None:
        return self.tick(time.monotonic() if now is None else now)

    def update(self, sample: Sample, now: float | None = None) -> Transition | None:
        transition = self._update(sample, time.monotonic() if now is None else now)
        self._refresh_quiet()
        return transition

    def quiet(self, value: float, now: float) -> bool:
        """Take a GOOD reading on the fast path if it is inside the quiet band: the same
        effect as :meth:`update` (no transition, no other state), much cheaper."""
        if self._quiet_lo < value < self._quiet_hi:
            self.last_value = value
            self._last_good = now
            return True
        return False

    def _refresh_quiet(self) -> None:
        """Open the quiet band only in the steady normal state, where :meth:`update` of a
        GOOD reading below alarm, cut and full scale (direction high; above them for
        direction low, below full scale) provably leaves everything but ``last_value``
        and ``_last_good`` as it was. Any other state closes it."""
        th = self.thresholds
        steady = (
            self._condition is Condition.NORMAL
            and self._known
            and self._first_base is None
            and not self.latched_over_range
            and self._alarm_since is None
            and self._clear_since is None
            and self._below_since is None
            and self._reason == ("below_clear" if self.high else "above_clear")
        )
        if not steady:
            self._quiet_lo, self._quiet_hi = math.inf, -math.inf
        elif self.high:
            hi = min(th.alarm, math.inf if th.cut is None else th.cut, self.full_scale)
            self._quiet_lo, self._quiet_hi = -math.inf, hi
        else:
            lo = max(th.alarm, -math.inf if th.cut is None else th.cut)
            self._quiet_lo, self._quiet_hi = lo, self.full_scale

    def _update(self, sample: Sample, now: float) -> Transition | None:
        if not self.id:
            self.id = sample.tag
            self.inputs = (sample.tag,)
        value = sample.value
        self.last_value = value
        if value is not None and math.isfinite(value) and self.over_range(value):
            return self._over_range(value, sample.ts_ns, now)
        if _bad(sample):
            return self._enter_fault(value, sample.reason or "bad", sample.ts_ns)
        assert value is not None
        if sample.quality is Quality.GOOD:
            self._last_good = now
        elif self._condition is Condition.FAULT:
            return None  # an uncertain reading is not enough to leave fault lockout
        previous = self._condition
        base = previous
        if self._first_base is not None:
            base, self._first_base = self._first_base, None
        if previous is Condition.FAULT:
            base = self._recovery_base()
        if self.latched_over_range:
            level = Condition.CUT if self.thresholds.cut is not None else Condition.ALARM
            return self._move(level, value, self.full_scale, "over_range_latched", sample.ts_ns)
        level, threshold, reason = self._evaluate(value, base, now)
        if previous is Condition.FAULT and level is not Condition.FAULT:
            reason = f"sensor_recovered:{reason}"
        return self._move(level, value, threshold, reason, sample.ts_ns)

    def tick(self, now: float) -> Transition | None:
        """Fault when no good sample arrived for ``stale_after_s``; expire alarm delays."""
        if self._condition is not Condition.FAULT and now - self._last_good >= self.stale_after_s:
            transition = self._enter_fault(None, "stale", time.time_ns())
            self._refresh_quiet()
            return transition
        value = self.last_value
        pending = self._alarm_since is not None or self._clear_since is not None
        if pending and value is not None and math.isfinite(value):
            if self._condition in (Condition.CUT, Condition.FAULT):
                return None
            level, threshold, reason = self._alarm_level(value, self._condition, now)
            moved = None
            if level is not self._condition:
                moved = self._move(level, value, threshold, reason, time.time_ns())
            self._refresh_quiet()
            return moved
        return None

    def reset_latch(self) -> bool:
        """An engineer's reset of an over-range latch; the next sample is judged as if cut."""
        if not self.latched_over_range:
            return False
        self.latched_over_range = False
        self._below_since = None
        self._refresh_quiet()
        return True

    # -- latched state -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"condition": self._condition.value, "latched_over_range": self.latched_over_range}

    def restore(self, state: Mapping[str, Any]) -> None:
        try:
            condition = Condition(state.get("condition", "normal"))
        except ValueError:
            condition = Condition.CUT if self.fail_safe else Condition.NORMAL
        self._first_base = None
        self.latched_over_range = bool(state.get("latched_over_range", False))
        if condition is Condition.FAULT:
            self._before_fault = (
                Condition.CUT if self.thresholds.cut is not None else Condition.NORMAL
            )
        self._condition = condition
        self._reason = "restored"
        # a restored trip is known at once: the breaker is re-asserted before any read
        self._known = self.trips
        self._refresh_quiet()

    # -- internals -------------------------------------------------------------------

    def _recovery_base(self) -> Condition:
        if self.fail_safe:
            return Condition.CUT if self.thresholds.cut is not None else Condition.ALARM
        return self._before_fault

    def _enter_fault(self, value: float | None, reason: str, ts_ns: int) -> Transition | None:
        if self._condition is not Condition.FAULT:
            self._before_fault = self._condition
        self._below_since = None
        self._first_base = None
        return self._move(Condition.FAULT, value, None, reason, ts_ns)

    def _over_range(self, value: float, ts_ns: int, now: float) -> Transition | None:
        self._last_good = now  # a reading arrived; it is not stale, only untrustworthy
        self._below_since = None
        self._first_base = None
        if self.over_range_latch and self.thresholds.cut is not None:
            self.latched_over_range = True
        th = self.thresholds
        level = Condition.CUT if th.cut is not None else Condition.ALARM
        return self._move(level, value, self.full_scale, "over_range", ts_ns)

    def _evaluate(
        self, value: float, base: Condition, now: float
    ) -> tuple[Condition, float | None, str]:
        th = self.thresholds
        side = "above" if self.high else "below"
        if th.cut is not None and self._reached(value, th.cut):
            self._below_since = None
            return Condition.CUT, th.cut, f"{side}_cut"  # never delayed
        if base is Condition.CUT and th.cut is not None:
            assert th.restore is not None, "validated: cut needs restore"
            if not self._back_past(value, th.restore):
                self._below_since = None
                return Condition.CUT, th.restore, f"{side}_restore"
            if self._below_since is None:
                self._below_since = now
            if now - self._below_since < self.restore_hold_s:
                return Condition.CUT, th.restore, "restore_hold"
            self._below_since = None
            self._alarm_since = self._clear_since = None
            back = "below" if self.high else "above"
            if self._reached(value, th.alarm) or not self._back_past(value, th.clear_at):
                return Condition.ALARM, th.restore, f"{back}_restore"
            return Condition.NORMAL, th.restore, f"{back}_restore"
        self._below_since = None
        return self._alarm_level(value, base, now)

    def _alarm_level(
        self, value: float, base: Condition, now: float
    ) -> tuple[Condition, float | None, str]:
        th = self.thresholds
        side = "above" if self.high else "below"
        back = "below" if self.high else "above"
        if base is Condition.ALARM or base is Condition.CUT:
            if not self._back_past(value, th.clear_at):
                self._clear_since = None
                return Condition.ALARM, th.clear_at, f"{side}_clear"
            if th.alarm_off_delay_s and base is Condition.ALARM:
                if self._clear_since is None:
                    self._clear_since = now
                if now - self._clear_since < th.alarm_off_delay_s:
                    return Condition.ALARM, th.clear_at, "clear_delay"
            self._clear_since = None
            return Condition.NORMAL, th.clear_at, f"{back}_clear"
        if self._reached(value, th.alarm):
            if th.alarm_on_delay_s:
                if self._alarm_since is None:
                    self._alarm_since = now
                if now - self._alarm_since < th.alarm_on_delay_s:
                    return Condition.NORMAL, th.alarm, "alarm_delay"
            self._alarm_since = None
            return Condition.ALARM, th.alarm, f"{side}_alarm"
        self._alarm_since = None
        return Condition.NORMAL, th.clear_at, f"{back}_clear"


ThresholdMachine = ThresholdRule  # the name the first gateway used


# -- multi-level limits and vibration zones ----------------------------------------


@dataclass(slots=True)
class _LimitState:
    limit: Limit
    active: bool = False
    since: float | None = None  # pending on/off delay


class MultiLimit(Rule):
    """H/HH/L/LL limits with deadband and on/off delays: H/L alarm, HH/LL cut."""

    kind = "limits"

    def __init__(
        self,
        rule_id: str,
        tag: str,
        limits: tuple[Limit, ...],
        *,
        fail_safe: bool = False,
        stale_after_s: float = math.inf,
        started_at: float = 0.0,
    ) -> None:
        super().__init__(rule_id, (tag,), fail_safe=fail_safe)
        self._limits = [_LimitState(lim) for lim in limits]
        self.stale_after_s = stale_after_s
        self._last_good = started_at
        self.last_value: float | None = None

    def _reached(self, lim: Limit, value: float) -> bool:
        return value >= lim.value if lim.name.high else value <= lim.value

    def _cleared(self, lim: Limit, value: float) -> bool:
        if lim.name.high:
            return value < lim.value - lim.deadband
        return value > lim.value + lim.deadband

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            for st in self._limits:
                st.since = None
            return self._move(
                Condition.FAULT, sample.value, None, sample.reason or "bad", sample.ts_ns
            )
        assert sample.value is not None
        if sample.quality is Quality.GOOD:
            self._last_good = now
        self.last_value = sample.value
        return self._evaluate(sample.value, now, sample.ts_ns)

    def tick(self, now: float) -> Transition | None:
        if self._condition is not Condition.FAULT and now - self._last_good >= self.stale_after_s:
            return self._move(Condition.FAULT, None, None, "stale", time.time_ns())
        if self.last_value is not None and any(st.since is not None for st in self._limits):
            return self._evaluate(self.last_value, now, time.time_ns())
        return None

    def _evaluate(self, value: float, now: float, ts_ns: int) -> Transition | None:
        for st in self._limits:
            lim = st.limit
            if not st.active:
                if self._reached(lim, value):
                    # a cut limit on a fail-safe rule never waits (validated: no on-delay)
                    delay = 0.0 if (lim.name.severe and self.fail_safe) else lim.on_delay_s
                    st.since = now if st.since is None else st.since
                    if now - st.since >= delay:
                        st.active, st.since = True, None
                else:
                    st.since = None
            elif self._cleared(lim, value):
                st.since = now if st.since is None else st.since
                if now - st.since >= lim.off_delay_s:
                    st.active, st.since = False, None
            else:
                st.since = None
        active = [st.limit for st in self._limits if st.active]
        severe = [lim for lim in active if lim.name.severe]
        if severe:
            lim = severe[0]
            return self._move(Condition.CUT, value, lim.value, f"{lim.name}", ts_ns)
        if active:
            lim = active[0]
            return self._move(Condition.ALARM, value, lim.value, f"{lim.name}", ts_ns)
        return self._move(Condition.NORMAL, value, None, "within_limits", ts_ns)


class VibrationZones(MultiLimit):
    """ISO 10816-3 zones A/B/C/D: zone C alarms (limited operation), zone D cuts (danger)."""

    kind = "zones"

    def __init__(
        self, config: ZonesRule, *, stale_after_s: float = math.inf, started_at: float = 0.0
    ) -> None:
        ab, bc, cd = config.zone_limits
        self.boundaries = (ab, bc, cd)
        limits = (
            Limit(
                name=LimitName.H, value=bc, deadband=config.deadband, on_delay_s=config.on_delay_s
            ),
            Limit(
                name=LimitName.HH, value=cd, deadband=config.deadband, on_delay_s=config.on_delay_s
            ),
        )
        super().__init__(
            config.id, config.tag, limits, stale_after_s=stale_after_s, started_at=started_at
        )

    def zone(self) -> str:
        if self._condition is Condition.CUT:
            return "D"
        if self._condition is Condition.ALARM:
            return "C"
        value = self.last_value
        if value is None:
            return "?"
        return "B" if value >= self.boundaries[0] else "A"

    def _evaluate(self, value: float, now: float, ts_ns: int) -> Transition | None:
        transition = super()._evaluate(value, now, ts_ns)
        self._reason = f"zone_{self.zone()}"
        if transition is None:
            return None
        return Transition(
            transition.tag,
            transition.previous,
            transition.level,
            transition.value,
            transition.threshold,
            self._reason,
            transition.ts_ns,
            transition.rule,
        )


# -- rate of change and sensor self-diagnosis ----------------------------------------


class RateOfChange(Rule):
    """Rise over a sliding window, in units per ``per`` (e.g. mm/day, %/min)."""

    kind = "rate"
    MAX_POINTS = 512

    def __init__(self, config: RateRule) -> None:
        super().__init__(config.id, (config.tag,))
        self.config = config
        self._points: deque[tuple[float, float]] = deque()
        self.rate: float | None = None

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            return None  # the tag's own rule reports faults; a rate needs readings
        assert sample.value is not None
        cfg = self.config
        points = self._points
        # keep at most MAX_POINTS over the window (downsampled) so a day-long window stays small
        step = cfg.window_s / self.MAX_POINTS
        if not points or now - points[-1][0] >= step:
            points.append((now, sample.value))
        else:
            points[-1] = (points[-1][0], sample.value)
        while points and now - points[0][0] > cfg.window_s:
            points.popleft()
        if len(points) < 2 or points[-1][0] - points[0][0] < cfg.window_s / 2:
            return None  # not enough history for a rate yet
        (t0, v0), (t1, v1) = points[0], points[-1]
        self.rate = (v1 - v0) / (t1 - t0) * PER_SECONDS[cfg.per]
        return self._judge(self.rate, sample.ts_ns)

    def _judge(self, rate: float, ts_ns: int) -> Transition | None:
        cfg = self.config
        current = self._condition
        unit = f"per_{cfg.per}"
        if cfg.cut_rate is not None and rate >= cfg.cut_rate:
            return self._move(Condition.CUT, rate, cfg.cut_rate, f"rate_above_cut_{unit}", ts_ns)
        if (
            current is Condition.CUT
            and cfg.cut_rate is not None
            and rate >= cfg.cut_rate - cfg.deadband
        ):
            return None
        if rate >= cfg.alarm_rate or (
            current is not Condition.NORMAL and rate >= cfg.alarm_rate - cfg.deadband
        ):
            return self._move(
                Condition.ALARM, rate, cfg.alarm_rate, f"rate_above_alarm_{unit}", ts_ns
            )
        return self._move(Condition.NORMAL, rate, cfg.alarm_rate, f"rate_normal_{unit}", ts_ns)


class StuckCheck(Rule):
    """Flat line: the value stayed within ``noise`` for ``window_s`` -> maintenance alarm."""

    kind = "diagnosis"

    def __init__(self, config: StuckRule, started_at: float = 0.0) -> None:
        super().__init__(config.id, (config.tag,))
        self.config = config
        self._low = self._high = math.nan
        self._since = started_at

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            return None
        value = sample.value
        assert value is not None
        low, high = min(self._low, value), max(self._high, value)
        if math.isnan(self._low) or high - low > self.config.noise:
            self._low = self._high = value
            self._since = now
            return self._move(Condition.NORMAL, value, None, "changing", sample.ts_ns)
        self._low, self._high = low, high
        if now - self._since >= self.config.window_s:
            return self._move(Condition.ALARM, value, self.config.noise, "stuck", sample.ts_ns)
        return None

    @property
    def marks(self) -> str | None:
        return "stuck" if self._condition is Condition.ALARM else None


class SpikeCheck(Rule):
    """A jump larger than ``max_step`` between consecutive readings -> maintenance alarm."""

    kind = "diagnosis"

    def __init__(self, config: SpikeRule) -> None:
        super().__init__(config.id, (config.tag,))
        self.config = config
        self._previous: float | None = None
        self._spike_at = -math.inf
        self.spike_now = False

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            self._previous = None
            return None
        value = sample.value
        assert value is not None
        previous, self._previous = self._previous, value
        self.spike_now = previous is not None and abs(value - previous) > self.config.max_step
        if self.spike_now:
            self._spike_at = now
            return self._move(Condition.ALARM, value, self.config.max_step, "spike", sample.ts_ns)
        return self.tick(now)

    def tick(self, now: float) -> Transition | None:
        if self._condition is Condition.ALARM and now - self._spike_at >= self.config.clear_after_s:
            return self._move(Condition.NORMAL, self._previous, None, "no_spike", time.time_ns())
        return None

    @property
    def marks(self) -> str | None:
        return "spike" if self.spike_now else None


class DriftCheck(Rule):
    """Two neighbouring sensors disagree by more than ``max_diff`` for ``window_s``."""

    kind = "diagnosis"

    def __init__(
        self, rule_id: str, tag: str, neighbour: str, max_diff: float, window_s: float
    ) -> None:
        super().__init__(rule_id, (tag, neighbour))
        self.max_diff = max_diff
        self.window_s = window_s
        self._values: dict[str, float] = {}
        self._apart_since: float | None = None

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            self._values.pop(sample.tag, None)
            self._apart_since = None
            return None
        assert sample.value is not None
        self._values[sample.tag] = sample.value
        if len(self._values) < 2:
            return None
        a, b = (self._values[t] for t in self.inputs)
        if abs(a - b) <= self.max_diff:
            self._apart_since = None
            return self._move(Condition.NORMAL, a, self.max_diff, "agrees", sample.ts_ns)
        self._apart_since = now if self._apart_since is None else self._apart_since
        if now - self._apart_since >= self.window_s:
            return self._move(Condition.ALARM, a, self.max_diff, "drift", sample.ts_ns)
        return None

    @property
    def marks(self) -> str | None:
        return "drift" if self._condition is Condition.ALARM else None


# -- lockouts and feedback -------------------------------------------------------------


class FanLockout(Rule):
    """风电闭锁 / 甲烷电闭锁 at a heading.

    Trips while the fan is stopped, faulty or stale. Power may return only when
    the fan has run for ``restore_hold_s`` and every methane tag is good and
    below its restore limit. With no saved state it starts tripped.
    """

    kind = "lockout"

    def __init__(
        self,
        config: FanLockoutRule,
        restore_limits: Mapping[str, float],
        *,
        restore_hold_s: float,
        stale_after_s: float,
        started_at: float,
    ) -> None:
        super().__init__(config.id, (config.fan, *config.methane), fail_safe=True)
        self.config = config
        self.restore_limits = dict(restore_limits)
        self.restore_hold_s = restore_hold_s
        self.stale_after_s = stale_after_s
        self._fan_seen = started_at
        self._running_since: float | None = None
        self._methane: dict[str, float | None] = dict.fromkeys(config.methane)
        # fail-safe start: tripped until the fan is seen running and methane below restore
        self._condition = Condition.CUT
        self._reason = "startup"
        self._known = True

    def update(self, sample: Sample, now: float) -> Transition | None:
        if sample.tag == self.config.fan:
            self._fan_seen = now
            if _bad(sample):
                self._running_since = None
                return self._move(Condition.CUT, None, None, "fan_fault", sample.ts_ns)
            assert sample.value is not None
            if sample.value < self.config.running_at:
                self._running_since = None
                return self._move(
                    Condition.CUT, sample.value, self.config.running_at, "fan_stopped", sample.ts_ns
                )
            if self._running_since is None:
                self._running_since = now
        elif sample.tag in self._methane:
            good = sample.quality is Quality.GOOD and not _bad(sample)
            self._methane[sample.tag] = sample.value if good else None
        return self._judge(now, sample.ts_ns)

    def tick(self, now: float) -> Transition | None:
        if now - self._fan_seen >= self.stale_after_s:
            self._running_since = None
            return self._move(Condition.CUT, None, None, "fan_stale", time.time_ns())
        return self._judge(now, time.time_ns())

    def _judge(self, now: float, ts_ns: int) -> Transition | None:
        if self._running_since is None:
            return self._move(Condition.CUT, None, None, self._reason or "fan_stopped", ts_ns)
        if self._condition is not Condition.CUT:
            return None  # running; methane over limit is the methane rules' own trip
        for tag, value in self._methane.items():
            if value is None or value >= self.restore_limits[tag]:
                return self._move(
                    Condition.CUT,
                    value,
                    self.restore_limits[tag],
                    "methane_not_below_restore",
                    ts_ns,
                )
        if now - self._running_since < self.restore_hold_s:
            return self._move(Condition.CUT, None, None, "fan_restart_hold", ts_ns)
        return self._move(Condition.NORMAL, None, None, "fan_running_methane_below_restore", ts_ns)

    def snapshot(self) -> dict[str, Any]:
        return {"condition": self._condition.value}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("condition") == Condition.NORMAL.value:
            # it was running before the restart: still needs the fan seen running
            self._condition = Condition.CUT
            self._reason = "restored_waiting_for_fan"
        self._known = True


class FeedbackCheck(Rule):
    """馈电: the feedback input must agree with the commanded state of its actuator.

    A cut commanded and the area still energised after ``confirm_s``:
    ``feedback_missing``. Energised again while the cut is still commanded:
    ``energised_during_cut``. No cut commanded and the area de-energised for
    ``confirm_s``: ``deenergised_without_command``.
    """

    kind = "feedback"

    def __init__(self, config: FeedbackRule, commanded: Callable[[str], bool | None]) -> None:
        super().__init__(config.id, (config.tag,))
        self.config = config
        self._commanded = commanded
        self._energised: bool | None = None
        self._state_since: float | None = None  # when the commanded state last changed
        self._last_commanded: bool | None = None
        self._confirmed = False
        self.value: float | None = None

    @property
    def actuator(self) -> str:
        return self.config.actuator

    def update(self, sample: Sample, now: float) -> Transition | None:
        if _bad(sample):
            self._energised = None
            self.value = None
            return self._move(Condition.ALARM, None, None, "feedback_fault", sample.ts_ns)
        assert sample.value is not None
        self.value = sample.value
        self._energised = sample.value >= self.config.energised_at
        return self._judge(now, sample.ts_ns)

    def tick(self, now: float) -> Transition | None:
        return self._judge(now, time.time_ns())

    def _judge(self, now: float, ts_ns: int) -> Transition | None:
        commanded = self._commanded(self.config.actuator)
        if commanded != self._last_commanded:
            self._last_commanded = commanded
            self._state_since = now
            self._confirmed = False
        if commanded is None or self._energised is None or self._state_since is None:
            return None
        late = now - self._state_since >= self.config.confirm_s
        if commanded:
            if not self._energised:
                self._confirmed = True
                return self._move(Condition.NORMAL, self.value, None, "feedback_confirmed", ts_ns)
            if self._confirmed:
                return self._move(Condition.ALARM, self.value, None, "energised_during_cut", ts_ns)
            if late:
                return self._move(Condition.ALARM, self.value, None, "feedback_missing", ts_ns)
            return None
        if self._energised:
            return self._move(Condition.NORMAL, self.value, None, "energised", ts_ns)
        if late:
            return self._move(
                Condition.ALARM, self.value, None, "deenergised_without_command", ts_ns
            )
        return None


class CompoundCondition(Rule):
    """All (or any) of other rules at ``when`` or worse -> ``level``."""

    kind = "compound"

    def __init__(
        self,
        rule_id: str,
        members: tuple[str, ...],
        *,
        require_all: bool,
        when: Condition,
        level: Condition,
        tag: str,
    ) -> None:
        super().__init__(rule_id, ())
        self.members = members
        self.require_all = require_all
        self.when = when
        self.level_if_met = level
        self._tag = tag

    @property
    def tag(self) -> str:
        return self._tag

    def update(self, sample: Sample, now: float) -> Transition | None:
        return None

    def judge(self, conditions: Mapping[str, Condition], ts_ns: int) -> Transition | None:
        at = _SEVERITY[self.when]
        hits = [
            _SEVERITY[conditions[m]] >= at and conditions[m] is not Condition.FAULT
            for m in self.members
        ]
        met = all(hits) if self.require_all else any(hits)
        if met:
            names = ",".join(m for m, hit in zip(self.members, hits, strict=True) if hit)
            return self._move(self.level_if_met, None, None, f"compound:{names}", ts_ns)
        return self._move(Condition.NORMAL, None, None, "compound_clear", ts_ns)
