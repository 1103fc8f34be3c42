"""`safewatch bench ingest-cpu` at a tiny size: every point goes through the real ingest path."""

from __future__ import annotations

from bench.ingest_cpu import run


def test_bench_ingest_cpu_small_run_processes_every_point() -> None:
    result = run(points=4_000, batch=500)
    assert result["benchmark"] == "ingest-cpu"
    assert result["points_processed"] == 4_000
    assert result["points_per_s"] > 0
    for key in ("cpu_us_per_point", "decode_us_per_point", "lines_us_per_point"):
        assert result[key] > 0, key
