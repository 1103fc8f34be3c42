"""`safewatch bench uplink` at a tiny size: the harness works and every point arrives."""

from __future__ import annotations

import pytest

from bench.uplink import run

pytestmark = pytest.mark.contract


def test_bench_uplink_small_run_reports_both_rates() -> None:
    result = run(points=3_000, backlog=3_000, window=16)
    assert result["benchmark"] == "uplink"
    assert result["points_per_s"] > 0
    assert result["drain_points_per_s"] > 0
    assert result["baseline_window1_points_per_s"] > 0
