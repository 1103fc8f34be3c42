"""Uplink writers: samples -> telemetry batches, alarm outbox -> durable buffer.

Both run as tasks off the safety path and call the blocking buffer through
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import wire
from device_drivers import Quality, Sample, SampleBlock
from edge.alarms import AlarmOutbox
from edge.config import LoadedSite
from edge.uplink.buffer import BufferStorageError, RateLimitedLog, StoreAndForwardBuffer

__all__ = ["AlarmWriter", "SampleQueue", "TelemetryBatcher"]

log = logging.getLogger("safewatch.edge.uplink")

_NO_META: Final = ("", "", "", "")
_QUALITY: Final[dict[Quality, wire.QualityName]] = {q: q.value for q in Quality}


class SampleQueue(asyncio.Queue[Sample]):
    """The bounded hand-off from the safety path to the uplink.

    ``put_nowait`` on a full queue still raises :class:`asyncio.QueueFull` (the
    engine counts it and never waits) but the drop is also counted here, so the
    batcher can turn it into a ``queue_full`` gap event: never a silent loss.

    A whole device read goes in as one item (:meth:`put_block`, a
    :class:`SampleBlock`); sizes and ``maxsize`` count samples, not items.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0
        self._points = 0

    def qsize(self) -> int:
        """Samples queued (a block counts as its length)."""
        return self._points

    def full(self) -> bool:
        limit: int = self._maxsize  # type: ignore[attr-defined]
        return 0 < limit <= self._points

    def _put(self, item: Sample) -> None:
        self._queue.append(item)  # type: ignore[attr-defined]
        self._points += len(item) if isinstance(item, SampleBlock) else 1

    def _get(self) -> Sample:
        item: Sample = self._queue.popleft()  # type: ignore[attr-defined]
        self._points -= len(item) if isinstance(item, SampleBlock) else 1
        return item

    def put_nowait(self, item: Sample) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            raise

    def put_block(self, block: SampleBlock) -> bool:
        """Queue one device read as a single item; False (and counted as dropped, every
        sample of it) when it does not fit whole."""
        limit: int = self._maxsize  # type: ignore[attr-defined]
        if 0 < limit < self._points + len(block):
            self.dropped += len(block)
            return False
        super().put_nowait(block)  # type: ignore[arg-type]
        return True

    def take_all(self) -> list[Sample | SampleBlock]:
        """Every queued item at once, without waiting (one call, not one per sample)."""
        items: deque[Sample | SampleBlock] = self._queue  # type: ignore[attr-defined]
        if not items:
            return []
        out = list(items)
        items.clear()
        self._points = 0
        # nobody awaits put() on this queue (the engine uses put_nowait), but keep the contract
        self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return out


