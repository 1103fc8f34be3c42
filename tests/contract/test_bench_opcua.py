"""``safewatch bench opcua`` end to end, small: two server processes, every key reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.contract


def test_bench_opcua_reads_and_subscribes_across_servers_and_reports_their_cpu() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "safewatch.cli", "bench", "opcua", "--nodes", "40",
         "--seconds", "1", "--servers", "2", "--max-nodes-per-read", "8"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["servers"] == 2 and result["nodes"] == 40
    assert result["read_values_per_s"] > 0 and result["baseline_asyncua_read_values_per_s"] > 0
    assert result["notifications_per_s"] > 0, "the churning servers' changes reached the drivers"
    assert result["cpu_cores_used"] > 0 and result["server_cpu_cores_used"] > 0
    assert result["subscription_read_errors"] == 0
    assert result["load_average"] > 0
