"""``safewatch bench api`` end to end at a small rate: the API child answers every phase."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.contract


def test_bench_api_reports_p99_and_rps() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "safewatch.cli", "bench", "api", "--rate", "20",
         "--seconds", "1", "--units", "20", "--hazards", "30"],
        capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["p99_ms"] > 0 and result["rps"] > 0
    for phase in ("baseline_health", "hazard_list", "heatmap", "heatmap_if_none_match"):
        assert result[phase]["requests"] == 20
        assert result[phase]["errors"] == 0, result[phase]
    assert result["heatmap"]["statuses"] == {"200": 20}
    assert result["heatmap_if_none_match"]["statuses"] == {"304": 20}  # nothing changed
    assert result["p99_ms"] == max(result["hazard_list"]["p99_ms"], result["heatmap"]["p99_ms"])
