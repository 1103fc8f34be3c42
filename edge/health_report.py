"""Gateway health as telemetry: devices, buses and the uplink, every few seconds.

The control-room walls (``cloud.dashboards``) draw device and bus health and
the uplink backlog from InfluxDB, so the gateway sends them the way it sends
sensor values: as :class:`wire.Point` rows in its durable buffer, one point per
metric, kind ``gateway_health`` (the InfluxDB measurement). A point's
``device`` is the device, bus or ``uplink`` it describes, ``position`` the
metric name, ``tag`` ``<gateway>.<device>.<metric>`` (unique per site, so the
cloud's latest-value table keeps one row per metric; a hash of gateway and
device where that is longer than the wire allows), ``area`` the scope
(``device``, ``bus``, ``uplink``).

Metrics: device ``poll_latency_ms`` (last poll, all blocks), ``breaker_open``
(1 while the circuit breaker slows polling of a failing device),
``read_attempts``; bus ``bus_reads`` and ``bus_read_errors`` (cumulative);
uplink ``uplink_backlog`` (messages waiting in the buffer), ``buffer_bytes``,
``buffer_dropped`` (telemetry dropped for space since start).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import wire
from edge.uplink.buffer import BufferStorageError, StoreAndForwardBuffer

__all__ = ["HEALTH_KIND", "HealthReporter", "HealthSnapshot", "health_points"]

log = logging.getLogger("safewatch.edge.health")

HEALTH_KIND = "gateway_health"

_UNITS = {"poll_latency_ms": "ms", "buffer_bytes": "bytes"}


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Metric values by scope and name: ``devices[device][metric]``, ..."""

    devices: dict[str, dict[str, float]] = field(default_factory=dict)
    buses: dict[str, dict[str, float]] = field(default_factory=dict)
    uplink: dict[str, float] = field(default_factory=dict)


def _tag(gateway: str, name: str, metric: str) -> str:
    tag = f"{gateway}.{name}.{metric}"
    if len(tag) <= wire.ID_MAX_LEN:
        return tag
    # long ids: still unique and within the wire's identifier limit
    digest = hashlib.sha256(f"{gateway}.{name}".encode()).hexdigest()[:16]
    return f"h{digest}.{metric}"[: wire.ID_MAX_LEN]


def health_points(gateway: str, snapshot: HealthSnapshot, ts_ns: int) -> list[wire.Point]:
    """One good-quality point per metric (pure)."""
    scoped = [
        *(("device", d, m) for d, m in snapshot.devices.items()),
        *(("bus", b, m) for b, m in snapshot.buses.items()),
        ("uplink", "uplink", snapshot.uplink),
    ]
    return [
        wire.Point(
            tag=_tag(gateway, name, metric),
            device=name,
            kind=HEALTH_KIND,
            unit=_UNITS.get(metric, ""),
            area=scope,
            position=metric,
            value=float(value),
            quality="good",
            ts_ns=ts_ns,
        )
        for scope, name, metrics in scoped
        for metric, value in metrics.items()
    ]


class HealthReporter:
    """Every ``interval_s``, stores the gateway's health points in the buffer.

    ``snapshot`` runs in the event loop (it reads poller state); buffer
    statistics are read in a worker thread. A storage failure is logged and
    counted; health is never worth blocking for.
    """

    def __init__(
        self,
        gateway: str,
        buffer: StoreAndForwardBuffer,
        snapshot: Callable[[], HealthSnapshot],
        *,
        interval_s: float = 10.0,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.buffer = buffer
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.on_stored = on_stored
        self.reports = 0
        self.failures = 0

    async def report(self) -> None:
        snap = self.snapshot()
        try:
            stats = await asyncio.to_thread(self.buffer.stats)
            uplink = {
                "uplink_backlog": float(stats.rows),
                "buffer_bytes": float(stats.bytes),
                "buffer_dropped": float(stats.dropped),
                **snap.uplink,
            }
            points = health_points(
                self.gateway,
                HealthSnapshot(snap.devices, snap.buses, uplink),
                time.time_ns(),
            )
            await asyncio.to_thread(self.buffer.append_telemetry, points)
        except BufferStorageError as exc:
            self.failures += 1
            log.warning("health report not stored: %s", exc)
            return
        self.reports += 1
        if self.on_stored is not None:
            self.on_stored()

    async def run(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(self.interval_s)
