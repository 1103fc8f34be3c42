"""IngestService against a private Mosquitto, the real InfluxDB and a SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.storage import InfluxV1Writer, Store
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, gateway_status, point, telemetry
from tests.support import Broker, async_wait_until

pytestmark = pytest.mark.contract

ANY_TIME = TimeWindow(past_s=None, future_s=None)


def influx_values(url: str, db: str, q: str) -> list[list[Any]]:
    r = httpx.post(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"})
    r.raise_for_status()
    series = r.json()["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


async def test_ingest_stores_alarms_once_latest_and_points(
    broker: Broker, influx_db: tuple[str, str], tmp_path: Path
) -> None:
    influx_url, db = influx_db
    store = Store(cloud_db_url(tmp_path, "cloud.db"))
    store.create_all()
    writer = InfluxV1Writer(influx_url, db)
    ingest = IngestService(
        broker.host, broker.port, store, writer, group="contract", ts_window=ANY_TIME
    )

    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as gateway:
        # Retained before the cloud connects: only a normal subscription receives it.
        status = gateway_status("online")
        await gateway.publish(wire.topic_of(status), wire.encode(status), qos=1, retain=True)

        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(writer.run(), name="influx-writer"),
                tg.create_task(ingest.run(), name="mqtt-ingest"),
            ]
            await async_wait_until(lambda: ingest.connected, 10, "ingest subscribed")

            cut = alarm(2, level="cut", actuators=["power-1201"])
            messages = (
                telemetry(1, point("CH4-101", 0.4, T0 + 1, kind="ch4")),
                cut,
                cut,
                telemetry(3, point("CH4-101", 0.9, T0 + 3, kind="ch4")),
            )
            for message in messages:
                await gateway.publish(wire.topic_of(message), wire.encode(message), qos=1)
            await gateway.publish("safewatch/v1/mine-a/gw-1/alarms", b"\x00garbage", qos=1)

            await async_wait_until(
                lambda: ingest.counters().get("received", 0) >= 6, 10, "six messages received"
            )
            await async_wait_until(
                lambda: ingest.counters().get("influx_written", 0) >= 2,
                10,
                "points written to InfluxDB",
            )
            for task in tasks:
                task.cancel()

    alarms = store.alarms(site="mine-a")
    assert [(a.seq, a.level, a.actuators) for a in alarms] == [(2, "cut", ["power-1201"])]
    (latest,) = store.latest("mine-a")
    assert (latest.tag, latest.value, latest.ts_ns) == ("CH4-101", 0.9, T0 + 3)
    (gw,) = store.gateways()
    assert (gw.state, gw.last_seq, gw.gaps) == ("online", 3, 0)
    counters = ingest.counters()
    assert counters["duplicates"] == 1
    assert counters["dead_malformed"] == 1
    assert [d.payload for d in store.dead_letters()] == [b"\x00garbage"]
    assert counters["status"] == 1
    assert influx_values(influx_url, db, 'SELECT value, "tag", site FROM "ch4"') == [
        [T0 + 1, 0.4, "CH4-101", "mine-a"],
        [T0 + 3, 0.9, "CH4-101", "mine-a"],
    ]
    await writer.aclose()
    store.close()


async def test_ingest_survives_a_broker_that_is_not_there_yet(
    tmp_path: Path, influx_db: tuple[str, str]
) -> None:
    from tests.support import free_port, start_mosquitto

    port = free_port()
    store = Store(cloud_db_url(tmp_path, "late.db"))
    store.create_all()
    writer = InfluxV1Writer(*influx_db)
    ingest = IngestService("127.0.0.1", port, store, writer, backoff_cap_s=0.5)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(ingest.run(), name="mqtt-ingest")
        await async_wait_until(
            lambda: ingest.counters().get("disconnects", 0) >= 2, 10, "failed connection attempts"
        )
        assert not ingest.connected
        broker = await asyncio.to_thread(start_mosquitto, tmp_path, port)
        try:
            await async_wait_until(lambda: ingest.connected, 15, "ingest connected late")
        finally:
            task.cancel()
            await asyncio.to_thread(broker.stop)
    await writer.aclose()


async def test_alarms_published_while_ingest_is_away_arrive_after_it_returns(
    tmp_path: Path, broker: Broker, influx_db: tuple[str, str]
) -> None:
    """Persistent session: the broker queues QoS 1 alarms for an absent ingest,
    also across a restart of the broker itself (persistence on)."""
    from tests.support import start_mosquitto

    store = Store(cloud_db_url(tmp_path, "away.db"))
    store.create_all()
    writer = InfluxV1Writer(*influx_db)

    async def run_until(ingest: IngestService, done: Any, what: str) -> None:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(ingest.run(), name="mqtt-ingest")
            try:
                await async_wait_until(done, 15, what)
            finally:
                task.cancel()

    def ingest() -> IngestService:
        return IngestService(
            broker.host,
            broker.port,
            store,
            writer,
            client_id="ingest-a",
            backoff_cap_s=0.5,
            ts_window=ANY_TIME,
        )

    first = ingest()
    await run_until(first, lambda: first.connected, "first subscription")

    async def publish(event: wire.AlarmEvent) -> None:
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as gateway:
            await gateway.publish(wire.topic_of(event), wire.encode(event), qos=1)

    await publish(alarm(7))  # nobody is connected: the session queues it
    broker.stop()
    restarted = await asyncio.to_thread(start_mosquitto, tmp_path, broker.port)
    try:
        await publish(alarm(8))  # queued in the restored session
        second = ingest()
        await run_until(
            second, lambda: {a.seq for a in store.alarms()} == {7, 8}, "both queued alarms"
        )
    finally:
        restarted.stop()
        await writer.aclose()
