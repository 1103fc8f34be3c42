"""The shipped Mosquitto limits (ansible/roles/cloud/files/mosquitto-limits.conf), real broker.

The gateways delete a message once the broker PUBACKs it, so while the cloud is offline the
broker's queue for the ingest's persistent session is the only copy. With Mosquitto's default
``max_queued_messages 1000`` a cloud that is down for 1,501 messages loses 500 of them, the cut
alarm among them. Checked here by sequence, across a broker restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import aiomqtt
import pytest

import wire
from tests.factories import alarm, point, telemetry
from tests.support import async_wait_until, free_port, port_open, wait_until

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "ansible" / "roles" / "cloud" / "files" / "mosquitto-limits.conf"
SITE, GATEWAY = "mine-a", "gw-1"
MESSAGES = 1_600  # the last one is the cut alarm


class Broker:
    """Mosquitto as Debian runs it: main config with persistence, conf.d included."""

    def __init__(self, work: Path, *, limits: bool) -> None:
        self.port = free_port()
        store = work / "store"
        store.mkdir()
        confd = work / "conf.d"
        confd.mkdir()
        if limits:
            shutil.copy(SHIPPED, confd / "safewatch-limits.conf")
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = work / "mosquitto.conf"
        self.conf.write_text(
            f"{user}persistence true\npersistence_location {store}/\n"
            f"include_dir {confd}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until(lambda: port_open("127.0.0.1", self.port), 10, "mosquitto listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean stop writes the persistence file
            self.proc.wait(timeout=10)


async def ingest_session(port: int) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, identifier="safewatch-ingest-test", clean_session=False, timeout=5
    )


async def backlog_survives(work: Path, *, limits: bool) -> set[int]:
    """Cloud offline, MESSAGES published, broker restarted, cloud back: the seqs it receives."""
    broker = Broker(work, limits=limits)
    broker.start()
    try:
        async with await ingest_session(broker.port) as cloud:  # subscribe, then go offline
            await cloud.subscribe(f"{wire.TOPIC_ROOT}/#", qos=1)
        messages: list[wire.Message] = [
            telemetry(seq, point(value=seq * 1e-3), site=SITE, gateway=GATEWAY)
            for seq in range(1, MESSAGES)
        ]
        messages.append(alarm(MESSAGES, level="cut", site=SITE, gateway=GATEWAY))
        window = asyncio.Semaphore(64)
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=10) as gateway:

            async def send(message: wire.Message) -> None:
                async with window:
                    await gateway.publish(wire.topic_of(message), wire.encode(message), qos=1)

            await asyncio.gather(*(send(m) for m in messages))
        broker.stop()
        broker.start()
        received: set[int] = set()
        async with await ingest_session(broker.port) as cloud:

            async def collect() -> None:
                async for message in cloud.messages:
                    assert isinstance(message.payload, bytes)
                    decoded = wire.decode(message.payload)
                    if not isinstance(decoded, wire.GatewayStatus):
                        received.add(decoded.seq)

            task = asyncio.create_task(collect(), name="cloud")
            try:
                # queued messages are delivered before anything newer: once a sentinel
                # published now arrives, everything the broker had kept has arrived
                sentinel = telemetry(MESSAGES + 1, point(), site=SITE, gateway=GATEWAY)
                async with aiomqtt.Client("127.0.0.1", broker.port, timeout=10) as gateway:
                    await gateway.publish(wire.topic_of(sentinel), wire.encode(sentinel), qos=1)
                await async_wait_until(lambda: MESSAGES + 1 in received, 15, "the sentinel")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        received.discard(MESSAGES + 1)
        return received
    finally:
        broker.stop()


async def test_shipped_limits_keep_a_1600_message_backlog_and_the_cut_alarm(
    tmp_path: Path,
) -> None:
    received = await backlog_survives(tmp_path, limits=True)
    assert received == set(range(1, MESSAGES + 1))


async def test_without_them_mosquitto_drops_past_1000_the_reason_for_the_file(
    tmp_path: Path,
) -> None:
    received = await backlog_survives(tmp_path, limits=False)
    assert len(received) <= 1_000
    assert MESSAGES not in received  # the cut alarm, published last, is gone
