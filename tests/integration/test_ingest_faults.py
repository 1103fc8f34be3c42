"""The cloud ingest under faults, with steady sequence-numbered load; all real processes.

``safewatch cloud run`` as a child process, a private Mosquitto (persistence on) and a
private InfluxDB (the shared one on 8086 is never stopped). Two gateways publish
telemetry (20 points a message, value = seq) and, every 25th seq, a cut alarm, at QoS 1,
resending whatever was not acknowledged. Meanwhile: the cloud is SIGKILLed three times,
the broker restarts, InfluxDB stops, the SQLite database is locked, and 10,000 malformed
messages arrive among the valid ones. Afterwards, checked by sequence: every point is in
InfluxDB exactly once, every alarm is stored once, the garbage sits in the dead letters,
and the last cloud process never exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

import wire
from cloud.storage import Store
from tests.db_support import cloud_db_url, database_locked
from tests.support import (
    Broker,
    InfluxServer,
    async_wait_until,
    private_influxd,
    start_mosquitto,
    wait_until,
)

pytestmark = pytest.mark.integration

GATEWAYS = ("gw-a", "gw-b")
SITE = "mine-f"
POINTS = 20
ALARM_EVERY = 25
GARBAGE = 10_000
DB = "faults"
# The broker as shipped: its queue for an absent or slow ingest holds the whole outage.
LIMITS = (
    Path(__file__).resolve().parents[2] / "ansible/roles/cloud/files/mosquitto-limits.conf"
).read_text("utf-8")


class Cloud:
    """``safewatch cloud run`` as a child process that the test can SIGKILL and restart."""

    def __init__(self, tmp: Path, mqtt_port: int, influx_url: str) -> None:
        self.tmp = tmp
        self.args = [
            sys.executable,
            "-m",
            "safewatch.cli",
            "cloud",
            "run",
            "--port",
            "0",
            "--mqtt-port",
            str(mqtt_port),
            "--influx-url",
            influx_url,
            "--influx-db",
            DB,
            "--db-url",
            cloud_db_url(tmp, "cloud.db"),
            "--client-id",
            "faults-ingest",
            "--log-level",
            "WARNING",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = ""
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.tmp / f"cloud-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        def ready() -> str:
            match = re.search(r"cloud ready: API (http://\S+)", log.read_text("utf-8"))
            assert self.proc is not None and self.proc.poll() is None, log.read_text("utf-8")
            return match.group(1) if match else ""

        self.api = wait_until(ready, 90, "cloud ready")  # imports are slow on a busy machine

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the cloud exited on its own"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            try:
                answer: dict[str, Any] = (await client.get(f"{self.api}/health")).json()
            except (httpx.HTTPError, ValueError):
                return {}
        return answer


class Gateways:
    """Two publishing gateways: seq-numbered, QoS 1, resend until acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.t0 = time.time_ns() - 60 * 10**9
        self.next_seq = dict.fromkeys(GATEWAYS, 1)
        self.telemetry: dict[str, list[int]] = {g: [] for g in GATEWAYS}
        self.alarms: dict[str, list[int]] = {g: [] for g in GATEWAYS}
        self.stop = asyncio.Event()
        self.resends = 0

    def message(self, gateway: str, seq: int) -> wire.Message:
        ts = self.t0 + seq * 1_000_000
        if seq % ALARM_EVERY == 0:
            return wire.AlarmEvent(
                gateway, SITE, seq, f"{gateway}-{seq}", "T00", "d-1", "ch4", "panel", "face",
                "cut", "alarm", 1.6, 1.5, ts, "CH4 cut", ["power-1"],
            )  # fmt: skip
        points = [
            wire.Point(f"T{i:02d}", "d-1", "ch4", "%", "panel", "face", float(seq), "good", ts)
            for i in range(POINTS)
        ]
        return wire.TelemetryBatch(gateway, SITE, seq, ts, points)

    async def run(self, gateway: str, period_s: float) -> None:
        while not self.stop.is_set():
            seq = self.next_seq[gateway]
            message = self.message(gateway, seq)
            await self.publish(wire.topic_of(message), wire.encode(message))
            (self.alarms if isinstance(message, wire.AlarmEvent) else self.telemetry)[
                gateway
            ].append(seq)
            self.next_seq[gateway] = seq + 1
            await asyncio.sleep(period_s)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Until the broker acknowledged it (a resend after a failure may duplicate it)."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, timeout=3, protocol=aiomqtt.ProtocolVersion.V5
                ) as client:
                    async with asyncio.timeout(5):
                        await client.publish(topic, payload, qos=1)
                    return
            except (aiomqtt.MqttError, TimeoutError):
                self.resends += 1
                await asyncio.sleep(0.2)


