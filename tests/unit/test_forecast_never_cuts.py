"""Property: a model output never lifts and never delays a cut, nor makes one.

Two gateways' safety engines see the same methane and fan readings; one also owns a
methane-forecast pre-alarm rule and is fed arbitrary model outputs (over and under the
threshold, garbage, silence) between the readings. After every poll the power decision of
both must be the same: whatever the model says, the breaker does what the thresholds say.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_drivers import Quality, Sample
from edge.engine import SafetyEngine
from edge.inference import ForecastRule
from edge.rules import Condition
from models import MODELS_DIR, read_card
from tests.safety_rig import Rig, heading_site

DECISION = read_card(MODELS_DIR / "methane-forecast.card.yaml").decision
OUTPUT_TAG = "CH4.p_exceed_10m"
CH4_VALUES = [0.2, 0.5, 0.99, 1.0, 1.2, 1.49, 1.5, 1.6, 3.0, None]
FORECASTS = [0.0, 0.1, DECISION.clear, DECISION.threshold, 0.5, 0.99, 1.0, math.nan, None]


def with_forecast(rig: Rig) -> ForecastRule:
    rule = ForecastRule(
        "methane-forecast", "CH4", OUTPUT_TAG, DECISION, stale_after_s=3.0, started_at=rig.now
    )
    rig.engine.add_rule(rule)
    return rule


def forecast(engine: SafetyEngine, value: float | None) -> None:
    quality = Quality.BAD if value is None else Quality.GOOD
    engine.handle(Sample(OUTPUT_TAG, "gas", value, quality, 1))


step = st.tuples(
    st.sampled_from(CH4_VALUES),
    st.lists(st.sampled_from(FORECASTS), max_size=3),  # empty: the model is silent
    st.sampled_from([0.25, 1.0, 2.5]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=40))
def test_the_power_decision_is_the_same_with_and_without_a_model(
    steps: list[tuple[float | None, list[float | None], float]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = Rig(heading_site(), Path(tmp) / "a.json")
        modelled = Rig(heading_site(), Path(tmp) / "b.json")
        rule = with_forecast(modelled)
        for rig in (plain, modelled):
            rig.settle()
        for ch4, outputs, dt in steps:
            for value in outputs:
                forecast(modelled.engine, value)
            plain.poll(ch4)
            modelled.poll(ch4)
            for value in outputs:
                forecast(modelled.engine, value)
            plain.advance(dt)
            modelled.advance(dt)
            assert modelled.power_cut == plain.power_cut, (ch4, outputs, rule.condition)
        assert rule.condition is not Condition.CUT


def test_a_pre_alarm_at_low_methane_leaves_power_on_and_a_quiet_model_keeps_a_cut(
    tmp_path: Path,
) -> None:
    rig = Rig(heading_site(), tmp_path / "state.json")
    rule = with_forecast(rig)
    rig.settle()
    forecast(rig.engine, 0.95)
    rig.poll(0.5)
    assert rule.condition is Condition.ALARM and rule.trips is False
    assert rig.power_cut is False  # a pre-alarm is advisory: no cut
    forecasts = [e for e in rig.events if e.kind == "forecast" and e.level == "alarm"]
    assert forecasts and forecasts[0].actuators == []
    rig.poll(1.6)
    assert rig.power_cut is True
    for _ in range(10):  # the model says "all clear" while methane stays at 1.6 %
        forecast(rig.engine, 0.0)
        rig.poll(1.6)
        assert rig.power_cut is True
    assert rule.condition is Condition.NORMAL
