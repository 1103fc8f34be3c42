"""Configuration of the rules beyond a tag's own thresholds, and of the interlock matrix.

A site file may list ``rules:`` (each with a ``type``) and ``interlocks:``
(the cause-and-effect matrix: an effect, i.e. an actuator, is active while any
of its causes, i.e. rule ids, trips). Every tag that has thresholds gets a
threshold rule whose id is the tag name; ``actuators:`` on a tag is shorthand
for a matrix row with that rule as a cause.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RuleId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitName(enum.StrEnum):
    """ISA-style limit names: H/L raise an alarm, HH/LL a cut."""

    H = "H"
    HH = "HH"
    L = "L"
    LL = "LL"

    @property
    def high(self) -> bool:
        return self in (LimitName.H, LimitName.HH)

    @property
    def severe(self) -> bool:
        return self in (LimitName.HH, LimitName.LL)


class Limit(_Frozen):
    name: LimitName
    value: float
    deadband: float = Field(default=0.0, ge=0)
    on_delay_s: float = Field(default=0.0, ge=0)  # must be over the limit this long to count
    off_delay_s: float = Field(default=0.0, ge=0)  # must be back this long to clear


class LimitsRule(_Frozen):
    """Multi-level limits on one tag: H/L -> alarm, HH/LL -> cut."""

    type: Literal["limits"]
    id: RuleId
    tag: RuleId
    limits: tuple[Limit, ...] = Field(min_length=1)
    source: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> LimitsRule:
        names = [lim.name for lim in self.limits]
        if len(set(names)) != len(names):
            raise ValueError("each of H, HH, L, LL may appear once")
        by = {lim.name: lim.value for lim in self.limits}
        if LimitName.H in by and LimitName.HH in by and by[LimitName.H] > by[LimitName.HH]:
            raise ValueError(f"H {by[LimitName.H]} must be <= HH {by[LimitName.HH]}")
        if LimitName.L in by and LimitName.LL in by and by[LimitName.L] < by[LimitName.LL]:
            raise ValueError(f"L {by[LimitName.L]} must be >= LL {by[LimitName.LL]}")
        return self


class Foundation(enum.StrEnum):
    RIGID = "rigid"
    FLEXIBLE = "flexible"


# ISO 10816-3 zone boundaries A/B, B/C, C/D, velocity mm/s RMS (SAFETY_REFERENCE.md)
ISO10816_3: dict[tuple[int, Foundation], tuple[float, float, float]] = {
    (1, Foundation.RIGID): (2.3, 4.5, 7.1),
    (1, Foundation.FLEXIBLE): (3.5, 7.1, 11.0),
    (2, Foundation.RIGID): (1.4, 2.8, 4.5),
    (2, Foundation.FLEXIBLE): (2.3, 4.5, 7.1),
}


class ZonesRule(_Frozen):
    """ISO 10816-3 vibration zones: A/B normal, C alarm (limited operation), D cut (danger)."""

    type: Literal["zones"]
    id: RuleId
    tag: RuleId
    group: Literal[1, 2] | None = None
    foundation: Foundation | None = None
    boundaries: tuple[float, float, float] | None = None  # A/B, B/C, C/D, overrides group
    deadband: float = Field(default=0.0, ge=0)
    on_delay_s: float = Field(default=0.0, ge=0)
    source: str = "ISO 10816-3"

    @model_validator(mode="after")
    def _defined(self) -> ZonesRule:
        if self.boundaries is None and (self.group is None or self.foundation is None):
            raise ValueError("give 'group' and 'foundation' (ISO 10816-3) or 'boundaries'")
        ab, bc, cd = self.zone_limits
        if not ab < bc < cd:
            raise ValueError(f"boundaries must rise: {ab}, {bc}, {cd}")
        return self

    @property
    def zone_limits(self) -> tuple[float, float, float]:
        if self.boundaries is not None:
            return self.boundaries
        assert self.group is not None and self.foundation is not None
        return ISO10816_3[(self.group, self.foundation)]


PER_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0}


class RateRule(_Frozen):
    """Rate of change over a window, e.g. roof separation mm/day or methane rise %/min."""

    type: Literal["rate"]
    id: RuleId
    tag: RuleId
    window_s: float = Field(gt=0)
    per: Literal["s", "min", "h", "day"] = "min"
    alarm_rate: float = Field(gt=0)  # a rise (units per `per`) at or above this alarms
    cut_rate: float | None = Field(default=None, gt=0)
    deadband: float = Field(default=0.0, ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> RateRule:
        if self.cut_rate is not None and self.cut_rate < self.alarm_rate:
            raise ValueError(f"cut_rate {self.cut_rate} must be >= alarm_rate {self.alarm_rate}")
        return self


class StuckRule(_Frozen):
    """Flat line: no change beyond ``noise`` for ``window_s`` -> maintenance alarm."""

    type: Literal["stuck"]
    id: RuleId
    tag: RuleId
    window_s: float = Field(gt=0)
    noise: float = Field(ge=0)


class SpikeRule(_Frozen):
    """A jump larger than ``max_step`` between consecutive readings -> maintenance alarm."""

    type: Literal["spike"]
    id: RuleId
    tag: RuleId
    max_step: float = Field(gt=0)
    clear_after_s: float = Field(default=10.0, ge=0)


class DriftRule(_Frozen):
    """Two sensors at one place that disagree by more than ``max_diff`` for ``window_s``."""

    type: Literal["drift"]
    id: RuleId
    tag: RuleId
    neighbour: RuleId
    max_diff: float = Field(gt=0)
    window_s: float = Field(default=60.0, gt=0)


class FanLockoutRule(_Frozen):
    """风电闭锁 / 甲烷电闭锁: the heading's auxiliary fan stops -> cut the heading's power.

    Power returns only when the fan runs (for ``restore_hold_s``) and every
    listed methane tag is good and below its restore limit.
    """

    type: Literal["fan_lockout"]
    id: RuleId
    fan: RuleId  # the fan's running-state tag (or air-flow tag)
    running_at: float = 0.5  # the fan runs while the tag reads >= this
    methane: tuple[RuleId, ...] = ()
    restore_hold_s: float | None = Field(default=None, ge=0)  # default: the methane tags' hold
    stale_after_s: float | None = Field(default=None, gt=0)


class FeedbackRule(_Frozen):
    """馈电 check: after a cut the feedback input must read de-energised within ``confirm_s``."""

    type: Literal["feedback"]
    id: RuleId
    actuator: RuleId
    tag: RuleId  # the feedback input
    energised_at: float = 0.5  # the area is energised while the tag reads >= this
    confirm_s: float = Field(default=5.0, gt=0)


class CompoundRule(_Frozen):
    """A condition of other rules: ``all`` (or ``any``) of them at ``when`` or worse."""

    type: Literal["compound"]
    id: RuleId
    all: tuple[RuleId, ...] = ()
    any: tuple[RuleId, ...] = ()
    when: Literal["alarm", "cut"] = "alarm"
    level: Literal["alarm", "cut"] = "alarm"
    message: str = ""

    @model_validator(mode="after")
    def _one(self) -> CompoundRule:
        if bool(self.all) == bool(self.any):
            raise ValueError("give exactly one of 'all' or 'any' (rule ids)")
        return self

    @property
    def members(self) -> tuple[str, ...]:
        return self.all or self.any


RuleConfig = Annotated[
    LimitsRule
    | ZonesRule
    | RateRule
    | StuckRule
    | SpikeRule
    | DriftRule
    | FanLockoutRule
    | FeedbackRule
    | CompoundRule,
    Field(discriminator="type"),
]

RULE_TYPES = (
    "limits",
    "zones",
    "rate",
    "stuck",
    "spike",
    "drift",
    "fan_lockout",
    "feedback",
    "compound",
)


class InterlockRow(_Frozen):
    """One row of the cause-and-effect matrix."""

    effect: RuleId  # an actuator id
    causes: tuple[RuleId, ...] = Field(min_length=1)  # rule ids (a tag name is its threshold rule)


class LockoutTestSettings(_Frozen):
    """Recorded lockout tests (methane and fan lockouts): due every ``every_days``."""

    every_days: float = Field(default=15.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)


class StateSettings(_Frozen):
    """Where the gateway keeps latched conditions (default: next to the buffer)."""

    path: str | None = None