def garbage(rng: random.Random, valid: bytes) -> bytes:
    """One malformed payload: random bytes, bad UTF-8, wrong types, NaN, out of range..."""
    document = json.loads(valid)
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return valid.replace(b'"d-1"', b'"d-\xff\xfe"', 1)
    if kind == 2:
        return json.dumps({**document, "seq": "seven"}).encode()
    if kind == 3:
        return valid.replace(b'"value":', b'"value":NaN,"x":', 1)
    if kind == 4:
        return json.dumps({**document, "seq": -rng.randrange(1, 2**70)}).encode()
    if kind == 5:
        return json.dumps({**document, "seq": 2**63 + rng.randrange(2**10)}).encode()
    if kind == 6:
        bad = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        with contextlib.suppress(wire.WireError):
            wire.decode(bytes(bad))
            return b"\x00" + bytes(bad)  # the mutation happened to be valid: spoil it
        return bytes(bad)
    if kind == 7:
        return json.dumps({**document, "site": "#mine"}).encode()
    return b'{"type":"telemetry","points":[' + b"[" * 5000 + b"]" * 5000 + b"]}"


def garbage_payloads(count: int) -> list[tuple[str, bytes]]:
    """``count`` malformed messages (distinct payloads) on the gateways' topics, and one huge."""
    rng = random.Random(6)
    sample = Gateways(0)
    valid = [wire.encode(sample.message("gw-a", s)) for s in (1, ALARM_EVERY)]
    made: dict[bytes, str] = {}
    while len(made) < count:
        n = len(made)
        kind = "telemetry" if n % 2 else "alarms"
        made.setdefault(
            garbage(rng, valid[n % 2]), f"{wire.TOPIC_ROOT}/{SITE}/{GATEWAYS[n % 2]}/{kind}"
        )
    # Huge, but within the broker's packet limit: the wire's own bounds refuse it.
    huge = b'{"type":"telemetry","gateway":"' + b"g" * (wire.MAX_PAYLOAD_BYTES - 100) + b'"}'
    made[huge] = f"{wire.TOPIC_ROOT}/{SITE}/gw-a/telemetry"
    return [(topic, payload) for payload, topic in made.items()]


async def publish_garbage(gateways: Gateways, messages: list[tuple[str, bytes]]) -> None:
    """Mixed in with the valid load, through every fault; resent until acknowledged."""
    for start in range(0, len(messages), 500):
        chunk = messages[start : start + 500]
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    gateways.port,
                    timeout=3,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    max_inflight_messages=500,
                ) as client:
                    async with asyncio.timeout(20):
                        await asyncio.gather(
                            *(client.publish(topic, payload, qos=1) for topic, payload in chunk)
                        )
                break
            except (aiomqtt.MqttError, TimeoutError):
                gateways.resends += 1
                await asyncio.sleep(0.2)


