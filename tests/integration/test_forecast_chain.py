"""Model outputs reach the cloud: simulator -> gateway (methane forecast) -> Mosquitto ->
cloud -> InfluxDB and the alarm API, all real processes.

The gateway runs the shipped methane-forecast model as a 50x time-lapse copy (one sample
per 0.2 s instead of 10 s, same ONNX file and sha256), so its 10-minute window fills in
12 s. The simulator plays the demo's build-up scenario 2.5x fast: in the model's time the
rise from 0.45 % to 1.0 % takes about 8 minutes. Checked: the forecast tag's values are
in InfluxDB (measurement ``forecast``), the pre-alarm reaches the alarm API before the
1.0 % alarm, and the power cut still comes within 2 s of 1.5 % and is not lifted before
methane falls back below 1.0 %.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from edge.config import load_model, load_site
from edge.inference import install_timelapse
from models import MODELS_DIR, read_card
from simulators import Scenario, ScenarioPlayer, SiteSimulator
from tests.db_support import cloud_db_url
from tests.integration.test_methane_chain import _cut_latency_s, _first, _safewatch
from tests.support import Broker, async_wait_until, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG, CUT_AT, ALARM_AT, ACTUATOR = "CH4_1201_T1", 1.5, 1.0, "power-1201"
FORECAST = f"{TAG}.p_exceed_10m"
PERIOD_S = 0.2  # the time-lapse model's sampling; the face sensors are polled this fast
SPEED = 2.5  # the 120 s scenario in 48 s (0.5 s of scenario per sample, as in the demo)
DECISION = read_card(MODELS_DIR / "methane-forecast.card.yaml").decision


def _write_site(tmp: Path, sim_port: int, mqtt_port: int) -> Path:
    yaml = YAML(typ="rt")
    doc: Any = yaml.load((REPO / "firmware_configs/sites/demo-mine.yaml").read_text("utf-8"))
    doc["buses"][0]["port"] = sim_port
    doc["mqtt"]["port"] = mqtt_port
    doc["buffer"]["path"] = str(tmp / "buffer.db")
    for device in doc["devices"]:
        if device["id"] in ("ch4-1201-t1", "ch4-1201-t2"):
            device["poll_ms"] = int(PERIOD_S * 1000)
            device["stale_after_ms"] = 1500  # as at the demo's 500 ms polls
    doc["inference"]["tick_ms"] = 200
    path = tmp / "site.yaml"
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    return path


async def _influx(http: httpx.AsyncClient, url: str, db: str, q: str) -> list[list[Any]]:
    r = await http.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"})
    r.raise_for_status()
    series = r.json()["results"][0].get("series")
    return series[0]["values"] if series else []


async def test_forecasts_reach_influxdb_and_the_pre_alarm_comes_before_the_alarm(
    tmp_path: Path, broker: Broker, influx_db: tuple[str, str]
) -> None:
    influx_url, influx_name = influx_db
    sim_port, api_port = free_port(), free_port()
    site_path = _write_site(tmp_path, sim_port, broker.port)
    models = tmp_path / "models"
    install_timelapse("methane-forecast", models, PERIOD_S)
    scenario = load_model(REPO / "firmware_configs/scenarios/methane-buildup.yaml", Scenario)
    sim = SiteSimulator(load_site(site_path))
    await sim.start()
    api = f"http://127.0.0.1:{api_port}"
    db_url = cloud_db_url(tmp_path)
    cloud_args = [
        "cloud", "run", "--mqtt-port", str(broker.port), "--influx-url", influx_url,
        "--influx-db", influx_name, "--db-url", db_url, "--port", str(api_port),
    ]  # fmt: skip
    edge_args = [
        "edge", "run", "--config", str(site_path), "--buffer", str(tmp_path / "b.db"),
        "--models-dir", str(models),
    ]  # fmt: skip
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "safewatch.cli", "tokens", "create", "forecast-test",
         "--role", "viewer", "--db-url", db_url],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {made.stdout.strip()}"}
    try:
        with (
            _safewatch(cloud_args, tmp_path / "cloud.log"),
            _safewatch(edge_args, tmp_path / "edge.log"),
        ):
            async with httpx.AsyncClient(timeout=5) as http:
                await _checks(sim, scenario, http, api, bearer, influx_url, influx_name)
    finally:
        await sim.stop()


async def _checks(
    sim: SiteSimulator,
    scenario: Scenario,
    http: httpx.AsyncClient,
    api: str,
    bearer: dict[str, str],
    influx_url: str,
    influx_name: str,
) -> None:
    async def healthy() -> bool:
        try:
            return (await http.get(f"{api}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    await async_wait_until(healthy, 30, "cloud /health")
    await async_wait_until(lambda: sim.coil(ACTUATOR) is False, 20, "start-up hold over")
    started, started_wall = time.monotonic_ns(), time.time_ns()
    await ScenarioPlayer(sim, scenario, speed=SPEED).run()

    # the model never delays the cut: within 2 s of the simulator crossing 1.5 %
    latency = await async_wait_until(lambda: _cut_latency_s(sim, started), 5, "the cut")
    assert latency is not None and latency <= 2.0, f"cut took {latency:.3f}s"
    # ...nor lifts it: power comes back only after methane fell below 1.0 %
    await async_wait_until(lambda: sim.coil(ACTUATOR) is False, 10, "power restored")
    cut_ns = _first(sim.coil_log, started, lambda e: e[1] == ACTUATOR and e[2] is True)
    assert cut_ns is not None
    restored_ns = _first(sim.coil_log, cut_ns, lambda e: e[1] == ACTUATOR and e[2] is False)
    below_ns = _first(sim.value_log, cut_ns, lambda e: e[1] == TAG and e[2] < ALARM_AT)
    assert restored_ns is not None and below_ns is not None and restored_ns > below_ns

    # the forecast's values arrived in InfluxDB through the uplink and the ingest
    query = f"SELECT value FROM forecast WHERE \"tag\" = '{FORECAST}'"

    async def forecasts() -> list[list[Any]]:
        rows = await _influx(http, influx_url, influx_name, query)
        return rows if any(r[1] >= DECISION.threshold for r in rows) else []

    rows = await async_wait_until(forecasts, 20, f"{FORECAST} over the threshold in InfluxDB")
    assert len(rows) > 20 and all(0.0 <= r[1] <= 1.0 for r in rows)
    quiet_end = started_wall + int(40 / SPEED * 1e9)  # the scenario is flat until 45 s
    quiet = [r[1] for r in rows if r[0] < quiet_end]
    assert quiet and max(quiet) < DECISION.threshold, f"pre-alarm at a steady 0.45 %: {quiet}"

    # the pre-alarm reached the alarm API, advisory (no actuator), before the 1.0 % alarm
    async def pre_alarm_and_alarm() -> tuple[dict[str, Any], dict[str, Any]] | None:
        r = await http.get(f"{api}/api/v1/alarms", params={"site": "demo-mine"}, headers=bearer)
        r.raise_for_status()
        mine = sorted(
            (a for a in r.json() if a["tag"] == TAG and a["ts_ns"] >= started_wall),
            key=lambda a: a["ts_ns"],
        )
        pre = [a for a in mine if a["kind"] == "forecast" and a["level"] == "alarm"]
        real = [a for a in mine if a["kind"] == "ch4" and a["level"] in ("alarm", "cut")]
        return (pre[0], real[0]) if pre and real else None

    found = await async_wait_until(pre_alarm_and_alarm, 20, "the pre-alarm and the alarm")
    assert found is not None
    pre, real = found
    assert pre["actuators"] == [] and "advisory" in pre["message"]
    assert pre["value"] >= DECISION.threshold
    lead_s = (real["ts_ns"] - pre["ts_ns"]) / 1e9
    assert lead_s > 0, f"the pre-alarm came {-lead_s:.1f}s after the alarm"
