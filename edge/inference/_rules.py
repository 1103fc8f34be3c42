"""Model pre-alarms: a rule (the rule seam of ``edge.rules``) whose input is a model output.

:class:`ForecastRule` reads the output tag the runner publishes
(``<tag>.<output>``) and reports on the sensor tag the model watches. It is
``alarm`` while the output is past the card's decision threshold (with the
card's hysteresis), ``fault`` when the model has produced nothing for
``stale_after_s``, otherwise ``normal``. It never becomes ``cut`` and is not
fail-safe, so it never trips an actuator: the interlock ORs its causes, and a
cause that never trips can neither lift nor delay another's cut.
"""

from __future__ import annotations

import math
import time

from device_drivers import Quality, Sample
from edge.rules import Condition, Rule, Transition
from models import Decision

__all__ = ["ForecastRule"]


class ForecastRule(Rule):
    """A pre-alarm on one model output of one sensor (id ``forecast:<model>:<tag>``)."""

    kind = "forecast"

    def __init__(
        self,
        model: str,
        source_tag: str,
        output_tag: str,
        decision: Decision,
        *,
        stale_after_s: float,
        started_at: float | None = None,
    ) -> None:
        super().__init__(f"forecast:{model}:{source_tag}", (output_tag,), fail_safe=False)
        self.model = model
        self.source_tag = source_tag
        self.output_tag = output_tag
        self.decision = decision
        self.stale_after_s = stale_after_s
        self._last = time.monotonic() if started_at is None else started_at
        self.last_value: float | None = None

    @property
    def tag(self) -> str:
        """Alarms are reported on the sensor the model watches."""
        return self.source_tag

    @property
    def trips(self) -> bool:
        return False  # never: a model output is advisory

    def update(self, sample: Sample, now: float) -> Transition | None:
        if sample.tag != self.output_tag:
            return None
        value = sample.value
        if value is None or sample.quality is Quality.BAD or not math.isfinite(value):
            return None  # staleness (tick) reports a model that stopped answering
        self._last = now
        self.last_value = value
        d = self.decision
        if d.direction == "high":
            past, back = value >= d.threshold, value < d.clear
        else:
            past, back = value <= d.threshold, value > d.clear
        if past:
            return self._move(Condition.ALARM, value, d.threshold, "forecast_over", sample.ts_ns)
        if self.condition is Condition.ALARM and not back:
            return None  # hysteresis: hold until back past ``clear``
        return self._move(Condition.NORMAL, value, d.clear, "forecast_clear", sample.ts_ns)

    def tick(self, now: float) -> Transition | None:
        if self.condition is Condition.FAULT or now - self._last < self.stale_after_s:
            return None
        if not self.known:
            return None  # still filling its first window: nothing to report yet
        return self._move(Condition.FAULT, None, None, "forecast_stale", time.time_ns())