def influx_values(url: str, q: str) -> list[list[Any]]:
    r = httpx.post(f"{url}/query", params={"db": DB, "q": q}, timeout=30)
    r.raise_for_status()
    series = r.json()["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


@contextlib.asynccontextmanager
async def load(gateways: Gateways, junk: list[tuple[str, bytes]]) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        for gateway in GATEWAYS:
            tg.create_task(gateways.run(gateway, 0.02), name=f"gateway-{gateway}")
        garbage_sent = tg.create_task(publish_garbage(gateways, junk), name="garbage")
        try:
            yield
            await garbage_sent
        finally:
            gateways.stop.set()


async def test_nothing_accepted_is_lost_or_duplicated_and_the_cloud_keeps_serving(
    tmp_path: Path,
) -> None:
    broker: Broker = start_mosquitto(tmp_path, extra=LIMITS)
    influx: InfluxServer
    with private_influxd(tmp_path) as influx:
        cloud = Cloud(tmp_path, broker.port, influx.url)
        gateways = Gateways(broker.port)
        began = time.monotonic()
        try:
            cloud.start()

            async def stored() -> int:
                counters = (await cloud.health()).get("counters", {})
                return int(counters.get("ingest_telemetry", 0)) + int(
                    counters.get("ingest_alarms", 0)
                )

            async def progress(more: int, what: str) -> None:
                before = await stored()
                await async_wait_until(lambda: _more(stored, before + more), 90, what)
                print(f"{time.monotonic() - began:6.1f} s  {what}")

            junk = garbage_payloads(GARBAGE)
            async with load(gateways, junk):
                await progress(5, "first messages stored")
                for kill in range(3):  # SIGKILL the cloud mid-stream, three times
                    cloud.kill()
                    await asyncio.to_thread(cloud.start)
                    await progress(5, f"progress after kill {kill + 1}")

                broker.stop()  # the broker restarts (persistence on: sessions survive)
                broker = await asyncio.to_thread(
                    start_mosquitto, tmp_path, broker.port, extra=LIMITS
                )
                await progress(5, "progress after the broker restart")

                influx.stop()  # InfluxDB away: batches go to the spool, and are acked
                spooled = await async_wait_until(
                    lambda: _counter(cloud, "ingest_spooled"), 90, "points spooled"
                )
                await asyncio.to_thread(influx.start)
                await async_wait_until(
                    lambda: _counter(cloud, "ingest_unspooled", at_least=spooled),
                    90,
                    "the spool drained",
                )

                with database_locked(cloud_db_url(tmp_path, "cloud.db")):
                    await asyncio.sleep(2)  # the SQL database locked for a while
                    assert cloud.alive() and (await cloud.health())["mqtt"]
                await progress(5, "progress after the lock")

            expected = {g: len(gateways.telemetry[g]) + len(gateways.alarms[g]) for g in GATEWAYS}
            await async_wait_until(
                lambda: _caught_up(cloud, tmp_path, expected), 180, "the cloud caught up"
            )
            await async_wait_until(
                lambda: _counter(cloud, "ingest_dead_letters", at_least=1), 90, "dead letters"
            )
            print(f"{time.monotonic() - began:6.1f} s  caught up; {gateways.resends} resends")
            assert cloud.alive(), "the cloud exited"
            health = await cloud.health()
            print(health)
            assert health["counters"]["influx_spooled_pending"] == 0
            assert cloud.stop() == 0
        finally:
            cloud.stop()
            broker.stop()

        for gateway in GATEWAYS:
            rows = influx_values(
                influx.url, f"SELECT value FROM ch4 WHERE gateway='{gateway}' AND \"tag\"='T00'"
            )
            seqs = sorted(int(value) for _ts, value in rows)
            assert seqs == gateways.telemetry[gateway], f"{gateway}: points lost or duplicated"
            ((_ts, count),) = influx_values(
                influx.url, f"SELECT count(value) FROM ch4 WHERE gateway='{gateway}'"
            )
            assert count == POINTS * len(gateways.telemetry[gateway])
    store = Store(cloud_db_url(tmp_path, "cloud.db"))
    try:
        for gateway in GATEWAYS:
            alarms = store.alarms(gateway=gateway, limit=100_000)
            assert sorted(a.seq for a in alarms) == gateways.alarms[gateway]
        assert {(g.gateway, g.last_seq, g.gaps) for g in store.gateways()} == {
            (g, gateways.next_seq[g] - 1, 0) for g in GATEWAYS
        }
        # Every malformed message is one dead letter (a redelivered copy counts in
        # ``copies``), and nothing else is.
        letters = store.dead_letters(limit=100_000)
        assert sorted((d.topic, d.payload) for d in letters) == sorted(junk)
        assert {d.reason for d in letters} == {"malformed"}
        assert store.spool_points() == 0
    finally:
        store.close()


async def _more(stored: Any, target: int) -> bool:
    return bool(await stored() >= target)


async def _counter(cloud: Cloud, name: str, at_least: int = 1) -> int:
    value = int((await cloud.health()).get("counters", {}).get(name, 0))
    return value if value >= at_least else 0


async def _caught_up(cloud: Cloud, tmp: Path, expected: dict[str, int]) -> bool:
    def last_seqs() -> dict[str, int | None]:
        store = Store(cloud_db_url(tmp, "cloud.db"))
        try:
            return {g.gateway: g.last_seq for g in store.gateways()}
        finally:
            store.close()

    health = await cloud.health()
    pending = health.get("counters", {}).get("influx_spooled_pending", 1)
    return pending == 0 and await asyncio.to_thread(last_seqs) == expected
