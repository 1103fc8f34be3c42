"""uplink: samples -> batcher -> SQLite buffer -> publisher -> Mosquitto -> subscriber, QoS 1.

Three phases against a private Mosquitto (persistence on), in one run:

1. ``baseline``: the publisher with a window of 1 (one QoS 1 publish at a time,
   as the uplink worked before pipelining) carries ``--points`` points.
2. ``live``: the same load with the pipelined publisher (``--window``).
   ``points_per_s`` = points / (first sample offered -> last point received by
   the subscriber).
3. ``outage``: the broker is stopped, ``--backlog`` points are stored in the
   buffer, the broker is started again; ``drain_points_per_s`` = backlog points /
   (broker accepting again -> last backlog point received). The publisher's
   reconnect backoff is capped at 0.2 s here.

The subscriber is a separate process (``bench._uplink_subscriber``) with a
persistent session; it records when each message arrived. The producer offers
samples as fast as the uplink queue takes them (it waits when the queue is
full, so nothing is dropped and the figure is the uplink's own throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._harness import REPO_CONFIGS, free_port, workdir
from device_drivers import Quality, Sample
from edge.config import LoadedSite, load_site
from edge.uplink.batcher import SampleQueue, TelemetryBatcher
from edge.uplink.buffer import StoreAndForwardBuffer
from edge.uplink.publisher import MqttPublisher

SITE_FILE = REPO_CONFIGS / "sites" / "demo-mine.yaml"
QUEUE_SIZE = 10_000


class Mosquitto:
    """A private broker that can be stopped and started again on the same port."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        store = work / "mosquitto"
        store.mkdir()
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = work / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{user}"
            f"persistence true\npersistence_location {store}/\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait until it accepts; return the time (time.time()) it did."""
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return time.time()
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on {self.port}") from None
                time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def subscriber(port: int, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._uplink_subscriber", "127.0.0.1", str(port), str(out)],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def read_log(path: Path, gateway: str) -> list[tuple[float, int, int]]:
    """(received, seq, points) of every message of ``gateway`` so far."""
    rows: list[tuple[float, int, int]] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1] == gateway:
            rows.append((float(parts[0]), int(parts[2]), int(parts[3])))
    return rows


