"""Simulator -> gateway -> Mosquitto -> cloud -> InfluxDB/API, all real processes.

The simulator runs in the test process so it can stamp, on one clock, when the
methane value crosses the cut threshold and when the gateway writes the
power-cut coil. The gateway and the cloud are the real ``safewatch`` commands.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from bench._harness import EDGE_NICE, PLANT_NICE, child, priority
from edge.config import load_model, load_site
from simulators import Scenario, ScenarioPlayer, SiteSimulator
from tests.db_support import cloud_db_url
from tests.support import Broker, async_wait_until, free_port, start_mosquitto

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CUT_TAG, CUT_AT, ACTUATOR = "CH4_1201_T1", 1.5, "power-1201"
SPEED = 4.0  # play the 40 s scenario in 10 s


def _write_site(tmp: Path, sim_port: int, mqtt_port: int) -> Path:
    yaml = YAML(typ="rt")
    doc: Any = yaml.load((REPO / "firmware_configs/sites/demo-mine.yaml").read_text("utf-8"))
    doc["buses"][0]["port"] = sim_port
    doc["mqtt"]["port"] = mqtt_port
    doc["buffer"]["path"] = str(tmp / "buffer.db")
    path = tmp / "site.yaml"
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    return path


@contextmanager
def _safewatch(args: list[str], log: Path, nice: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``safewatch`` child that must exit cleanly (0) when told to stop."""
    with child(args, log, nice=nice) as proc:
        yield proc
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}"


def _first(log: Any, after_ns: int, pred: Any) -> int | None:
    for entry in log:
        if entry[0] >= after_ns and pred(entry):
            return int(entry[0])
    return None


def _cut_latency_s(sim: SiteSimulator, after_ns: int) -> float | None:
    crossed = _first(sim.value_log, after_ns, lambda e: e[1] == CUT_TAG and e[2] >= CUT_AT)
    if crossed is None:
        return None
    cut = _first(sim.coil_log, crossed, lambda e: e[1] == ACTUATOR and e[2] is True)
    return None if cut is None else (cut - crossed) / 1e9


async def _influx_count(http: httpx.AsyncClient, url: str, db: str) -> int:
    r = await http.get(
        f"{url}/query",
        params={"db": db, "q": f"SELECT count(value) FROM ch4 WHERE \"tag\" = '{CUT_TAG}'"},
    )
    r.raise_for_status()
    series = r.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture(autouse=True)
def _plant_not_starved() -> Iterator[None]:
    """The in-process simulator is the plant; a loaded CI machine must not slow it."""
    with priority(PLANT_NICE):
        yield


async def test_methane_scenario_end_to_end(
    tmp_path: Path, broker: Broker, influx_db: tuple[str, str]
) -> None:
    influx_url, influx_name = influx_db
    sim_port, api_port = free_port(), free_port()
    site_path = _write_site(tmp_path, sim_port, broker.port)
    site = load_site(site_path)
    scenario = load_model(REPO / "firmware_configs/scenarios/methane-face.yaml", Scenario)
    sim = SiteSimulator(site)
    await sim.start()
    api = f"http://127.0.0.1:{api_port}"
    cloud_args = [
        "cloud", "run", "--mqtt-port", str(broker.port), "--influx-url", influx_url,
        "--influx-db", influx_name, "--db-url", cloud_db_url(tmp_path, "cloud.db"),
        "--port", str(api_port),
    ]  # fmt: skip
    edge_args = ["edge", "run", "--config", str(site_path), "--buffer", str(tmp_path / "b.db")]
    # The API wants a token: a machine token made with the CLI, as an operator would.
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "safewatch.cli", "tokens", "create", "integration-test",
         "--role", "viewer", "--db-url", cloud_db_url(tmp_path, "cloud.db")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = made.stdout.strip()
    try:
        with (
            _safewatch(cloud_args, tmp_path / "cloud.log"),
            _safewatch(edge_args, tmp_path / "edge.log", nice=EDGE_NICE),
        ):
            await _chain_checks(
                sim, scenario, broker, tmp_path, api, influx_url, influx_name, token
            )
    finally:
        await sim.stop()


async def _chain_checks(
    sim: SiteSimulator,
    scenario: Scenario,
    broker: Broker,
    tmp_path: Path,
    api: str,
    influx_url: str,
    influx_name: str,
    token: str,
) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=5) as http:

        async def healthy() -> bool:
            try:
                return (await http.get(f"{api}/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await async_wait_until(healthy, 30, "cloud /health")
        assert (await http.get(f"{api}/api/v1/alarms")).status_code == 401, "no token, no data"
        # a fresh gateway (no saved state) holds the power cut for the restore hold first
        await async_wait_until(lambda: sim.coil(ACTUATOR) is False, 15, "start-up hold over")
        started = time.monotonic_ns()
        await ScenarioPlayer(sim, scenario, speed=SPEED).run()

        # 1. power cut within 2 s of the simulator crossing 1.5 %
        latency = await async_wait_until(
            lambda: _cut_latency_s(sim, started), 5, "the cut coil write"
        )
        assert latency is not None and latency <= 2.0, (
            f"cut took {latency:.3f}s after crossing {CUT_AT} %"
        )
        # ...and power restored once the scenario stayed below 1.0 % for the restore hold
        await async_wait_until(lambda: sim.coil(ACTUATOR) is False, 5, "power restored")

        # 2. the alarm reached the cloud API
        async def cut_alarms() -> list[dict[str, Any]]:
            r = await http.get(f"{api}/api/v1/alarms", params={"site": "demo-mine"}, headers=bearer)
            return [a for a in r.json() if a["tag"] == CUT_TAG and a["level"] == "cut"]

        await async_wait_until(cut_alarms, 15, "the cut alarm in /api/v1/alarms")

        # 3. telemetry is queryable in InfluxDB, and latest values are served
        async def enough_points() -> bool:
            return await _influx_count(http, influx_url, influx_name) > 10

        await async_wait_until(enough_points, 15, "CH4 points in InfluxDB")
        latest = (
            await http.get(f"{api}/api/v1/latest", params={"site": "demo-mine"}, headers=bearer)
        ).json()
        assert {row["tag"] for row in latest} >= {CUT_TAG, "CO_1201", "O2_1201"}
        assert all(row["quality"] == "good" for row in latest)

        # 4. broker down: the gateway still cuts, and the alarm is forwarded later
        broker.stop()
        outage, outage_wall = time.monotonic_ns(), time.time_ns()
        sim.set_value(CUT_TAG, 1.7)
        latency = await async_wait_until(
            lambda: _cut_latency_s(sim, outage), 5, "the cut with the broker down"
        )
        assert latency is not None and latency <= 2.0, f"cut took {latency}s with broker down"
        restart = start_mosquitto(tmp_path, port=broker.port)
        try:

            async def outage_alarm() -> bool:
                alarms = await cut_alarms()
                return any(a["ts_ns"] >= outage_wall and a["value"] >= 1.7 - 1e-6 for a in alarms)

            await async_wait_until(outage_alarm, 30, "the outage alarm after reconnect")
        finally:
            restart.stop()
