"""Scale-out on NATS JetStream: a 3-node cluster (MQTT listeners on) started here on loopback
ports, a gateway publishing MQTT 3.1.1, two ingest workers on one durable consumer. One
worker dies mid-stream, and so does the node leading ``$MQTT_msgs`` (the stream that holds
what the MQTT layer PUBACKed); every point and alarm is stored exactly once, checked by
sequence.

Killing the leader is the worst case on purpose: with the workers on a stream of their own
(``safewatch.v1.>``, fed by nats-server's unacknowledged plain publish) a leader's death
lost every message PUBACKed during the election (seen: seqs 8-300 of 300 gone)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import nats
import pytest
import sqlalchemy as sa

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.jetstream import MQTT_STREAM, JetStreamIngest, subject_to_topic, topic_to_subject
from cloud.storage import InfluxV1Writer, Store
from tests.db_support import cloud_db_url
from tests.support import async_wait_until, free_port, port_open, wait_until

pytestmark = pytest.mark.integration

SITE, GATEWAY = "mine-n", "gw-n1"  # NATS 2.9 refuses "." in MQTT topics (2.10 maps it to "//")
MESSAGES = 300
ALARM_EVERY = 25
POINTS = 10


@dataclass
class Node:
    name: str
    client: int
    mqtt: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@contextmanager
def nats_cluster(tmp: Path) -> Iterator[list[Node]]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    routes = ", ".join(f"nats-route://127.0.0.1:{route}" for _c, route, _m in ports)
    nodes: list[Node] = []
    try:
        for i, (client, route, mqtt) in enumerate(ports):
            home = tmp / f"nats-{i}"
            home.mkdir()
            conf = home / "nats.conf"
            conf.write_text(
                f"server_name: n{i}\nlisten: 127.0.0.1:{client}\n"
                f'jetstream {{ store_dir: "{home}/js" }}\n'
                f"cluster {{ name: safewatch, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{mqtt} }}\n",
                encoding="utf-8",
            )
            with (home / "log").open("wb") as log:
                proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
            nodes.append(Node(f"n{i}", client, mqtt, proc))
        for node in nodes:
            wait_until(partial(port_open, "127.0.0.1", node.mqtt), 20, f"{node.name} MQTT")
        yield nodes
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.terminate()
                node.process.wait(timeout=10)


def message(seq: int, t0: int) -> wire.Message:
    ts = t0 + seq * 1_000_000
    if seq % ALARM_EVERY == 0:
        return wire.AlarmEvent(
            GATEWAY, SITE, seq, f"a-{seq}", "T0", "d", "ch4", "panel", "face",
            "cut", "alarm", 1.6, 1.5, ts, "CH4 cut", ["power-1"],
        )  # fmt: skip
    points = [
        wire.Point(f"T{i}", "d", "ch4", "%", "panel", "face", float(seq), "good", ts)
        for i in range(POINTS)
    ]
    return wire.TelemetryBatch(GATEWAY, SITE, seq, ts, points)


async def gateway(nodes: list[Node], t0: int) -> None:
    """MQTT 3.1.1 QoS 1 on one connection; on a failure, to the next node, resending
    what was not acknowledged."""
    seq, target = 1, 0
    while seq <= MESSAGES:
        node = nodes[target % len(nodes)]
        try:
            async with aiomqtt.Client(
                "127.0.0.1", node.mqtt, protocol=aiomqtt.ProtocolVersion.V311, timeout=3
            ) as client:
                while seq <= MESSAGES:
                    m = message(seq, t0)
                    async with asyncio.timeout(5):
                        await client.publish(wire.topic_of(m), wire.encode(m), qos=1)
                    seq += 1
                    await asyncio.sleep(0.005)
        except (aiomqtt.MqttError, TimeoutError):
            target += 1
            await asyncio.sleep(0.1)


def test_topic_and_subject_map_both_ways() -> None:
    topic = "safewatch/v1/mine-a/gw.1/telemetry"
    assert topic_to_subject(topic) == "safewatch.v1.mine-a.gw//1.telemetry"
    assert subject_to_topic(topic_to_subject(topic)) == topic


async def test_a_worker_and_a_node_die_and_nothing_is_lost_or_duplicated(
    tmp_path: Path, influx_db: tuple[str, str]
) -> None:
    url, db = influx_db
    db_url = cloud_db_url(tmp_path, "cloud.db")
    Store(db_url).create_all()
    with nats_cluster(tmp_path) as nodes:
        servers = [f"nats://127.0.0.1:{n.client}" for n in nodes]
        stores, writers, workers = [], [], []
        for _ in range(2):
            store = Store(db_url)
            writer = InfluxV1Writer(url, db)
            ingest = IngestService("127.0.0.1", 1, store, writer, ts_window=TimeWindow(None, None))
            stores.append(store)
            writers.append(writer)
            mqtt = [("127.0.0.1", n.mqtt) for n in nodes]
            workers.append(JetStreamIngest(servers, ingest, ack_wait_s=5.0, mqtt=mqtt))
        t0 = time.time_ns()
        try:
            async with asyncio.TaskGroup() as tg:
                running = [
                    tg.create_task(w.run(), name=f"jetstream-worker-{i}")
                    for i, w in enumerate(workers)
                ]

                async def all_connected() -> bool:
                    return all(w.connected for w in workers)

                await async_wait_until(all_connected, 30, "workers on the durable consumer")
                sending = tg.create_task(gateway(nodes, t0), name="gateway")

                def stored() -> int:
                    return sum(w.ingest.counters().get("telemetry", 0) for w in workers)

                await async_wait_until(stored, 30, "first batches stored")
                running[0].cancel()  # one worker dies: its unacked messages go to the other
                nc = await nats.connect(servers)
                try:
                    cluster = (await nc.jetstream().stream_info(MQTT_STREAM)).cluster
                    assert cluster is not None, "a clustered stream reports its leader"
                    leader = cluster.leader
                finally:
                    await nc.close()
                # and the node leading the stream (R3 keeps a quorum of two)
                next(n for n in nodes if n.name == leader).kill()
                await sending

                def done() -> bool:
                    gws = stores[1].gateways()
                    return bool(gws) and gws[0].last_seq == MESSAGES and gws[0].gaps == 0

                try:
                    await async_wait_until(done, 60, "every message stored")
                except AssertionError:
                    with stores[1].engine.connect() as db_:
                        seen = list(db_.execute(sa.text("SELECT seq FROM seen_seq")).scalars())
                    raise AssertionError(
                        f"not every seq stored after the {leader} kill: {stores[1].gateways()}, "
                        f"missing {sorted(set(range(1, MESSAGES + 1)) - set(seen))[:50]}"
                    ) from None
                running[1].cancel()
        finally:
            for writer in writers:
                await writer.aclose()
    store = stores[1]
    alarms = store.alarms(limit=1000)
    assert sorted(a.seq for a in alarms) == list(range(ALARM_EVERY, MESSAGES + 1, ALARM_EVERY))
    expected = [s for s in range(1, MESSAGES + 1) if s % ALARM_EVERY]
    async with httpx.AsyncClient(base_url=url) as influx:
        r = await influx.post(
            "/query", params={"db": db, "q": "SELECT value FROM ch4 WHERE \"tag\"='T0'"}
        )
        rows: list[Any] = r.json()["results"][0]["series"][0]["values"]
        assert sorted(int(v) for _ts, v in rows) == expected  # every seq once
        r = await influx.post("/query", params={"db": db, "q": "SELECT count(value) FROM ch4"})
        assert r.json()["results"][0]["series"][0]["values"][0][1] == POINTS * len(expected)
    for s in stores:
        s.close()
