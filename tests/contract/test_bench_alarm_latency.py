"""`safewatch bench alarm-latency` at a tiny size: lanes, background tags, uplink down, and the
gateway's react times all reach the result."""

from __future__ import annotations

import pytest

from bench.alarm_latency import run

pytestmark = pytest.mark.contract


def test_bench_alarm_latency_small_run_reports_react_and_total() -> None:
    result = run(poll_ms=200, trips=6, lanes=3, background_tags=150, uplink="down")
    assert result["benchmark"] == "alarm-latency"
    assert (result["trips"], result["lanes"], result["background_tags"]) == (6, 3, 150)
    assert result["uplink"] == "down" and result["gateway_published"] == 0
    assert result["react_samples"] >= 6
    assert 0 < result["react_p50_ms"] <= result["react_p99_ms"]
    assert 0 < result["p50_ms"] <= result["p99_ms"] < result["limit_ms"]
