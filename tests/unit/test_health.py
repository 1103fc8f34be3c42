"""Gateway health: /status JSON, Prometheus /metrics and ``safewatch edge status``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from typer.testing import CliRunner

from device_drivers import DeviceDriver
from edge.gateway import Gateway
from safewatch.cli import app
from tests.support import async_wait_until
from tests.unit.test_polling import FakeBus, f32, make_site


async def test_health_is_served_as_metrics_status_and_cli(tmp_path: Path) -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus(timeout_s=0.05)
    bus.set(1, "holding", 0, f32(0.3))
    bus.dead.add(2)  # env never answers

    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        driver_factory=factory,
        drain_s=0.2,
        health_port=0,
    )
    task = asyncio.create_task(gateway.run())
    try:
        server = gateway.health_server
        assert server is not None

        def dead_seen() -> bool:
            snap = server.snapshot
            if snap is None:
                return False
            env = next(d for d in snap["devices"] if d["device"] == "env")
            return bool(env["breaker"] == "open")

        await async_wait_until(dead_seen, 10, "the dead device in the health snapshot")
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(url + "/metrics")).text
            status = (await client.get(url + "/status")).json()
            missing = await client.get(url + "/nope")
        assert missing.status_code == 404
        assert 'safewatch_device_reads_total{bus="net",device="env",result="timeout"}' in metrics
        assert 'safewatch_device_breaker_open{bus="net",device="env"} 1.0' in metrics
        assert 'safewatch_device_breaker_open{bus="net",device="ch4-a"} 0.0' in metrics
        assert "safewatch_device_last_good_timestamp_seconds" in metrics
        assert "safewatch_bus_lag_seconds" in metrics and "safewatch_gateway_samples" in metrics
        live = next(d for d in status["devices"] if d["device"] == "ch4-a")
        assert live["ok"] > 0 and live["latency_avg_ms"] is not None and live["errors"] == {}
        result = await asyncio.to_thread(CliRunner().invoke, app, ["edge", "status", "--url", url])
        assert result.exit_code == 0, result.output
        env_row = next(line for line in result.output.splitlines() if " env " in line)
        assert "DEAD" in env_row and "timeout" in env_row and "never" in env_row
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)
    # the server is gone with the gateway
    result = CliRunner().invoke(app, ["edge", "status", "--url", url])
    assert result.exit_code == 1 and "cannot read" in result.output
