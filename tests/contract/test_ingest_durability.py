"""Store failures are not acked (the batch is retried, the ingest keeps serving) and lines
InfluxDB refuses are counted from its answer; private Mosquitto, the real InfluxDB."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import httpx
import pytest

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.storage import BatchCommit, InfluxV1Writer, Store, StoreError
from tests.db_support import cloud_db_url
from tests.factories import alarm, point, telemetry
from tests.support import Broker, async_wait_until

pytestmark = pytest.mark.contract


class LockedStore(Store):
    """A database that is locked for its first ``failures`` commits."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def commit_batch(self, commit: BatchCommit) -> list[bool]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database is locked")
        return super().commit_batch(commit)


async def publish(broker: Broker, *messages: wire.Message) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as gateway:
        for message in messages:
            await gateway.publish(wire.topic_of(message), wire.encode(message), qos=1)


async def test_a_locked_database_delays_the_alarm_but_never_drops_it(
    tmp_path: Path, broker: Broker, influx_db: tuple[str, str]
) -> None:
    url = cloud_db_url(tmp_path, "cloud.db")
    store = LockedStore(url, failures=3)
    store.create_all()
    writer = InfluxV1Writer(*influx_db)
    ingest = IngestService(
        broker.host,
        broker.port,
        store,
        writer,
        client_id="durability",
        ts_window=TimeWindow(None, None),
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(ingest.run(), name="mqtt-ingest")
        try:
            await async_wait_until(lambda: ingest.connected, 15, "ingest subscribed")
            await publish(broker, alarm(3, level="cut"))
            await async_wait_until(lambda: store.alarms(), 20, "the alarm stored after retries")
            assert ingest.counters()["store_retries"] == 3
            assert ingest.connected  # the loop kept serving
            await publish(broker, alarm(4, level="normal", previous="cut"))
            await async_wait_until(lambda: len(store.alarms()) == 2, 10, "the next alarm")
        finally:
            task.cancel()
    assert sorted(a.seq for a in store.alarms()) == [3, 4]
    await writer.aclose()


async def test_lines_influx_refuses_are_counted_as_refused_not_written(
    tmp_path: Path, influx_db: tuple[str, str]
) -> None:
    url, db = influx_db
    now = time.time_ns()
    # Someone wrote ch4's "value" as a string (in the same shard, the same hour): InfluxDB
    # refuses our floats there (a field type conflict).
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{url}/write", params={"db": db}, content=f'ch4,tag=X value="text" {now}\n'
        )
    assert r.status_code == 204
    store = Store(cloud_db_url(tmp_path, "cloud.db"))
    store.create_all()
    writer = InfluxV1Writer(url, db)
    ingest = IngestService("127.0.0.1", 1, store, writer, ts_window=TimeWindow(None, None))
    batch = telemetry(1, point("A", 1.0, now, kind="ch4"), point("B", 2.0, now, kind="co"))
    await ingest.handle(wire.topic_of(batch), wire.encode(batch))
    counters = ingest.counters()
    assert (counters["influx_refused"], counters["influx_written"]) == (1, 1)
    assert counters["points"] == 2  # the message itself was processed (and acked)
    await writer.aclose()
