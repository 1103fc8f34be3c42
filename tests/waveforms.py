"""Shared checks of the waveform-block tests (tests/contract/test_waveform_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge.config import LoadedSite
from edge.gateway import Gateway
from edge.rules import Condition
from tests.support import async_wait_until


async def gateway_pre_alarms_on_wear(
    site: LoadedSite, set_wear: Callable[[str, int], object], tag: str, tmp_path: Path
) -> dict[str, int]:
    """Run the gateway on ``site`` (its simulator already serving): healthy blocks are
    scored and judged normal, then a worn bearing (``set_wear(tag, 3)``) pre-alarms.
    Returns the gateway's counters at the pre-alarm."""
    gateway = Gateway(site, buffer_path=tmp_path / "buf.db", mqtt_port=1, drain_s=0.3)
    task = asyncio.create_task(gateway.run())
    try:
        rule = gateway.engine.rules[f"forecast:vibration-wear:{tag}"]
        counters = gateway.counters
        await async_wait_until(
            lambda: counters()["inference_windows"] >= 2, 30, "healthy blocks scored"
        )
        healthy = rule.condition
        assert healthy is Condition.NORMAL, healthy
        set_wear(tag, 3)
        await async_wait_until(
            lambda: rule.condition is Condition.ALARM, 30, "the worn-bearing pre-alarm"
        )
        out = counters()
        assert out["waveform_bad_blocks"] == 0
        assert out["reads_ok"] > 0  # the scalar tag is polled as before
        return out
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)
