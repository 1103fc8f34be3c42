"""CloudService and ``safewatch cloud run`` with a private Mosquitto, real InfluxDB, SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

import wire
from cloud import CloudService, CloudSettings
from cloud.auth import Role
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, point, telemetry
from tests.support import Broker, async_wait_until, free_port, wait_until

pytestmark = pytest.mark.contract


@contextlib.asynccontextmanager
async def serving(settings: CloudSettings) -> AsyncIterator[tuple[CloudService, httpx.AsyncClient]]:
    """Run a CloudService until its API is ready; stop it in order afterwards."""
    service = CloudService(settings)
    ready = asyncio.Event()
    run = asyncio.create_task(service.run(on_ready=lambda _s: ready.set()), name="cloud")
    try:
        async with asyncio.timeout(15):
            await ready.wait()
        await async_wait_until(lambda: service.health()["db"], 15, "the schema")
        token, _ = await asyncio.to_thread(service.auth.create_token, "test", Role.VIEWER, "test")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=service.api_url, headers=headers) as api:
            yield service, api
        assert not run.done(), "the service stopped on its own"
    finally:
        service.request_stop()
        async with asyncio.timeout(15):
            await run


async def test_service_ingests_serves_and_stops_in_order(
    broker: Broker, influx_db: tuple[str, str], tmp_path: Path
) -> None:
    influx_url, db = influx_db
    settings = CloudSettings(
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        influx_url=influx_url,
        influx_db=db,
        db_url=cloud_db_url(tmp_path, "cloud.db"),
        port=0,
        accept_past_s=None,  # the messages are stamped in 2023
    )
    async with serving(settings) as (service, api):

        async def healthy() -> bool:
            return bool((await api.get("/health")).json()["status"] == "ok")

        await async_wait_until(healthy, 15, "health ok")
        raised = alarm(1, tag="CH4-101", level="alarm", ts_ns=T0)
        batch = telemetry(2, point("CH4-101", 1.1, T0, kind="ch4"))
        async with aiomqtt.Client(broker.host, broker.port) as gw:
            for message in (raised, batch):
                await gw.publish(wire.topic_of(message), wire.encode(message), qos=1)

        async def latest_seen() -> bool:
            answer = await api.get("/api/v1/latest", params={"site": "mine-a"})
            return answer.status_code == 200 and bool(answer.json())

        await async_wait_until(latest_seen, 10, "latest values for mine-a")
        alarms = (await api.get("/api/v1/alarms", params={"site": "mine-a"})).json()
        assert [(a["tag"], a["level"], a["ts_ns"]) for a in alarms] == [("CH4-101", "alarm", T0)]
        (latest,) = (await api.get("/api/v1/latest", params={"site": "mine-a"})).json()
        assert (latest["value"], latest["ts"]) == (1.1, "2023-11-14T22:13:20.000000Z")
    # Acked only once InfluxDB had it: counted from its answer, and the point is there.
    assert service.health()["counters"]["influx_written"] >= 1
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{influx_url}/query", params={"db": db, "q": 'SELECT value FROM "ch4"'}
        )
    assert r.json()["results"][0]["series"][0]["values"][0][1] == 1.1


async def test_service_starts_degraded_when_broker_and_influx_are_down(tmp_path: Path) -> None:
    settings = CloudSettings(
        mqtt_port=free_port(),
        influx_url=f"http://127.0.0.1:{free_port()}",
        db_url=cloud_db_url(tmp_path, "cloud.db"),
        port=0,
    )
    async with serving(settings) as (_service, api):

        async def db_up() -> bool:
            return bool((await api.get("/health")).json()["db"])

        await async_wait_until(db_up, 10, "database ready")
        health = (await api.get("/health")).json()
        assert (health["status"], health["mqtt"], health["influx"]) == (
            "degraded",
            False,
            False,
        )


def test_cli_prints_urls_and_stops_on_sigterm(
    broker: Broker, influx_db: tuple[str, str], tmp_path: Path
) -> None:
    influx_url, db = influx_db
    db_file = tmp_path / "nested" / "dir" / "cloud.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safewatch.cli",
            "cloud",
            "run",
            "--port",
            "0",
            "--mqtt-host",
            broker.host,
            "--mqtt-port",
            str(broker.port),
            "--influx-url",
            influx_url,
            "--influx-db",
            db,
            "--db-url",
            f"sqlite:///{db_file}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        stdout = proc.stdout

        def ready_line() -> re.Match[str] | None:  # log lines (the schema upgrade) may come first
            return re.search(r"cloud ready: API (http://\S+)", stdout.readline())

        match = wait_until(ready_line, 20, "the ready line")
        assert match is not None
        base = match.group(1)
        health = wait_until(
            lambda: httpx.get(f"{base}/health").json()["status"] == "ok", 15, "health ok"
        )
        assert health
        assert db_file.exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "cloud stopped" in out
