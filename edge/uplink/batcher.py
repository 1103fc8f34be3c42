"""Uplink writers: samples -> telemetry batches, alarm outbox -> durable buffer.

Both run as tasks off the safety path and call the blocking buffer through
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import wire
from device_drivers import Sample
from edge.alarms import AlarmOutbox
from edge.config import LoadedSite
from edge.uplink.buffer import BufferStorageError, StoreAndForwardBuffer

__all__ = ["AlarmWriter", "TelemetryBatcher"]

log = logging.getLogger("safewatch.edge.uplink")


class TelemetryBatcher:
    """Drains the sample queue into :class:`wire.TelemetryBatch` rows of the buffer.

    A batch is stored when it has ``max_points`` points or ``interval_s`` after
    its first point, whichever comes first.
    """

    def __init__(
        self,
        site: LoadedSite,
        buffer: StoreAndForwardBuffer,
        samples: asyncio.Queue[Sample],
        *,
        max_points: int = 500,
        interval_s: float = 1.0,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.samples = samples
        self.max_points = max_points
        self.interval_s = interval_s
        self.on_stored = on_stored
        self._meta: dict[str, tuple[str, str, str, str]] = {}
        for _, tag in site.tags():
            self._meta[tag.name] = (
                site.profile_of(tag).kind,
                site.unit_of(tag),
                tag.location.area,
                tag.location.position,
            )
        self._batch: list[wire.Point] = []  # taken from the queue, not stored yet
        self.batches = 0
        self.points_lost = 0  # could not be stored (disk/SQLite failure)

    def point_of(self, sample: Sample) -> wire.Point:
        kind, unit, area, position = self._meta.get(sample.tag, ("", "", "", ""))
        return wire.Point(
            tag=sample.tag,
            device=sample.device,
            kind=kind,
            unit=unit,
            area=area,
            position=position,
            value=sample.value,
            quality=sample.quality.value,
            ts_ns=sample.ts_ns,
            reason=sample.reason,
        )

    async def run(self) -> None:
        while True:
            self._batch.append(self.point_of(await self.samples.get()))
            deadline = time.monotonic() + self.interval_s
            while len(self._batch) < self.max_points:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        sample = await self.samples.get()
                except TimeoutError:
                    break
                self._batch.append(self.point_of(sample))
            points, self._batch = self._batch, []
            await self._store(points)

    async def flush(self) -> None:
        """Store the batch in progress and whatever is queued now (shutdown)."""
        while self._batch or not self.samples.empty():
            while len(self._batch) < self.max_points and not self.samples.empty():
                self._batch.append(self.point_of(self.samples.get_nowait()))
            points, self._batch = self._batch, []
            await self._store(points)

    async def _store(self, points: list[wire.Point]) -> None:
        try:
            await asyncio.to_thread(self.buffer.append_telemetry, points)
        except BufferStorageError as exc:
            self.points_lost += len(points)
            log.error("telemetry batch of %d point(s) not stored: %s", len(points), exc)
            return
        self.batches += 1
        if self.on_stored is not None:
            self.on_stored()


class AlarmWriter:
    """Moves alarm events from the outbox into the durable buffer, in order.

    A storage failure keeps the events in the outbox and retries; alarms are
    never dropped.
    """

    def __init__(
        self,
        buffer: StoreAndForwardBuffer,
        outbox: AlarmOutbox,
        *,
        retry_s: float = 1.0,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.outbox = outbox
        self.retry_s = retry_s
        self.on_stored = on_stored
        self.stored = 0
        self.failures = 0

    async def run(self) -> None:
        while True:
            await self.outbox.wait()
            if not await self.flush():
                await asyncio.sleep(self.retry_s)

    async def flush(self) -> bool:
        """Store everything in the outbox now; False if the buffer failed."""
        events = self.outbox.drain()
        if not events:
            return True
        try:
            await asyncio.to_thread(self.buffer.append_alarms, events)
        except BufferStorageError as exc:
            self.failures += 1
            self.outbox.requeue(events)
            log.error("%d alarm(s) not stored yet, will retry: %s", len(events), exc)
            return False
        except BaseException:
            self.outbox.requeue(events)  # cancelled mid-write: keep them for the final flush
            raise
        self.stored += len(events)
        if self.on_stored is not None:
            self.on_stored()
        return True
