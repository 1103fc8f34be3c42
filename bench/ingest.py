"""ingest: cloud ingest -> InfluxDB points/s end to end, beside raw line-protocol writes.

1. A private Mosquitto (persistence off, no queue limit) and two fresh InfluxDB
   databases on the InfluxDB under test.
2. The ingest's persistent session(s) are registered, then a backlog of
   sequence-numbered telemetry (``--points`` points in messages of
   ``--batch`` points, several gateways) is published at QoS 1 while no ingest
   is connected: the broker queues it.
3. ``safewatch cloud run`` (``--workers`` processes, a shared subscription when
   more than one) drains the backlog; points/s is measured from its connection
   to the last point made durable (``ingest_points`` in ``/health``, counted
   after the commit that follows InfluxDB's answer).
4. Baseline in the same run, before and after the ingest (the mean counts): the
   same lines, written to a fresh database by the best plain writer measured here
   (:func:`raw_writes`: 10,000-line requests, 2 in flight, gzip only to a remote server).
5. Checks: InfluxDB holds exactly ``--points`` points.

The last output line is JSON: points_per_s, raw_points_per_s, ratio, rss_mb, the ingest
processes' CPU per point and share of a core while draining, the load average, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import wire
from bench._harness import child, private_mosquitto, workdir
from cloud.storage import is_loopback, to_lines

KINDS = ("ch4", "co", "o2", "h2s")
TIMEOUT_S = 120.0


def make_messages(points: int, batch: int, gateways: int) -> list[wire.TelemetryBatch]:
    """Sequence-numbered batches; every point its own (series, timestamp)."""
    base = time.time_ns() - 3_600 * 10**9  # an hour ago: inside the accept window
    messages: list[wire.TelemetryBatch] = []
    seqs = [0] * gateways
    made = 0
    while made < points:
        g = len(messages) % gateways
        seqs[g] += 1
        n = min(batch, points - made)
        stamp = base + seqs[g] * 1_000_000  # 1 ms apart per batch
        pts = [
            wire.Point(
                tag=f"T{i:04d}",
                device=f"dev-{i // 8}",
                kind=KINDS[i % len(KINDS)],
                unit="%",
                area="panel-3",
                position="face",
                value=0.25 + (i % 97) / 100,
                quality="good",
                ts_ns=stamp,
            )
            for i in range(n)
        ]
        messages.append(wire.TelemetryBatch(f"gw-{g}", "bench-site", seqs[g], stamp, pts))
        made += n
    return messages


@contextlib.contextmanager
def mosquitto(work: Path) -> Iterator[int]:
    # No limits that would drop the backlog: the bench measures the ingest.
    lifted = (
        "persistence false\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
    )
    with private_mosquitto(work, lifted) as port:
        if port is None:
            raise RuntimeError("mosquitto is not installed")
        yield port


def influx_query(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q} if db is None else {"q": q, "db": db}
    r = httpx.post(f"{url}/query", params=params, timeout=60)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def count_points(url: str, db: str) -> int:
    body = influx_query(url, "SELECT count(value) FROM " + ",".join(KINDS), db)
    series = body["results"][0].get("series", [])
    return sum(int(s["values"][0][1]) for s in series)


async def register_sessions(port: int, client_ids: list[str], group: str | None) -> None:
    """Create the ingest sessions (and their subscriptions) before the backlog is published."""
    prefix = f"$share/{group}/" if group else ""
    for client_id in client_ids:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        ) as client:
            await client.subscribe(f"{prefix}{wire.TOPIC_ROOT}/+/+/telemetry", qos=1)


async def publish_backlog(port: int, messages: list[wire.TelemetryBatch]) -> float:
    # aiomqtt warns for every publish beyond its in-flight window ("pending publish
    # calls"): expected here, where the whole backlog is pushed at once.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    started = time.perf_counter()
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=100
    ) as client:
        pending: set[asyncio.Task[None]] = set()
        for message in messages:
            task = asyncio.create_task(
                client.publish(wire.topic_of(message), wire.encode(message), qos=1)
            )
            pending.add(task)
            if len(pending) >= 100:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    return time.perf_counter() - started


def health(url: str) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = httpx.get(f"{url}/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return answer


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


def drain(
    work: Path, port: int, influx_url: str, db: str, workers: int, total: int
) -> dict[str, Any]:
    group = "bench" if workers > 1 else None
    with contextlib.ExitStack() as stack:
        procs = []
        for w in range(workers):
            args = ["cloud", "run", "--port", "0", "--mqtt-port", str(port)]
            args += ["--influx-url", influx_url, "--influx-db", db]
            args += ["--db-url", f"sqlite:///{work / 'cloud.db'}", "--client-id", f"bench-{w}"]
            args += ["--log-level", "WARNING"]
            if group:
                args += ["--group", group]
            log = work / f"cloud-{w}.log"
            procs.append((stack.enter_context(child(args, log)), log))
        urls: list[str] = []
        for proc, log in procs:
            deadline = time.monotonic() + 30
            while True:
                match = re.search(r"cloud ready: API (http://\S+)", log.read_text("utf-8"))
                if match:
                    urls.append(match.group(1))
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"cloud did not start: {log.read_text('utf-8')[-2000:]}")
                time.sleep(0.05)
        start_points: int | None = None
        t_start = cpu_start = 0.0
        deadline = time.monotonic() + TIMEOUT_S
        done = 0
        while time.monotonic() < deadline:
            states = [health(url) for url in urls]
            done = sum(int(s.get("counters", {}).get("ingest_points", 0)) for s in states)
            now = time.perf_counter()
            if start_points is None and all(s.get("mqtt") for s in states):
                start_points, t_start = done, now
                cpu_start = sum(cpu_seconds(proc.pid) for proc, _log in procs)
            if start_points is not None and done >= total:
                break
            # Each poll costs the ingest an HTTP request and a database ping: poll slowly
            # until the end is near, then finely (the end is known to within 50 ms).
            time.sleep(0.05 if start_points is None or done >= 0.9 * total else 0.25)
        elapsed = time.perf_counter() - t_start
        cpu = sum(cpu_seconds(proc.pid) for proc, _log in procs) - cpu_start
        if done < total:
            raise RuntimeError(f"ingest stored {done} of {total} points in {TIMEOUT_S:.0f} s")
        assert start_points is not None
        rss = [peak_rss_mb(proc.pid) for proc, _log in procs]
        counters = [health(url).get("counters", {}) for url in urls]
    return {
        "points_per_s": (total - start_points) / elapsed,
        "elapsed_s": elapsed,
        "cpu_us_per_point": 1e6 * cpu / max(1, total - start_points),
        "cpu_cores": cpu / elapsed,
        "rss_mb": max(rss),
        "rss_mb_total": sum(rss),
        "dead_letters": sum(int(c.get("ingest_dead_letters", 0)) for c in counters),
        "duplicates": sum(int(c.get("ingest_duplicates", 0)) for c in counters),
        "points_per_worker": [int(c.get("ingest_points", 0)) for c in counters],
        "batches": sum(int(c.get("ingest_batches", 0)) for c in counters),
    }


RAW_REQUEST_LINES = 10_000
RAW_IN_FLIGHT = 2


async def raw_writes(
    url: str,
    db: str,
    lines: list[str],
    chunk: int = RAW_REQUEST_LINES,
    in_flight: int = RAW_IN_FLIGHT,
    compress: bool | None = None,
) -> float:
    """One tuned plain writer: points/s for ``lines`` written in requests of ``chunk``.

    Tuned on this machine (docs/benchmarks.md): 10,000-line requests, 2 in flight, and no
    gzip on loopback (compressing costs both sides CPU and saves nothing there); gzip
    level 1 to a remote server. The body of each request is built as it is sent, as any
    writer must.
    """
    if compress is None:
        compress = not is_loopback(url)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        gate = asyncio.Semaphore(in_flight)

        async def send(part: list[str]) -> None:
            async with gate:
                body = ("\n".join(part) + "\n").encode()
                headers = {}
                if compress:
                    body = gzip.compress(body, compresslevel=1)
                    headers["Content-Encoding"] = "gzip"
                r = await client.post(
                    "/write", params={"db": db, "precision": "ns"}, content=body, headers=headers
                )
                if r.status_code != 204:
                    raise RuntimeError(f"raw write refused: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(send(lines[i : i + chunk]) for i in range(0, len(lines), chunk)))
    return len(lines) / (time.perf_counter() - started)


def run(
    points: int = 300_000,
    batch: int = 500,
    gateways: int = 4,
    workers: int = 1,
    influx_url: str = "http://127.0.0.1:8086",
) -> dict[str, Any]:
    messages = make_messages(points, batch, gateways)
    lines = [line for message in messages for line in to_lines(message)]
    tag = uuid.uuid4().hex[:8]
    ingest_db, raw_db = f"sw_bench_ingest_{tag}", f"sw_bench_raw_{tag}"
    for db in (ingest_db, raw_db):
        influx_query(influx_url, f'CREATE DATABASE "{db}"')
    try:
        # The baseline runs before and after the ingest (into its own fresh database each
        # time, the same lines) and the mean counts: the machine is shared and noisy.
        raw_before = asyncio.run(raw_writes(influx_url, raw_db, lines))
        raw_stored = count_points(influx_url, raw_db)
        influx_query(influx_url, f'DROP DATABASE "{raw_db}"')
        influx_query(influx_url, f'CREATE DATABASE "{raw_db}"')
        print(f"ingest: raw writer {raw_before:.0f} points/s; ingest next", flush=True)
        with workdir() as work, mosquitto(work) as port:
            client_ids = [f"bench-{w}" for w in range(workers)]
            asyncio.run(register_sessions(port, client_ids, "bench" if workers > 1 else None))
            publish_s = asyncio.run(publish_backlog(port, messages))
            print(
                f"ingest: backlog of {points} points in {len(messages)} messages "
                f"published in {publish_s:.1f} s",
                flush=True,
            )
            result = drain(work, port, influx_url, ingest_db, workers, points)
        stored = count_points(influx_url, ingest_db)
        print(f"ingest: {result['points_per_s']:.0f} points/s; raw writer again", flush=True)
        raw_after = asyncio.run(raw_writes(influx_url, raw_db, lines))
        raw_stored = min(raw_stored, count_points(influx_url, raw_db))
        raw = (raw_before + raw_after) / 2
    finally:
        for db in (ingest_db, raw_db):
            with contextlib.suppress(httpx.HTTPError):
                influx_query(influx_url, f'DROP DATABASE "{db}"')
    return {
        "points_per_s": round(result["points_per_s"]),
        "raw_points_per_s": round(raw),
        "raw_before_points_per_s": round(raw_before),
        "raw_after_points_per_s": round(raw_after),
        "ratio": round(result["points_per_s"] / raw, 3),
        "rss_mb": round(result["rss_mb"], 1),
        "rss_mb_total": round(result["rss_mb_total"], 1),
        "points": points,
        "points_in_influx": stored,
        "raw_points_in_influx": raw_stored,
        "lost": points - stored,
        "dead_letters": result["dead_letters"],
        "duplicates": result["duplicates"],
        "workers": workers,
        "points_per_worker": result["points_per_worker"],
        "messages_per_batch": round(len(messages) / max(1, result["batches"]), 1),
        "batch": batch,
        "gateways": gateways,
        "elapsed_s": round(result["elapsed_s"], 2),
        "ingest_cpu_us_per_point": round(result["cpu_us_per_point"], 2),
        "ingest_cpu_cores": round(result["cpu_cores"], 2),
        "load_average": round(os.getloadavg()[0], 1),
    }
