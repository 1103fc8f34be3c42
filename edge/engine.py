"""The safety engine: owns every rule and its condition; samples in, interlock and alarms out.

Synchronous and allocation-light: the bus poller calls :meth:`SafetyEngine.handle`
for every sample, and a watchdog task calls :meth:`SafetyEngine.tick`. For
each change of a rule's condition the engine, in this order,

1. saves latched state (``edge.latches``) when a latching rule changed, so a
   restart can never find a cut released that the breaker still holds;
2. tells the interlock matrix whether the rule trips (the poller that owns
   the actuator's bus writes it before its next read);
3. hands the transition to the alarm manager.

The only hand-off to the uplink is a ``put_nowait`` into a bounded queue; when
that queue is full the sample is counted and dropped, and the safety decision
has already been taken. Everyone else (gateway status, alarms, the CLI) reads
conditions from here.

Threads: the gateway runs the safety buses on their own thread and event loop
(``edge/fastpath.py``) and the rest on the main loop. Each rule is confined to
one thread: the gateway puts every bus that feeds a rule on the thread of that
rule's other inputs, and ticks a rule (:meth:`SafetyEngine.tick_rules`) on the
thread that feeds it. What the threads share goes through :attr:`SafetyEngine.lock`:
the effects of a change (:meth:`_after`: latch journal, interlock, alarm record
in that order), compound conditions, engineer actions and ticks. With
:attr:`SafetyEngine.defer` set, the alarm record (SQLite, notifications) is
handed to the main loop in decision order instead of running on the safety path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from device_drivers import Quality, Sample, SampleBlock
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import (
    CompoundRule,
    DriftRule,
    FanLockoutRule,
    FeedbackRule,
    LimitsRule,
    LoadedSite,
    RateRule,
    SpikeRule,
    StuckRule,
    ZonesRule,
)
from edge.fastpath import TICK_CHUNK, UplinkSink
from edge.latches import LatchStore
from edge.rules import (
    CompoundCondition,
    Condition,
    DriftCheck,
    FanLockout,
    FeedbackCheck,
    Level,
    MultiLimit,
    RateOfChange,
    Rule,
    SpikeCheck,
    StuckCheck,
    ThresholdRule,
    Transition,
    VibrationZones,
)

__all__ = ["Calibration", "SafetyEngine"]


class _Quiet(Protocol):
    def quiet(self, value: float, now: float) -> bool: ...


class _NeverQuiet:
    """Route stand-in for a tag that always takes the full path."""

    @staticmethod
    def quiet(value: float, now: float) -> bool:
        return False


_NEVER_QUIET = _NeverQuiet()


log = logging.getLogger("safewatch.edge.engine")


@dataclass(frozen=True, slots=True)
class Calibration:
    """A declared calibration (调校) of one tag until ``until_ns`` (Unix ns)."""

    tag: str
    until_ns: int
    by: str
    started_ns: int


class SafetyEngine:
    """Every rule of a site, routed by tag, wired to the interlock matrix and the alarms."""

    def __init__(
        self,
        site: LoadedSite,
        interlock: Interlock,
        alarms: AlarmManager,
        uplink: UplinkSink | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        latches: LatchStore | None = None,
        gateway_late: Callable[[str, float], bool] | None = None,
    ) -> None:
        self.site = site
        # (device, stale window) -> True when the poller has not even tried the device within
        # the window: the gateway is late, the sensor is not stale (poller-side facts)
        self.gateway_late = gateway_late
        self.interlock = interlock
        self.alarms = alarms
        self.uplink = uplink
        self.latches = latches
        self._clock = clock
        # held for what the safety thread and the main loop share (see the module docstring)
        self.lock = threading.RLock()
        # None: alarms are recorded inline; else a FIFO to the main loop (edge.fastpath.Handoff)
        self.defer: Callable[[Callable[[], object]], None] | None = None
        start = clock()
        self._devices: dict[str, str] = {}
        self.rules: dict[str, Rule] = {}
        self.thresholds: dict[str, ThresholdRule] = {}
        self._full_scale: dict[str, float] = {}
        for device, tag in site.tags():
            self._devices[tag.name] = device.id
            profile = site.profile_of(tag)
            if profile.full_scale_check:
                self._full_scale[tag.name] = profile.range.max
            th = site.maybe_thresholds_of(tag)
            if th is None:
                continue
            rule = ThresholdRule(
                th,
                profile.fail_safe,
                tag=tag.name,
                stale_after_s=device.stale_after_s,
                started_at=start,
                restore_hold_s=site.restore_hold_of(tag, device),
                full_scale=profile.range.max if profile.full_scale_check else math.inf,
                over_range_latch=profile.over_range_latch,
            )
            self.rules[rule.id] = rule
            self.thresholds[tag.name] = rule
        self.compounds: list[CompoundCondition] = []
        for config in site.config.rules:
            built = self._build(config, start)
            self.rules[built.id] = built
            if isinstance(built, CompoundCondition):
                self.compounds.append(built)
        self._by_tag: dict[str, list[Rule]] = {}
        for routed in self.rules.values():
            for tag_name in routed.inputs:
                self._by_tag.setdefault(tag_name, []).append(routed)
        self._saved: dict[str, dict[str, Any]] = {}
        self._restored_rules: list[str] = []  # restored from the journal, not normal
        # handle_block's per-device routes, keyed by the plan's tag tuple
        self._routes: dict[tuple[str, ...], list[_Quiet]] = {}
        # tick_rules' (rule, device, stale window) per rule, per list of rules ticked
        self._tick_plans: dict[
            int, tuple[list[Rule], list[tuple[Rule, str | None, float | None]]]
        ] = {}
        # the rules this engine judges (None: all; see own())
        self.owned: set[str] | None = None
        self._owned_list: list[Rule] | None = None
        self.restored = self._restore()
        self.calibrations: dict[str, Calibration] = {}
        self.forced: set[str] = set()  # rules tripped by a lockout test
        self.samples = 0
        self.uplink_dropped = 0
        # restored trips are known at once: assert their effects before the first read
        for known in self.rules.values():
            if known.known:
                self.interlock.observe(known.id, known.trips, start)

    def add_rule(self, rule: Rule) -> None:
        """Own a rule built outside the site's rule list (model pre-alarms, edge.inference):
        routed by its inputs, ticked and reported like the others."""
        if rule.id in self.rules:
            raise ValueError(f"duplicate rule id {rule.id!r}")
        self.rules[rule.id] = rule
        self._routes.clear()  # a tag with a second rule leaves the fast path
        if self.owned is not None:
            self.owned.add(rule.id)
        self._owned_list = None
        for tag_name in rule.inputs:
            self._by_tag.setdefault(tag_name, []).append(rule)

    # -- building ------------------------------------------------------------------

    def _stale_s(self, tag: str) -> float:
        return self.site.device(self._devices[tag]).stale_after_s

    def _build(self, config: Any, start: float) -> Rule:
        site = self.site
        if isinstance(config, LimitsRule):
            _, tag = site.tag(config.tag)
            return MultiLimit(
                config.id,
                config.tag,
                config.limits,
                fail_safe=site.profile_of(tag).fail_safe,
                stale_after_s=self._stale_s(config.tag),
                started_at=start,
            )
        if isinstance(config, ZonesRule):
            return VibrationZones(config, stale_after_s=self._stale_s(config.tag), started_at=start)
        if isinstance(config, RateRule):
            return RateOfChange(config)
        if isinstance(config, StuckRule):
            return StuckCheck(config, start)
        if isinstance(config, SpikeRule):
            return SpikeCheck(config)
        if isinstance(config, DriftRule):
            return DriftCheck(
                config.id, config.tag, config.neighbour, config.max_diff, config.window_s
            )
        if isinstance(config, FanLockoutRule):
            restore: dict[str, float] = {}
            holds = [site.restore_hold_of(site.tag(config.fan)[1])]
            for name in config.methane:
                _, tag = site.tag(name)
                th = site.thresholds_of(tag)
                assert th.restore is not None, "validated at load time"
                restore[name] = th.restore
                holds.append(site.restore_hold_of(tag))
            hold = config.restore_hold_s if config.restore_hold_s is not None else max(holds)
            stale = config.stale_after_s or self._stale_s(config.fan)
            return FanLockout(
                config, restore, restore_hold_s=hold, stale_after_s=stale, started_at=start
            )
        if isinstance(config, FeedbackRule):
            return FeedbackCheck(config, self.interlock.desired)
        assert isinstance(config, CompoundRule)
        first = config.members[0]
        member_rule = self.rules.get(first)
        return CompoundCondition(
            config.id,
            config.members,
            require_all=bool(config.all),
            when=Condition(config.when),
            level=Condition(config.level),
            tag=member_rule.tag if member_rule is not None else first,
        )

    def _restore(self) -> bool:
        if self.latches is None:
            return False
        saved = self.latches.load()
        if saved is None:
            log.warning("no saved latched state: fail-safe rules judge their first sample as cut")
            return False
        for rule_id, state in saved.items():
            rule = self.rules.get(rule_id)
            if rule is None:
                continue
            rule.restore(state)
            snapshot = rule.snapshot()
            if snapshot is not None:
                self._saved[rule_id] = snapshot
            if rule.condition is not Condition.NORMAL:
                self._restored_rules.append(rule_id)
            if rule.trips:
                log.warning(
                    "rule %s restored %s from %s", rule_id, rule.condition, self.latches.path
                )
        return True

    def restored_transitions(self) -> list[tuple[Transition, list[str], str]]:
        """The owned rules restored from the journal in a condition other than normal, each
        as a transition from normal with reason ``restored``, the actuators it holds and
        the rule's kind: for the gateway after a restart, which raises those its alarm
        store does not hold (a cut journalled just before the process died may never have
        reached the alarm records)."""
        owned = self.owned
        now_ns = time.time_ns()
        found: list[tuple[Transition, list[str], str]] = []
        for rule_id in self._restored_rules:
            rule = self.rules[rule_id]
            if owned is not None and rule_id not in owned:
                continue
            if rule.condition is Condition.NORMAL or not rule.reason.startswith("restored"):
                continue  # a sample has been judged since: it reported its own transition
            transition = Transition(
                rule.tag,
                Condition.NORMAL,
                rule.condition,
                None,
                None,
                "restored",
                now_ns,
                "" if isinstance(rule, ThresholdRule) else rule.id,
            )
            actuators = self.interlock.actuators_of(rule_id) if rule.trips else []
            found.append((transition, actuators, rule.kind))
        return found

    # -- reading conditions --------------------------------------------------------

    @property
    def machines(self) -> dict[str, ThresholdRule]:
        """The threshold rule of every tag that has thresholds (the first gateway's name)."""
        return self.thresholds

    def levels(self) -> dict[str, Level]:
        """The condition of every tag's threshold rule."""
        return {tag: rule.condition for tag, rule in self.thresholds.items()}

    def conditions(self) -> dict[str, Condition]:
        """The condition of every rule, by rule id."""
        return {rule_id: rule.condition for rule_id, rule in self.rules.items()}

    def tag_condition(self, tag: str) -> Condition:
        rule = self.thresholds.get(tag)
        return rule.condition if rule is not None else Condition.NORMAL

    # -- the safety path -----------------------------------------------------------

    def handle(self, sample: Sample) -> Transition | None:
        """Decide on one sample now; queue it for the uplink without waiting.

        Returns the transition of the tag's threshold rule, if it changed.
        """
        rules = self._by_tag.get(sample.tag)
        if rules is None:
            # no rule judges this tag (a profile without limits): still a reading to keep
            self.samples += 1
            self._to_uplink(self._mark(self._classify(sample), ()))
            return None
        own, marked = self._decide(sample, rules)
        self._to_uplink(marked)
        return own

    def handle_block(self, samples: Sequence[Sample]) -> None:
        """Decide on one device's read at once; same decisions as :meth:`handle` per sample.

        For a :class:`SampleBlock` (a driver's columnar read) a GOOD value of a tag
        whose only rule is its threshold rule, sitting in its steady normal state,
        inside the quiet band (below alarm, cut and full scale for direction high;
        see :meth:`ThresholdRule.quiet`) is taken on a fast path: two attribute
        writes, no :class:`Sample` object, nothing else to do (no transition, no
        latch save, the interlock already knows it does not trip). Every other
        value takes :meth:`handle`'s path. The block goes to the uplink as one item.
        """
        if not isinstance(samples, SampleBlock) or self.calibrations:
            for sample in samples:
                self.handle(sample)
            return
        route = self._routes.get(samples.tags)
        if route is None:
            route = self._routes[samples.tags] = self._route(samples.tags)
        now = self._clock()
        slow = [
            i
            for i, (rule, value) in enumerate(zip(route, samples.values, strict=True))
            if not rule.quiet(value, now)
        ]
        self.samples += len(route) - len(slow)
        if slow:
            odd = samples.odd
            for index in slow:
                sample = samples[index]
                rules = self._by_tag.get(sample.tag)
                if rules is None:  # no rule: counted and sent as it reads (as handle)
                    self.samples += 1
                    odd[index] = self._mark(self._classify(sample), ())
                    continue
                _, odd[index] = self._decide(sample, rules)
        if samples.tags:
            self._block_to_uplink(samples)

    def _route(self, tags: tuple[str, ...]) -> list[_Quiet]:
        """For each tag of a block: its threshold rule when that is its only rule and it
        judges full scale as _classify does; else a stand-in that is never quiet."""
        route: list[_Quiet] = []
        for tag in tags:
            rules = self._by_tag.get(tag)
            rule = self.thresholds.get(tag)
            if (
                rules is None
                or rule is None
                or len(rules) != 1
                or rules[0] is not rule
                or rule.full_scale != self._full_scale.get(tag, math.inf)
            ):
                route.append(_NEVER_QUIET)
            else:
                route.append(rule)
        return route

    def _decide(self, sample: Sample, rules: list[Rule]) -> tuple[Transition | None, Sample]:
        """Every rule of the sample's tag, then its effects; returns the threshold rule's
        transition and the sample as the uplink sends it."""
        now = self._clock()
        self.samples += 1
        sample = self._classify(sample)
        own: Transition | None = None
        changed = False
        for rule in rules:
            transition = rule.update(sample, now)
            if transition is not None and rule is self.thresholds.get(sample.tag):
                own = transition
            changed = self._after(rule, transition, now) or changed
        if changed and self.compounds:
            self._judge_compounds(now, sample.ts_ns)
        return own, self._mark(sample, rules)

    def tick(self, now: float | None = None) -> list[Transition]:
        """Let time pass for every rule this engine owns (see :meth:`own`): staleness,
        delays, windows, feedback timeouts; and calibrations whose time is up."""
        found = self.tick_rules(self._owned_rules(), now)
        self.expire_calibrations()
        return found

    check_stale = tick  # the first gateway's name

    def _classify(self, sample: Sample) -> Sample:
        """A reading at or beyond full scale is over range: uncertain, never good."""
        value = sample.value
        full = self._full_scale.get(sample.tag, math.inf)
        over = value is not None and math.isfinite(value) and value >= full
        if over and (sample.quality is not Quality.UNCERTAIN or sample.reason != "over_range"):
            return replace(sample, quality=Quality.UNCERTAIN, reason="over_range")
        return sample

    def _mark(self, sample: Sample, rules: Iterable[Rule]) -> Sample:
        """Telemetry quality: calibration and sensor self-diagnosis mark a reading uncertain."""
        if sample.tag in self.calibrations:
            return replace(sample, quality=Quality.UNCERTAIN, reason="calibration")
        if sample.quality is not Quality.GOOD:
            return sample
        for rule in rules:
            marks = getattr(rule, "marks", None)
            if marks:
                return replace(sample, quality=Quality.UNCERTAIN, reason=str(marks))
        return sample

    def _after(self, rule: Rule, transition: Transition | None, now: float) -> bool:
        """Persist, actuate, alarm, in that order. Returns whether the condition changed."""
        with self.lock:
            return self._effects(rule, transition, now)

    def _effects(self, rule: Rule, transition: Transition | None, now: float) -> bool:
        snapshot = rule.snapshot()
        if snapshot is not None and self._saved.get(rule.id) != snapshot:
            self._saved[rule.id] = snapshot
            if self.latches is not None:
                self.latches.record(rule.id, snapshot)
        if not rule.known:
            return transition is not None
        trips = rule.trips or rule.id in self.forced
        changed = self.interlock.observe(rule.id, trips, now)
        if transition is not None:
            # entering a trip holds all of the rule's actuators; leaving releases those that changed
            commanded = self.interlock.actuators_of(rule.id) if trips else changed
            record = functools.partial(
                self.alarms.on_transition,
                transition,
                commanded,
                kind=rule.kind,
                calibration=self._in_calibration(rule),
            )
            if self.defer is None:
                record()
            else:
                self.defer(record)  # in decision order, off the safety path
        return transition is not None

    def _judge_compounds(self, now: float, ts_ns: int) -> None:
        with self.lock:
            conditions = self.conditions()
            for compound in self.compounds:
                transition = compound.judge(conditions, ts_ns)
                self._after(compound, transition, now)
                conditions[compound.id] = compound.condition

    def tick_rules(self, rules: list[Rule], now: float | None = None) -> list[Transition]:
        """Let time pass for ``rules`` (the gateway ticks each thread's rules on that
        thread; :meth:`tick` all of this engine's), holding the lock per chunk of rules,
        so a tick of thousands of background rules never holds up a safety decision for
        long. A rule whose device the poller has not even tried within its stale window
        is skipped (the gateway is late, not the sensor). Calibrations: see
        :meth:`expire_calibrations`."""
        now = self._clock() if now is None else now
        found: list[Transition] = []
        changed = False
        late = self.gateway_late
        verdicts: dict[tuple[str, float], bool] = {}  # late(device, window) once per tick
        stale: list[Sample] = []
        plan = self._plan_of(rules)
        for first in range(0, len(plan), TICK_CHUNK):
            with self.lock:
                for rule, device, window in plan[first : first + TICK_CHUNK]:
                    if late is not None and window is not None and device is not None:
                        key = (device, window)
                        verdict = verdicts.get(key)
                        if verdict is None:
                            verdict = verdicts[key] = late(device, window)
                        if verdict:
                            continue  # judged once the poller has had its chance
                    transition = rule.tick(now)
                    if transition is None:
                        continue
                    found.append(transition)
                    changed = self._after(rule, transition, now) or changed
                    if transition.reason == "stale" and isinstance(rule, ThresholdRule):
                        tag = rule.tag
                        stale.append(
                            Sample(
                                tag,
                                self._devices[tag],
                                None,
                                Quality.BAD,
                                transition.ts_ns,
                                "stale",
                            )
                        )
        if changed and self.compounds:
            self._judge_compounds(now, time.time_ns())
        for sample in stale:
            self._to_uplink(sample)
        return found

    def _plan_of(self, rules: list[Rule]) -> list[tuple[Rule, str | None, float | None]]:
        """(rule, device, stale window) per rule of ``rules``, cached per list (the gateway
        ticks the same list every time)."""
        cached = self._tick_plans.get(id(rules))
        if cached is not None and cached[0] is rules and len(cached[1]) == len(rules):
            return cached[1]
        plan = [
            (
                rule,
                self._devices.get(getattr(rule, "tag", "")),
                getattr(rule, "stale_after_s", None),
            )
            for rule in rules
        ]
        self._tick_plans[id(rules)] = (rules, plan)
        return plan

    def _owned_rules(self) -> list[Rule]:
        if self._owned_list is None:
            owned = self.owned
            self._owned_list = [r for r in self.rules.values() if owned is None or r.id in owned]
        return self._owned_list

    def own(self, rule_ids: Iterable[str]) -> None:
        """This engine judges, ticks and combines only ``rule_ids``; the gateway's other
        process owns the rest (``edge/safety_process.py``). Every rule is still built
        (the interlock matrix and the alarms name them)."""
        self.owned = set(rule_ids)
        self.compounds = [c for c in self.compounds if c.id in self.owned]
        self._by_tag = {
            tag: kept
            for tag, rules in self._by_tag.items()
            if (kept := [r for r in rules if r.id in self.owned])
        }
        self._routes.clear()
        self._owned_list = None

    def _to_uplink(self, sample: Sample) -> None:
        if self.uplink is None:
            return
        try:
            self.uplink.put_nowait(sample)
        except asyncio.QueueFull:
            self.uplink_dropped += 1

    def _block_to_uplink(self, block: SampleBlock) -> None:
        uplink = self.uplink
        if uplink is None:
            return
        put_block = getattr(uplink, "put_block", None)
        if put_block is None:  # a plain queue: one sample at a time
            for sample in block:
                self._to_uplink(sample)
        elif not put_block(block):
            self.uplink_dropped += len(block)

    # -- engineer actions ------------------------------------------------------------

    def reset_latch(self, rule_id: str, by: str = "") -> bool:
        """Release an over-range latch (catalytic sensor); the cut holds until it is safe."""
        rule = self.rules.get(rule_id)
        with self.lock:
            if not isinstance(rule, ThresholdRule) or not rule.reset_latch():
                return False
            log.warning("over-range latch of %s reset by %s", rule_id, by or "an engineer")
            snapshot = rule.snapshot()
            self._saved[rule.id] = snapshot
            if self.latches is not None:
                self.latches.record(rule.id, snapshot)
        return True

    def force_trip(self, rule_id: str, on: bool) -> list[str]:
        """Trip (or stop tripping) ``rule_id`` for a lockout test; returns changed actuators."""
        rule = self.rules[rule_id]
        with self.lock:
            if on:
                self.forced.add(rule_id)
            else:
                self.forced.discard(rule_id)
            trips = rule.trips or rule_id in self.forced
            if not rule.known and not trips:
                return []
            return self.interlock.observe(rule_id, trips, self._clock())

    def calibrate(self, tag: str, until_ns: int, by: str = "") -> Calibration:
        """Declare ``tag`` in calibration until ``until_ns``: readings and alarms are marked;
        cuts still happen."""
        if tag not in self._devices:
            raise KeyError(tag)
        cal = Calibration(tag, until_ns, by, time.time_ns())
        self.calibrations[tag] = cal
        log.warning("tag %s in calibration until %d (by %s)", tag, until_ns, by or "?")
        return cal

    def end_calibration(self, tag: str) -> bool:
        return self.calibrations.pop(tag, None) is not None

    def _in_calibration(self, rule: Rule) -> bool:
        return any(tag in self.calibrations for tag in rule.inputs)

    def expire_calibrations(self) -> None:
        """End calibrations whose time is up (part of a whole :meth:`tick`)."""
        with self.lock:
            self._expire_calibrations()

    def _expire_calibrations(self) -> None:
        if not self.calibrations:
            return
        now_ns = time.time_ns()
        for tag, cal in list(self.calibrations.items()):
            if cal.until_ns <= now_ns:
                del self.calibrations[tag]
                log.info("calibration of %s expired", tag)
