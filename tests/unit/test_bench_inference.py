"""`safewatch bench inference` runs and reports its keys (a smoke test: no timing claims)."""

from __future__ import annotations

from bench.inference import run


def test_bench_inference_reports_the_issue_keys_for_every_model() -> None:
    result = run(seconds=0.05, repeat=10)
    assert {"overhead_us", "windows_per_s", "p99_ms"} <= set(result)
    assert set(result["models"]) == {"methane-forecast", "roof-time-to-red", "vibration-wear"}
    for figures in result["models"].values():
        assert figures["bare_run_us"] > 0 and figures["windows_per_s"] > 0
        assert figures["p99_ms"] > 0
    assert result["windows_per_s"] == min(m["windows_per_s"] for m in result["models"].values())
