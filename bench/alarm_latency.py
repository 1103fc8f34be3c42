"""alarm-latency: simulator value change -> power-cut coil written, end to end.

The simulator runs in this process and stamps both events on its own clock:
when the methane value crosses the cut threshold (``value_log``) and when a
client writes the power-cut coil (``coil_log``). The gateway is the real
``safewatch edge run`` in a child process, with a private MQTT broker. Each
trip starts at a random phase of the poll cycle, so the distribution covers
the whole cycle (expected p50 ~ poll/2 + processing).

Baseline measured in the same run: the Modbus read round trip against the
same simulator, so a slow, shared machine shows up in both numbers.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from bench._harness import REPO_CONFIGS, child, free_port, percentile, private_mosquitto, workdir
from device_drivers.modbus import ModbusTcpDriver
from edge.config import load_site
from simulators import SiteSimulator

TAG = "CH4_1201_T1"
ACTUATOR = "power-1201"
HIGH, LOW = 1.6, 0.4
TRIP_TIMEOUT_S = 10.0


def write_site(work: Path, *, sim_port: int, mqtt_port: int, poll_ms: int) -> Path:
    yaml = YAML(typ="rt")
    doc: Any = yaml.load((REPO_CONFIGS / "sites" / "demo-mine.yaml").read_text(encoding="utf-8"))
    doc["buses"][0]["port"] = sim_port
    doc["mqtt"]["port"] = mqtt_port
    doc["buffer"]["path"] = str(work / "buffer.db")
    for device in doc["devices"]:
        if "poll_ms" in device:
            device["poll_ms"] = poll_ms
    path = work / "site.yaml"
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    return path


async def _coil_write_after(sim: SiteSimulator, t0_ns: int, value: bool) -> int:
    """Time (ns) of the first client write of ``value`` to the actuator after ``t0_ns``."""
    deadline = time.monotonic() + TRIP_TIMEOUT_S
    while True:
        for t_ns, actuator, written in reversed(sim.coil_log):
            if t_ns < t0_ns:
                break
            if actuator == ACTUATOR and written == value:
                return t_ns
        if time.monotonic() > deadline:
            raise TimeoutError(f"no coil write {value} to {ACTUATOR} within {TRIP_TIMEOUT_S}s")
        await asyncio.sleep(0.002)


async def _modbus_rtt_ms(port: int, samples: int = 200) -> list[float]:
    driver = ModbusTcpDriver("bench", "127.0.0.1", port, 1.0)
    await driver.connect()
    out = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            await driver.read_registers(1, "holding", 0, 2)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        await driver.close()
    return out


async def measure(poll_ms: int, trips: int) -> dict[str, Any]:
    with workdir() as work, private_mosquitto(work) as mqtt_port:
        sim_port = free_port()
        site_path = write_site(
            work, sim_port=sim_port, mqtt_port=mqtt_port or free_port(), poll_ms=poll_ms
        )
        sim = SiteSimulator(load_site(site_path))
        await sim.start()
        try:
            rtt = await _modbus_rtt_ms(sim_port)
            args = ["edge", "run", "--config", str(site_path), "--buffer", str(work / "buf.db")]
            with child(args, work / "edge.log") as proc:
                # warm-up trip: the gateway is up and polling once it cuts and restores
                sim.set_value(TAG, HIGH)
                await _coil_write_after(sim, 0, True)
                t_low = time.monotonic_ns()
                sim.set_value(TAG, LOW)
                await _coil_write_after(sim, t_low, False)
                latencies: list[float] = []
                for _ in range(trips):
                    await asyncio.sleep(random.uniform(0, poll_ms / 1000))  # random phase
                    t0 = time.monotonic_ns()
                    sim.set_value(TAG, HIGH)
                    t1 = await _coil_write_after(sim, t0, True)
                    latencies.append((t1 - t0) / 1e6)
                    t_low = time.monotonic_ns()
                    sim.set_value(TAG, LOW)
                    await _coil_write_after(sim, t_low, False)
                if proc.poll() is not None:
                    raise RuntimeError("gateway exited during the benchmark")
        finally:
            await sim.stop()
    return {
        "benchmark": "alarm-latency",
        "poll_ms": poll_ms,
        "trips": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "min_ms": round(min(latencies), 2),
        "baseline_modbus_rtt_p50_ms": round(percentile(rtt, 50), 3),
        "baseline_modbus_rtt_p99_ms": round(percentile(rtt, 99), 3),
        "limit_ms": 2000,
        "broker": "private mosquitto" if mqtt_port else "none (unreachable)",
    }


def run(poll_ms: int = 500, trips: int = 100) -> dict[str, Any]:
    return asyncio.run(measure(poll_ms, trips))