class TelemetryBatcher:
    """Drains the sample queue into :class:`wire.TelemetryBatch` rows of the buffer.

    The queue is drained in bulk (no timer per sample). What was taken is
    stored ``interval_s`` after its oldest point, so a crash loses at most that
    much telemetry (and the next start marks it with a ``restart`` gap event),
    as batches of at most ``max_points``; sooner only once ``max_batches`` full
    batches are waiting (which bounds what is held in memory). Everything ready
    is stored in one buffer call (one transaction, one fsync): at 10,000 values
    a second that is four transactions a second, not one per full batch (twenty),
    and the transaction, its fsync and its thread round trip were a fifth of the
    gateway's CPU.
    Samples the queue had to drop (:class:`SampleQueue`) become a
    ``queue_full`` gap event.
    """

    def __init__(
        self,
        site: LoadedSite,
        buffer: StoreAndForwardBuffer,
        samples: asyncio.Queue[Sample],
        *,
        max_points: int = 500,
        max_batches: int = 8,
        interval_s: float = 0.25,
        tick_s: float = 0.02,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.samples = samples
        self.max_points = max_points
        self.max_batches = max(1, max_batches)
        self.interval_s = interval_s
        self.tick_s = min(tick_s, interval_s)
        self.on_stored = on_stored
        self._meta: dict[str, tuple[str, str, str, str]] = {}
        self._block_meta: dict[tuple[str, ...], list[tuple[str, str, str, str]]] = {}
        for _, tag in site.tags():
            self._meta[tag.name] = (
                site.profile_of(tag).kind,
                site.unit_of(tag),
                tag.location.area,
                tag.location.position,
            )
        self._batch: list[wire.Point] = []  # taken from the queue, not stored yet
        self._since = 0.0  # monotonic time of the oldest point in _batch
        self._drops_seen = 0
        self._last_drop_log = 0.0
        self._store_log = RateLimitedLog(log, logging.ERROR)
        self.batches = 0
        self.points_lost = 0  # could not be stored (disk/SQLite failure), each marked by a gap

    def describe(self, tag: str, kind: str, unit: str, area: str, position: str) -> None:
        """Metadata for a tag that is not a site tag (model outputs, kind ``forecast``)."""
        self._meta[tag] = (kind, unit, area, position)
        self._block_meta.clear()

    def point_of(self, sample: Sample) -> wire.Point:
        kind, unit, area, position = self._meta.get(sample.tag, _NO_META)
        return wire.Point(
            sample.tag,
            sample.device,
            kind,
            unit,
            area,
            position,
            sample.value,
            _QUALITY[sample.quality],
            sample.ts_ns,
            sample.reason,
        )

    def points_of_block(self, block: SampleBlock) -> list[wire.Point]:
        """One device read -> points; GOOD values straight from the columns."""
        metas = self._block_meta.get(block.tags)
        if metas is None:
            meta = self._meta
            metas = self._block_meta[block.tags] = [meta.get(t, _NO_META) for t in block.tags]
        device = block.device
        odd = block.odd
        point = wire.Point
        columns = zip(block.tags, metas, block.values, block.stamps, strict=True)
        if not odd:
            return [
                point(tag, device, m[0], m[1], m[2], m[3], value, "good", ts, None)
                for tag, m, value, ts in columns
            ]
        out: list[wire.Point] = []
        for i, (tag, m, value, ts) in enumerate(columns):
            sample = odd.get(i)
            if sample is None:
                out.append(point(tag, device, m[0], m[1], m[2], m[3], value, "good", ts, None))
            else:
                out.append(self.point_of(sample))
        return out

    def _extend(self, items: list[Sample | SampleBlock]) -> None:
        batch = self._batch
        point_of = self.point_of
        for item in items:
            if isinstance(item, SampleBlock):
                batch.extend(self.points_of_block(item))
            else:
                batch.append(point_of(item))

    def _take_ready(self) -> None:
        samples = self.samples
        taken: list[Sample | SampleBlock]
        if isinstance(samples, SampleQueue):
            taken = samples.take_all()
        else:
            taken = []
            while not samples.empty():
                taken.append(samples.get_nowait())
        self._extend(taken)

    async def run(self) -> None:
        while True:
            if not self._batch:
                self._extend([await self.samples.get()])
                self._since = time.monotonic()
            self._take_ready()
            full = len(self._batch) >= self.max_points * self.max_batches
            due = time.monotonic() - self._since >= self.interval_s
            if full or due:
                await self._store_all(partial=due)
                self._since = time.monotonic()  # a kept remainder just arrived
            else:
                await asyncio.sleep(self.tick_s)  # one timer per tick, not per sample

    async def flush(self) -> None:
        """Store the batch in progress and whatever is queued now (shutdown)."""
        self._take_ready()
        await self._store_all(partial=True)

    async def _store_all(self, *, partial: bool) -> None:
        size = self.max_points
        points, self._batch = self._batch, []
        chunks = [points[i : i + size] for i in range(0, len(points), size)]
        if chunks and not partial and len(chunks[-1]) < size:
            self._batch = chunks.pop()
        dropped = self._queue_drops()
        if not chunks and not dropped:
            return
        try:
            await asyncio.to_thread(
                self.buffer.append_batches, chunks, lost_points=dropped, lost_reason="queue_full"
            )
        except BufferStorageError as exc:
            lost = sum(len(c) for c in chunks)
            self.points_lost += lost
            self._store_log.note(lost, "telemetry points not stored (marked as gaps): %s", exc)
            return
        self.batches += len(chunks)
        if self.on_stored is not None:
            self.on_stored()

    def _queue_drops(self) -> int:
        dropped = getattr(self.samples, "dropped", 0)
        new = int(dropped) - self._drops_seen
        self._drops_seen = int(dropped)
        if new > 0:
            now = time.monotonic()
            if now - self._last_drop_log >= 10.0:
                self._last_drop_log = now
                log.warning(
                    "uplink queue full: %d sample(s) dropped before the buffer "
                    "(%d so far); each loss is recorded as a queue_full gap event",
                    new,
                    int(dropped),
                )
        return max(0, new)


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
        write = asyncio.ensure_future(asyncio.to_thread(self.buffer.append_alarms, events))
        try:
            await asyncio.shield(write)
        except BufferStorageError as exc:
            self.failures += 1
            self.outbox.requeue(events)
            log.error("%d alarm(s) not stored yet, will retry: %s", len(events), exc)
            return False
        except asyncio.CancelledError:
            # the thread finishes its write whatever happens to us: requeue only if it
            # failed, or the final flush would store the same alarms twice
            try:
                await write
            except BaseException:
                self.outbox.requeue(events)
            else:
                self.stored += len(events)
            raise
        self.stored += len(events)
        if self.on_stored is not None:
            self.on_stored()
        return True

    async def flush_at_shutdown(self, within_s: float) -> list[wire.AlarmEvent]:
        """Store every alarm in the outbox, retrying for up to ``within_s``.

        Returns the alarms that could still not be stored, each logged at
        CRITICAL; the caller must then fail loudly (non-zero exit), never drop
        them silently.
        """
        deadline = time.monotonic() + within_s
        while not await self.flush():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
        lost = self.outbox.drain()
        for event in lost:
            log.critical(
                "alarm NOT stored at shutdown (buffer unusable): %s %s %s -> %s at %d: %s",
                event.alarm_id,
                event.tag,
                event.previous,
                event.level,
                event.ts_ns,
                event.message,
            )
        return lost
