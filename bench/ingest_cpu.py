"""ingest-cpu: what one cloud ingest process costs per point, with no broker and no InfluxDB.

``safewatch bench ingest`` measures end to end, and on a small shared machine that number is
mostly InfluxDB's (it shares the cores). This one isolates the ingest's own work:

1. The same sequence-numbered telemetry as ``bench ingest`` (``--points`` points in
   messages of ``--batch``, several gateways), encoded once.
2. Stage costs, CPU time per point: ``wire.decode`` (typed, every bound checked), line
   protocol (``LineBuilder``), and the join + gzip (level 1) of the write request body
   (what a remote InfluxDB costs; to one on the same machine the writer sends it plain).
3. The whole :meth:`IngestService.process` path - topic and time checks, dedup against
   SQLite, line protocol, latest values, one SQLite commit per batch of messages (64: what
   a busy ingest takes at once, its receive window over its pipeline depth + 1) - with a
   writer that answers at once (as if InfluxDB took everything instantly): points/s on the
   wall clock and CPU microseconds per point (all threads of this process).

The last output line is JSON: points_per_s, cpu_us_per_point, decode_us_per_point, ...
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Sequence
from typing import Any

import wire
from bench._harness import workdir
from bench.ingest import make_messages
from cloud import IngestService
from cloud.ingest import Incoming, TimeWindow
from cloud.storage import Store
from cloud.storage.influx import LineBuilder, WriteResult

REQUEST_LINES = 10_000  # as the InfluxDB writer's requests


class _InstantWriter:
    """A point writer that takes every line at once (InfluxDB's part set to zero)."""

    reachable = True

    def counters(self) -> dict[str, int]:
        return {}

    async def write(self, lines: Sequence[str]) -> WriteResult:
        return WriteResult(len(lines))

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def ensure_database(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _us_per_point(seconds: float, points: int) -> float:
    return round(1e6 * seconds / points, 2)


def run(
    points: int = 300_000, batch: int = 500, gateways: int = 4, per_call: int = 64
) -> dict[str, Any]:
    messages = make_messages(points, batch, gateways)
    payloads = [(wire.topic_of(m), wire.encode(m)) for m in messages]

    t0 = time.process_time()
    decoded = [wire.decode(p) for _t, p in payloads]
    t1 = time.process_time()
    builder = LineBuilder()
    lines = [
        line for m in decoded if isinstance(m, wire.TelemetryBatch) for line in builder.lines(m)
    ]
    t2 = time.process_time()
    for i in range(0, len(lines), REQUEST_LINES):
        gzip.compress(("\n".join(lines[i : i + REQUEST_LINES]) + "\n").encode(), compresslevel=1)
    t3 = time.process_time()

    with workdir() as work:
        store = Store(f"sqlite:///{work / 'cloud.db'}")
        store.create_all()
        ingest = IngestService(
            "127.0.0.1", 1, store, _InstantWriter(), ts_window=TimeWindow(None, None)
        )

        async def feed() -> tuple[float, float]:
            now = time.time_ns()
            items = [Incoming(topic, payload, now) for topic, payload in payloads]
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(0, len(items), per_call):
                await ingest.process(items[i : i + per_call])
            return time.process_time() - cpu, time.perf_counter() - wall

        cpu_s, wall_s = asyncio.run(feed())
        stored = ingest.counters().get("points", 0)
        store.close()
    return {
        "benchmark": "ingest-cpu",
        "points_per_s": round(points / wall_s),
        "cpu_us_per_point": _us_per_point(cpu_s, points),
        "decode_us_per_point": _us_per_point(t1 - t0, points),
        "lines_us_per_point": _us_per_point(t2 - t1, points),
        "gzip_us_per_point": _us_per_point(t3 - t2, points),
        "points": points,
        "points_processed": stored,
        "batch": batch,
        "messages_per_call": per_call,
    }
