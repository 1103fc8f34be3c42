"""The ingest acknowledges an alarm to the broker only after storing it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiomqtt
import pytest

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.storage import BatchCommit, InfluxV1Writer, Store
from tests.db_support import cloud_db_url
from tests.factories import alarm
from tests.support import Broker, async_wait_until

pytestmark = pytest.mark.contract

ANY_TIME = TimeWindow(past_s=None, future_s=None)

ALARM = alarm(11, alarm_id="gw-1-CH4-101-3", message="CH4 1.6 % at face: power cut")


class CrashingStore(Store):
    """Blocks inside record_alarm until released, then fails: a process dying mid-store."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered = threading.Event()
        self.release = threading.Event()

    def commit_batch(self, commit: BatchCommit) -> list[bool]:
        self.entered.set()
        self.release.wait(30)
        raise RuntimeError("the process died before the alarm was stored")


async def test_alarm_lost_mid_store_is_redelivered_to_the_next_ingest(
    tmp_path: Path, broker: Broker, influx_db: tuple[str, str]
) -> None:
    url = cloud_db_url(tmp_path, "cloud.db")
    Store(url).create_all()
    writer = InfluxV1Writer(*influx_db)
    crashing = CrashingStore(url)
    first = IngestService(
        broker.host, broker.port, crashing, writer, client_id="ingest-ack", ts_window=ANY_TIME
    )
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(first.run(), name="mqtt-ingest-1")
            await async_wait_until(lambda: first.connected, 15, "first ingest subscribed")
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as gateway:
                await gateway.publish(wire.topic_of(ALARM), wire.encode(ALARM), qos=1)
            await async_wait_until(crashing.entered.is_set, 15, "the alarm inside the store")
            task.cancel()  # dies while storing: no PUBACK may have been sent
        crashing.release.set()

        store = Store(url)
        second = IngestService(
            broker.host, broker.port, store, writer, client_id="ingest-ack", ts_window=ANY_TIME
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(second.run(), name="mqtt-ingest-2")
            try:
                stored = await async_wait_until(
                    lambda: [a.alarm_id for a in store.alarms()], 15, "the redelivered alarm"
                )
            finally:
                task.cancel()
        assert stored == [ALARM.alarm_id]
    finally:
        crashing.release.set()
        await writer.aclose()
