"""Threshold machine: two-level hysteresis, fault lockout, staleness."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_drivers import Quality, Sample
from edge.config import PACKAGED_PROFILES, Thresholds, load_profiles
from edge.rules import Level, ThresholdMachine

PROFILES = load_profiles(PACKAGED_PROFILES)
CH4 = PROFILES["ch4"]
FACE = CH4.thresholds["face"]  # alarm 1.0, cut 1.5, restore 1.0
RETURN = CH4.thresholds["return"]  # 1.0 / 1.0 / 1.0
MAIN_RETURN = CH4.thresholds["main_return"]  # alarm 0.75 only
O2 = PROFILES["o2"].thresholds["default"]  # low: alarm 20, cut 18, restore 20

N, A, C, F = Level.NORMAL, Level.ALARM, Level.CUT, Level.FAULT


def good(value: float, tag: str = "T") -> Sample:
    return Sample(tag, "dev", value, Quality.GOOD, 1)


def bad(reason: str = "timeout", tag: str = "T") -> Sample:
    return Sample(tag, "dev", None, Quality.BAD, 1, reason)


def run(machine: ThresholdMachine, values: Sequence[float | None]) -> list[Level]:
    levels = []
    for v in values:
        machine.update(good(v) if v is not None else bad(), now=0.0)
        levels.append(machine.level)
    return levels


def test_shipped_profiles_hold_the_regulation_values() -> None:
    assert (FACE.alarm, FACE.cut, FACE.restore) == (1.0, 1.5, 1.0)
    assert (RETURN.alarm, RETURN.cut, RETURN.restore) == (1.0, 1.0, 1.0)
    assert (MAIN_RETURN.alarm, MAIN_RETURN.cut) == (0.75, None)
    assert CH4.fail_safe


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.3, 0.99, 1.0, 1.2, 0.94], [N, N, A, A, N]),  # deadband: clears below 0.95
        ([0.3, 1.0, 0.97, 0.95, 0.94], [N, A, A, A, N]),
        ([0.3, 1.49, 1.5, 1.4, 1.0, 0.94], [N, A, C, C, C, N]),
        ([0.3, 1.5, 0.99, 0.94], [N, C, A, N]),  # released below restore, alarm until 0.95
        ([1.6], [C]),  # straight to cut
        ([1.5, 1.2, 1.6, 0.5], [C, C, C, N]),
        ([0.3, 1.0, 1.5, 1.0, 0.94], [N, A, C, C, N]),
        ([1.0, 0.5], [C, N]),  # no saved state: the first reading is judged as if cut
    ],
)
def test_face_alarm_cut_restore(values: list[float], expected: list[Level]) -> None:
    assert run(ThresholdMachine(FACE, True), values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 0.99, 1.0, 0.99, 0.9], [N, N, C, A, N]),
        ([1.3, 1.0, 0.999, 1.0], [C, C, A, C]),
    ],
)
def test_return_cuts_at_alarm_level(values: list[float], expected: list[Level]) -> None:
    assert run(ThresholdMachine(RETURN, True), values) == expected


def test_main_return_is_alarm_only() -> None:
    machine = ThresholdMachine(MAIN_RETURN, True)
    assert run(machine, [0.5, 0.75, 3.9, 0.74, 0.69]) == [N, A, A, A, N]
    machine.update(bad(), now=0.0)
    assert machine.level is F and machine.trips  # fail-safe, even without a cut level
    # leaving fault: evaluated as if in alarm; clears below 0.70 (deadband 0.05)
    assert run(machine, [0.8, 0.7, 0.69]) == [A, A, N]


def test_o2_direction_low() -> None:
    machine = ThresholdMachine(O2, False)
    assert run(machine, [20.9, 20.0, 19.0, 18.0, 17.5, 19.9, 20.0, 20.1, 20.3]) == [
        N,
        A,
        A,
        C,
        C,
        C,
        C,
        A,  # above restore 20.0: power back; alarm until above 20.2 (deadband)
        N,
    ]


def test_clear_hysteresis_below_alarm() -> None:
    th = Thresholds(alarm=24.0, clear=20.0)
    machine = ThresholdMachine(th, False)
    assert run(machine, [2.0, 24.0, 22.0, 20.0, 19.9, 22.0]) == [N, A, A, A, N, N]


def test_transition_fields() -> None:
    machine = ThresholdMachine(FACE, True, tag="CH4_T1")
    assert machine.update(good(0.3, "CH4_T1"), now=0.0) is None  # starting normal is no news
    t = machine.update(good(1.7, "CH4_T1"), now=0.0)
    assert t is not None
    assert (t.tag, t.previous, t.level, t.value, t.threshold) == ("CH4_T1", N, C, 1.7, 1.5)
    assert t.reason == "above_cut"
    assert machine.update(good(1.6, "CH4_T1"), now=0.0) is None  # no change, no transition
    t = machine.update(good(0.4, "CH4_T1"), now=0.0)
    assert t is not None and (t.previous, t.level, t.threshold) == (C, N, 1.0)
    assert t.reason == "below_restore"


def test_bad_sample_faults_and_fail_safe_trips() -> None:
    machine = ThresholdMachine(FACE, True)
    machine.update(good(0.3), now=0.0)
    t = machine.update(bad("unavailable"), now=0.0)
    assert t is not None and t.level is F and t.reason == "unavailable" and t.threshold is None
    assert machine.trips
    assert machine.update(bad("timeout"), now=0.0) is None  # still fault, no repeat


def test_fault_on_non_fail_safe_does_not_trip() -> None:
    machine = ThresholdMachine(O2, False)
    machine.update(bad(), now=0.0)
    assert machine.level is F and not machine.trips


def test_out_of_range_value_is_fault_even_with_a_number() -> None:
    machine = ThresholdMachine(FACE, True)
    machine.update(Sample("T", "dev", 9.9, Quality.BAD, 1, "out_of_range"), now=0.0)
    assert machine.level is F and machine.trips


@pytest.mark.parametrize(
    ("recovery", "expected"),
    [(1.2, C), (1.0, C), (0.99, A), (0.94, N), (1.6, C)],
)
def test_leaving_fault_needs_good_value_below_restore(recovery: float, expected: Level) -> None:
    machine = ThresholdMachine(FACE, True)
    machine.update(good(0.3), now=0.0)
    machine.update(bad(), now=0.0)
    t = machine.update(good(recovery), now=0.0)
    assert machine.level is expected
    assert t is not None and t.previous is F and t.reason.startswith("sensor_recovered")


def test_uncertain_sample_does_not_leave_fault() -> None:
    machine = ThresholdMachine(FACE, True)
    machine.update(bad(), now=0.0)
    assert machine.update(Sample("T", "dev", 0.2, Quality.UNCERTAIN, 1), now=0.0) is None
    assert machine.level is F


def test_non_fail_safe_leaves_fault_to_normal_evaluation() -> None:
    machine = ThresholdMachine(O2, False)
    assert run(machine, [20.9, None, 20.5]) == [N, F, N]


def test_stale_without_good_samples() -> None:
    machine = ThresholdMachine(FACE, True, stale_after_s=1.5, started_at=100.0)
    assert machine.check_stale(101.0) is None
    machine.update(good(0.3), now=101.0)
    assert machine.check_stale(102.4) is None  # 1.4 s since the last good sample
    t = machine.check_stale(102.5)
    assert t is not None and t.level is F and t.reason == "stale" and machine.trips
    assert machine.check_stale(110.0) is None  # already fault
    machine.update(good(0.3), now=110.1)
    assert machine.level is N


def test_stale_before_any_sample() -> None:
    machine = ThresholdMachine(FACE, True, stale_after_s=1.0, started_at=0.0)
    assert not machine.known
    assert machine.check_stale(1.0) is not None
    assert machine.known and machine.level is F


def test_bad_samples_do_not_refresh_staleness() -> None:
    machine = ThresholdMachine(O2, False, stale_after_s=1.0, started_at=0.0)
    machine.update(good(20.9), now=0.5)
    machine.update(Sample("T", "dev", 20.9, Quality.UNCERTAIN, 1), now=1.2)
    assert machine.check_stale(1.6) is not None


values = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)
steps = st.lists(st.one_of(values, st.none()), min_size=1, max_size=60)


@given(steps, st.sampled_from(["face", "return", "heading_face", "intake_outburst"]))
def test_cut_never_released_while_at_or_above_restore(
    seq: list[float | None], position: str
) -> None:
    th = CH4.thresholds[position]
    assert th.cut is not None and th.restore is not None
    machine = ThresholdMachine(th, True)
    for value in seq:
        before = machine.level
        machine.update(good(value) if value is not None else bad(), now=0.0)
        if value is None:
            assert machine.level is F and machine.trips
            continue
        if value >= th.cut:
            assert machine.level is C
        if before in (C, F) and value >= th.restore:
            assert machine.level is C, (before, value)
        if machine.level is N:
            assert value < th.alarm


@given(st.lists(st.floats(min_value=0.0, max_value=25.0, allow_nan=False), min_size=1))
def test_o2_low_direction_mirror(seq: list[float]) -> None:
    machine = ThresholdMachine(O2, False)
    for value in seq:
        before = machine.level
        machine.update(good(value), now=0.0)
        assert O2.cut is not None and O2.restore is not None
        if value <= O2.cut:
            assert machine.level is C
        if before is C and value <= O2.restore:
            assert machine.level is C
        if machine.level is N:
            assert value > O2.alarm