async def wait_for(cond: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def make_samples(site: LoadedSite, points: int) -> list[Sample]:
    """``points`` samples round-robin over the site's tags (built before the clock starts)."""
    tags = [(tag.name, device.id) for device, tag in site.tags()]
    now = time.time_ns()
    return [
        Sample(tags[i % len(tags)][0], tags[i % len(tags)][1], 0.5, Quality.GOOD, now + i, None)
        for i in range(points)
    ]


async def offer(queue: SampleQueue, samples: list[Sample]) -> None:
    """Offer the samples as fast as the queue takes them (wait when full: no drops)."""
    put = queue.put_nowait
    for i, sample in enumerate(samples):
        if queue.full():
            for _ in range(60_000):  # wait for room (a minute at most), then offer again
                await asyncio.sleep(0.001)
                if queue.qsize() <= QUEUE_SIZE // 2:
                    break
        put(sample)
        if i % 2000 == 1999:
            await asyncio.sleep(0)  # let the batcher and publisher run


def points_after(rows: list[tuple[float, int, int]], seq: int) -> int:
    return sum(n for _, s, n in rows if s > seq)


async def live_phase(
    site: LoadedSite, work: Path, broker: Mosquitto, log: Path, points: int, window: int, name: str
) -> tuple[float, int]:
    """Run ``points`` through a fresh uplink; return (points/s, last seq)."""
    cfg = site.config
    buffer = StoreAndForwardBuffer(
        work / f"{name}.db", 512 * 1024 * 1024, site=cfg.site.id, gateway=f"{cfg.gateway.id}-{name}"
    )
    queue = SampleQueue(QUEUE_SIZE)
    publisher = MqttPublisher(
        buffer,
        site=cfg.site.id,
        gateway=f"{cfg.gateway.id}-{name}",
        host="127.0.0.1",
        port=broker.port,
        window=window,
        idle_poll_s=0.1,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    batcher = TelemetryBatcher(site, buffer, queue, on_stored=publisher.notify)
    gw = f"{cfg.gateway.id}-{name}"
    async with asyncio.TaskGroup() as tg:
        pub = tg.create_task(publisher.run(), name="publisher")
        bat = tg.create_task(batcher.run(), name="batcher")
        await wait_for(lambda: publisher.connected, 10, "publisher connected")
        samples = make_samples(site, points)
        t0 = time.time()
        await offer(queue, samples)
        await wait_for(
            lambda: points_after(read_log(log, gw), 0) >= points, 120, f"{name}: all points"
        )
        rows = read_log(log, gw)
        t_end = max(t for t, s, n in rows if n > 0)
        bat.cancel()
        await publisher.stop(5)
        await pub
    last = buffer.last_seq
    buffer.close()
    return points / (t_end - t0), last


async def outage_phase(
    site: LoadedSite, work: Path, broker: Mosquitto, log: Path, backlog: int, window: int
) -> dict[str, float]:
    cfg = site.config
    gateway = f"{cfg.gateway.id}-outage"
    buffer = StoreAndForwardBuffer(
        work / "outage.db", 512 * 1024 * 1024, site=cfg.site.id, gateway=gateway
    )
    queue = SampleQueue(QUEUE_SIZE)
    publisher = MqttPublisher(
        buffer,
        site=cfg.site.id,
        gateway=gateway,
        host="127.0.0.1",
        port=broker.port,
        window=window,
        idle_poll_s=0.1,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    batcher = TelemetryBatcher(site, buffer, queue, on_stored=publisher.notify)
    async with asyncio.TaskGroup() as tg:
        pub = tg.create_task(publisher.run(), name="publisher")
        bat = tg.create_task(batcher.run(), name="batcher")
        await wait_for(lambda: publisher.connected, 10, "publisher connected")
        first_seq = buffer.last_seq
        broker.stop()
        samples = make_samples(site, backlog)
        t_store = time.time()
        await offer(queue, samples)
        await wait_for(
            lambda: queue.empty() and batcher.batches * 500 >= backlog - 500, 60, "stored"
        )
        await batcher.flush()
        store_rate = backlog / (time.time() - t_store)
        t_up = broker.start()
        await wait_for(
            lambda: points_after(read_log(log, gateway), first_seq) >= backlog,
            120,
            "backlog drained",
        )
        rows = [r for r in read_log(log, gateway) if r[1] > first_seq and r[2] > 0]
        t_end = max(t for t, _, _ in rows)
        bat.cancel()
        await publisher.stop(5)
        await pub
    buffer.close()
    return {"drain": backlog / (t_end - t_up), "store": store_rate}


async def measure(points: int, backlog: int, window: int) -> dict[str, Any]:
    site = load_site(SITE_FILE)
    with workdir() as work:
        broker = Mosquitto(work)
        broker.start()
        sub_log = work / "received.txt"
        try:
            with subscriber(broker.port, sub_log):
                await wait_for(
                    lambda: sub_log.exists() and "ready" in sub_log.read_text(), 10, "subscriber"
                )
                baseline, _ = await live_phase(
                    site, work, broker, sub_log, points // 3, 1, "baseline"
                )
                live, _ = await live_phase(site, work, broker, sub_log, points, window, "live")
                drained = await outage_phase(site, work, broker, sub_log, backlog, window)
        finally:
            broker.stop()
    return {
        "benchmark": "uplink",
        "points": points,
        "backlog_points": backlog,
        "window": window,
        "points_per_s": round(live),
        "baseline_window1_points_per_s": round(baseline),
        "drain_points_per_s": round(drained["drain"]),
        "outage_store_points_per_s": round(drained["store"]),
        "batch_points": 500,
        "qos": 1,
        "broker": "private mosquitto",
        "cpus": os.cpu_count(),
    }


def run(points: int = 300_000, backlog: int = 300_000, window: int = 64) -> dict[str, Any]:
    return asyncio.run(measure(points, backlog, window))
