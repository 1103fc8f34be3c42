"""MQTT ingest: wire messages from the gateways into InfluxDB and the store.

Delivery
--------
The ingest holds a persistent MQTT v5 session (stable client id, clean start
off, session expiry): while it is away the broker queues QoS 1 messages for it.
It tells the broker how many unacknowledged messages it takes at once (MQTT v5
Receive Maximum, ``receive_maximum``): that bounds its memory in a flood.

Messages are handled in batches: whatever has arrived meanwhile, up to
``max_batch_bytes`` of payload. For each batch, in this order:

1. decode and check every message; a message that cannot be used (bad topic,
   malformed, topic and payload disagree, timestamp outside the accept window)
   becomes a *dead letter*, with its payload and the reason;
2. drop what was already processed: dedup on (gateway, seq) in the store;
3. write the new points to InfluxDB; when InfluxDB cannot be reached, the lines
   go to the *spool* instead (a table of the store) and a drainer writes them
   when it returns; lines InfluxDB refuses are counted as refused, from its answer;
4. commit, in ONE transaction, the seq marks, alarms, gaps, statuses, latest
   values, dead letters and spooled lines;
5. only then PUBACK every message of the batch, in arrival order.

A failure of the store (down, locked: :class:`StoreError`) is the opposite of a
bad message: nothing is acked, the batch is retried with backoff, and if the
process dies meanwhile the broker redelivers. Points are idempotent in InfluxDB
(same series and timestamp overwrite), so a batch written twice is stored once.

Subscriptions
-------------
By default the ingest subscribes plainly to ``safewatch/v1/+/+/<kind>``. With a
``group``, telemetry, alarms and events use a shared subscription
(``$share/<group>/...``) so several workers split the load - but Mosquitto 2.0
does not restore shared subscriptions after a broker restart, so messages
published between a broker restart and the workers' return are lost there;
a single worker with a plain subscription keeps them. Status is always a
plain subscription (brokers do not deliver retained messages to shared ones).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import wire
from cloud.storage import (
    BatchCommit,
    DeadLetter,
    DeadLetterRecord,
    InfluxUnavailable,
    LineBuilder,
    PointWriter,
    Store,
    StoreError,
    StoreRejected,
)
from wire.backoff import Backoff

__all__ = ["Incoming", "IngestService", "TimeWindow"]

log = logging.getLogger(__name__)

_SHARED_KINDS: Final = ("telemetry", "alarms", "events")
_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Timestamps the ingest accepts, around the time a message is received.

    ``past_s`` covers the longest outage a gateway's buffer bridges (its backlog
    arrives late, but arrives); ``future_s`` tolerates clock skew. ``None``: no
    limit on that side (the schema's bounds still hold).
    """

    past_s: float | None = 30 * 86_400.0
    future_s: float | None = 300.0

    def refuses(self, ts_ns: int, received_ns: int) -> str | None:
        if self.past_s is not None and ts_ns < received_ns - int(self.past_s * _NS):
            return f"ts_ns {ts_ns} is more than {self.past_s:g} s before receipt ({received_ns})"
        if self.future_s is not None and ts_ns > received_ns + int(self.future_s * _NS):
            return f"ts_ns {ts_ns} is more than {self.future_s:g} s after receipt ({received_ns})"
        return None


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received: topic, raw payload, receive time (Unix ns).

    ``replaces`` is the dead letter a replay consumes.
    """

    topic: str
    payload: Any
    received_ns: int
    replaces: int | None = None


class _BatchWork:
    """What one batch turns into, before it is made durable."""

    def __init__(self) -> None:
        self.commit = BatchCommit()
        self.lines: list[str] = []
        # site -> tag -> (gateway, newest point of the batch)
        self.latest: dict[str, dict[str, tuple[str, wire.Point]]] = {}
        self.counts: collections.Counter[str] = collections.Counter()


class IngestService:
    """Subscribes to every gateway's topics and stores what arrives.

    ``connected`` says whether the broker session is up; ``counters()`` gives
    received/processed counts, ``dead_letters`` and ``dead_<reason>`` for every
    message that could not be used, ``spooled`` lines and ``store_retries``.
    """

    def __init__(
        self,
        mqtt_host: str,
        mqtt_port: int,
        store: Store,
        writer: PointWriter,
        *,
        group: str | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 86_400,
        connect_timeout_s: float = 10.0,
        backoff_cap_s: float = 30.0,
        receive_maximum: int = 256,
        max_batch_bytes: int = 4 * 1024 * 1024,
        ts_window: TimeWindow | None = None,
        spool_drain_points: int = 50_000,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        pipeline_depth: int = 3,
    ) -> None:
        if not 1 <= receive_maximum <= 65_535:
            raise ValueError("receive_maximum must be in 1..65535 (MQTT v5)")
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.store = store
        self.writer = writer
        self.group = group
        # A stable id and a persistent session: while the ingest is away (restart,
        # network, broker restart with persistence) the broker queues QoS 1 messages
        # for it instead of dropping them. Several workers on one host need their
        # own ids (--client-id).
        # The default id carries a suffix derived from the broker password (when there is
        # one): stable, so the session survives restarts, but not guessable, so nobody
        # can connect with it and take the session (and its queued messages) over.
        self.client_id = client_id or wire.secret_client_id(
            f"{group or 'safewatch-ingest'}-{socket.gethostname()}", password
        )
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.session_expiry_s = session_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.receive_maximum = receive_maximum
        self.max_batch_bytes = max_batch_bytes
        self.ts_window = TimeWindow() if ts_window is None else ts_window
        self.spool_drain_points = spool_drain_points
        self.pipeline_depth = pipeline_depth
        # A batch takes at most its share of the receive window, so that the next
        # batches arrive (and are decoded) while it waits for InfluxDB.
        self._max_batch_messages = max(1, receive_maximum // (pipeline_depth + 1))
        # (gateway, seq) of batches being stored right now: a copy in a later batch is
        # a duplicate even before the first one is committed.
        self._in_flight: set[tuple[str, int]] = set()
        self._connected = False
        self._counters: collections.Counter[str] = collections.Counter()
        self._lines = LineBuilder()
        # True while InfluxDB is known to be down: batches go straight to the spool
        # until the drainer has written to it again.
        self._influx_down = False
        self._spool_wakeup = asyncio.Event()
        self.spool_pending = 0
        # Called (in a worker thread) with each batch's newly stored alarm events after
        # the batch is durable: automatic hazards and the like. Failures are logged only.
        self.alarm_handlers: list[Callable[[Sequence[wire.AlarmEvent]], object]] = []
        # Called on the loop (so: quick, no I/O) with each batch's commit once it is
        # durable: the risk heatmap notes what changed. Failures are logged only.
        self.commit_listeners: list[Callable[[BatchCommit], object]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter (for the transports that feed :meth:`process`)."""
        self._counters[name] += n

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
        props.SessionExpiryInterval = self.session_expiry_s
        # The broker sends at most this many unacknowledged QoS 1 messages: the
        # receive window that bounds what the ingest holds in memory.
        props.ReceiveMaximum = self.receive_maximum
        return props

    def subscriptions(self) -> list[str]:
        prefix = f"$share/{self.group}/" if self.group else ""
        shared = [f"{prefix}{wire.TOPIC_ROOT}/+/+/{kind}" for kind in _SHARED_KINDS]
        return [*shared, f"{wire.TOPIC_ROOT}/+/+/status"]

    # -- the loops ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve MQTT and drain the spool, forever (until cancelled)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.drain_spool_forever(), name="influx-spool-drainer")
            await self._serve_mqtt_forever()

    async def _serve_mqtt_forever(self) -> None:
        """Connect, subscribe, handle batches; reconnect forever with capped jittered backoff."""
        backoff = Backoff(initial=0.5, cap=self.backoff_cap_s)
        while True:
            client = aiomqtt.Client(
                self.mqtt_host,
                self.mqtt_port,
                identifier=self.client_id,
                username=self.username,
                password=self.password,
                tls_context=self.tls_context,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=self._connect_properties(),
                timeout=self.connect_timeout_s,
            )
            ack = _manual_acks(client)
            problem: object = "session ended"
            try:
                async with client:
                    options = SubscribeOptions(qos=1)
                    async with asyncio.timeout(self.connect_timeout_s):
                        await client.subscribe([(t, options) for t in self.subscriptions()])
                    self._connected = True
                    self._counters["connects"] += 1
                    backoff.reset()
                    log.info("ingest subscribed on %s:%d", self.mqtt_host, self.mqtt_port)
                    await self._serve(client, ack)
            except* (aiomqtt.MqttError, TimeoutError) as group:
                problem = group.exceptions[0]
            finally:
                self._connected = False
            self._counters["disconnects"] += 1
            delay = backoff.next_delay()
            log.warning(
                "ingest: broker %s:%d unavailable (%s); retry in %.1fs",
                self.mqtt_host,
                self.mqtt_port,
                problem,
                delay,
            )
            await asyncio.sleep(delay)

    async def _serve(self, client: aiomqtt.Client, ack: Callable[[aiomqtt.Message], None]) -> None:
        """Take batches and store them, ``pipeline_depth`` at a time; ack each batch in order.

        While one batch waits for InfluxDB the next one is decoded and sent: the
        ingest's CPU and InfluxDB's work overlap. Acks still go out in arrival
        order, each batch only after it (and every batch before it) is durable.
        """
        messages = client.messages
        in_flight: asyncio.Queue[tuple[list[aiomqtt.Message], asyncio.Task[None]]]
        in_flight = asyncio.Queue(maxsize=self.pipeline_depth)

        async def ack_in_order() -> None:
            while True:
                batch, stored = await in_flight.get()
                await stored
                for message in batch:  # PUBACK in arrival order, only now
                    ack(message)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(ack_in_order(), name="mqtt-ack")
            while True:
                first = await anext(messages)
                batch = [first]
                size = _size(first.payload)
                # Everything that arrived while earlier batches were stored, up to a
                # bound: batches grow with the load by themselves, no timer needed.
                while (
                    len(messages)
                    and size < self.max_batch_bytes
                    and len(batch) < self._max_batch_messages
                ):
                    message = await anext(messages)
                    batch.append(message)
                    size += _size(message.payload)
                received = time.time_ns()
                self._counters["received"] += len(batch)
                self._counters["batches"] += 1
                items = [Incoming(str(m.topic), m.payload, received) for m in batch]
                stored = tg.create_task(self.process_until_durable(items), name="ingest-batch")
                await in_flight.put((batch, stored))

    async def process_until_durable(self, items: Sequence[Incoming]) -> None:
        """Retry a batch with backoff while the store fails; nothing is acked meanwhile."""
        backoff = Backoff(initial=0.2, cap=min(self.backoff_cap_s, 5.0))
        while True:
            try:
                await self.process(items)
            except StoreError as exc:
                self._counters["store_retries"] += 1
                delay = backoff.next_delay()
                log.warning(
                    "ingest: store failed on a batch of %d messages (%s); not acked, "
                    "retry in %.1fs",
                    len(items),
                    exc,
                    delay,
                )
            except Exception:  # a bug: keep serving, never ack what was not stored
                self._counters["batch_errors"] += 1
                delay = backoff.next_delay()
                log.exception(
                    "ingest: a batch of %d messages failed; retry in %.1fs", len(items), delay
                )
            else:
                return
            await asyncio.sleep(delay)

    # -- one batch ------------------------------------------------------------------------

    async def handle(self, topic: str, payload: object) -> None:
        """One message as a batch of one; raises :class:`StoreError` (see :meth:`process`)."""
        self._counters["received"] += 1
        await self.process([Incoming(topic, payload, time.time_ns())])

    async def process(self, items: Sequence[Incoming]) -> None:
        """Make a batch durable: dead letters, dedup, InfluxDB or spool, one commit.

        Never raises for bad input. Raises :class:`StoreError` when the store
        fails: then nothing of the batch is stored and it must not be acked.
        """
        try:
            await self._process(items)
        except StoreRejected as exc:
            # The database refused something in the batch itself; find it by trying
            # the messages one at a time, and dead-letter the one it refuses alone.
            if len(items) > 1:
                for item in items:
                    await self.process([item])
                return
            (item,) = items
            work = _BatchWork()
            self._dead(work, item, "store_rejected", exc)
            await asyncio.to_thread(self.store.commit_batch, work.commit)
            self._counters.update(work.counts)

    async def _process(self, items: Sequence[Incoming]) -> None:
        work = _BatchWork()
        try:
            await self._store_batch(work, items)
        finally:
            for gateway, _site, seq in work.commit.seqs:
                self._in_flight.discard((gateway, seq))

    async def _store_batch(self, work: _BatchWork, items: Sequence[Incoming]) -> None:
        decoded: list[tuple[Incoming, wire.Message]] = []
        for item in items:
            message = self._check(work, item)
            if message is not None:
                decoded.append((item, message))
            if item.replaces is not None:
                work.commit.replaced.append(item.replaces)

        sequenced = [
            (m.gateway, m.seq) for _i, m in decoded if not isinstance(m, wire.GatewayStatus)
        ]
        seen = await asyncio.to_thread(self.store.seen_many, sequenced) if sequenced else set()
        for item, message in decoded:
            try:
                self._route(work, message, seen)
            except Exception as exc:  # a bug on one message must not stop the batch
                log.exception("ingest failed on a message from %r", item.topic)
                self._dead(work, item, "internal_error", exc)

        if work.lines:
            await self._write_points(work)
        work.commit.latest = [
            {
                "site": site,
                "tag": tag,
                "device": p.device,
                "gateway": gateway,
                "kind": p.kind,
                "unit": p.unit,
                "area": p.area,
                "position": p.position,
                "value": p.value,
                "quality": p.quality,
                "reason": p.reason,
                "ts_ns": p.ts_ns,
            }
            for site, tags in work.latest.items()
            for tag, (gateway, p) in tags.items()
        ]
        new_alarms = await asyncio.to_thread(self.store.commit_batch, work.commit)
        duplicates = new_alarms.count(False)
        work.counts["alarms"] += len(new_alarms) - duplicates
        work.counts["duplicates"] += duplicates
        self._counters.update(work.counts)
        stored = [a for a, new in zip(work.commit.alarms, new_alarms, strict=False) if new]
        for listener in self.commit_listeners:
            try:
                listener(work.commit)
            except Exception:
                self._counters["commit_listener_errors"] += 1
                log.exception("commit listener %r failed", listener)
        for handler in self.alarm_handlers if stored else ():
            try:
                await asyncio.to_thread(handler, stored)
            except Exception:
                self._counters["alarm_handler_errors"] += 1
                log.exception("alarm handler %r failed", handler)
        if work.commit.spool:
            self.spool_pending += len(work.commit.spool)
            self._spool_wakeup.set()

    def _dead(self, work: _BatchWork, item: Incoming, reason: str, detail: object) -> None:
        payload = item.payload
        if not isinstance(payload, bytes | bytearray):
            payload = repr(payload).encode("utf-8", "replace")
        work.commit.dead_letters.append(
            DeadLetter(item.topic, bytes(payload), reason, str(detail)[:2000])
        )
        work.counts["dead_letters"] += 1
        work.counts[f"dead_{reason}"] += 1
        level = logging.ERROR if "/alarms" in item.topic else logging.WARNING
        log.log(level, "ingest dead-lettered a message on %r (%s): %s", item.topic, reason, detail)

    def _check(self, work: _BatchWork, item: Incoming) -> wire.Message | None:
        """Decode and check one message; a dead letter (and None) when it cannot be used."""
        try:
            wire.parse_topic(item.topic)
        except wire.WireError as exc:
            self._dead(work, item, "bad_topic", exc)
            return None
        try:
            message = wire.decode(item.payload)
        except wire.WireError as exc:
            self._dead(work, item, "malformed", exc)
            return None
        try:
            expected = wire.topic_of(message)
        except wire.WireError as exc:
            self._dead(work, item, "malformed", exc)
            return None
        if expected != item.topic:
            # The topic names who sent it (and the broker's ACL checks the topic):
            # a payload claiming another site or gateway is refused.
            self._dead(work, item, "topic_mismatch", f"the payload belongs on {expected!r}")
            return None
        refused = self._refused_time(message, item.received_ns)
        if refused is not None:
            self._dead(work, item, "ts_out_of_window", refused)
            return None
        return message

    def _refused_time(self, message: wire.Message, received_ns: int) -> str | None:
        window = self.ts_window
        if isinstance(message, wire.TelemetryBatch):
            if not message.points:
                return None
            stamps = [p.ts_ns for p in message.points]
            # Only the extremes can fall outside; name the first offending point.
            if window.refuses(min(stamps), received_ns) or window.refuses(max(stamps), received_ns):
                for point in message.points:
                    why = window.refuses(point.ts_ns, received_ns)
                    if why is not None:
                        return f"point {point.tag}: {why}"
            return None
        return window.refuses(message.ts_ns, received_ns)

    def _route(self, work: _BatchWork, message: wire.Message, seen: set[tuple[str, int]]) -> None:
        if isinstance(message, wire.GatewayStatus):
            work.commit.statuses.append(message)
            work.counts["status"] += 1
            return
        key = (message.gateway, message.seq)
        if key in seen or key in self._in_flight:
            work.counts["duplicates"] += 1
            return
        seen.add(key)  # a second copy in the same batch is a duplicate too
        self._in_flight.add(key)
        work.commit.seqs.append((message.gateway, message.site, message.seq))
        if isinstance(message, wire.TelemetryBatch):
            work.lines.extend(self._lines.lines(message))
            self._keep_latest(work, message)
            work.counts["telemetry"] += 1
            work.counts["points"] += len(message.points)
        elif isinstance(message, wire.AlarmEvent):
            work.commit.alarms.append(message)
        else:
            work.commit.gaps.append(message)
            work.counts["gaps"] += 1

    @staticmethod
    def _keep_latest(work: _BatchWork, batch: wire.TelemetryBatch) -> None:
        """Remember the newest point per (site, tag) of the batch; rows are built once, later."""
        latest = work.latest.setdefault(batch.site, {})
        held_of = latest.get
        gateway = batch.gateway
        for p in batch.points:
            held = held_of(p.tag)
            if held is None or p.ts_ns > held[1].ts_ns:
                latest[p.tag] = (gateway, p)

    async def _write_points(self, work: _BatchWork) -> None:
        """To InfluxDB now, or into the spool (committed with the batch) when it is down."""
        if not self._influx_down:
            try:
                result = await self.writer.write(work.lines)
            except InfluxUnavailable as exc:
                self._influx_down = True
                log.warning("InfluxDB unavailable (%s): spooling to the store", exc)
            else:
                work.counts["influx_written"] += result.written
                work.counts["influx_refused"] += result.refused
                return
        work.commit.spool = work.lines
        work.counts["spooled"] += len(work.lines)

    # -- the spool ------------------------------------------------------------------------

    async def drain_spool_once(self) -> int:
        """Write the oldest spooled lines to InfluxDB and forget them; how many were sent.

        Raises :class:`InfluxUnavailable` (the lines stay spooled) or :class:`StoreError`.
        """
        chunks = await asyncio.to_thread(self.store.spool_take, self.spool_drain_points)
        if not chunks:
            self.spool_pending = 0
            return 0
        lines = [line for chunk in chunks for line in chunk.lines]
        result = await self.writer.write(lines)
        self._influx_down = False
        await asyncio.to_thread(self.store.spool_delete, [chunk.id for chunk in chunks])
        self._counters["unspooled"] += len(lines)
        self._counters["influx_written"] += result.written
        self._counters["influx_refused"] += result.refused
        self.spool_pending = max(0, self.spool_pending - len(lines))
        return len(lines)

    async def drain_spool_forever(self) -> None:
        """Write the spool to InfluxDB whenever it holds lines; forever (run by :meth:`run`)."""
        backoff = Backoff(initial=0.5, cap=min(self.backoff_cap_s, 5.0))
        with contextlib.suppress(StoreError):
            self.spool_pending = await asyncio.to_thread(self.store.spool_points)
        while True:
            try:
                sent = await self.drain_spool_once()
                if not sent and self._influx_down and await self.writer.ping():
                    self._influx_down = False
            except (InfluxUnavailable, StoreError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "spool: %d lines wait for InfluxDB (%s); retry in %.1fs",
                    self.spool_pending,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not sent:
                self._spool_wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._spool_wakeup.wait()

    # -- dead letters ---------------------------------------------------------------------

    async def replay(self, records: Sequence[DeadLetterRecord]) -> int:
        """Feed dead letters through the handler again; how many are dead letters again.

        Each replayed dead letter is removed in the same transaction that stores
        its message - or keeps it, under a new id and the new reason.
        """
        before = self._counters["dead_letters"]
        now = time.time_ns()
        items = [Incoming(r.topic, r.payload, now, replaces=r.id) for r in records]
        if items:
            await self.process(items)
        return self._counters["dead_letters"] - before


def _size(payload: object) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray) else 0


def _manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], None]:
    """Acknowledge QoS 1 messages only after they were made durable (or dead-lettered).

    paho acknowledges on receipt by default, so a crash between receipt and
    storage would lose the message: the broker already holds its PUBACK.
    aiomqtt 2.5 has no public switch for this yet (aiomqtt issue #345), so
    reach the wrapped paho client, which has one; set before connecting, so
    messages queued in the session are covered too. Without it we fall back
    to paho's acknowledgement on receipt, and say so.
    """
    paho = getattr(client, "_client", None)
    if paho is None or not hasattr(paho, "manual_ack_set") or not hasattr(paho, "ack"):
        log.warning("ingest: MQTT client has no manual acknowledgement; acking on receipt")
        return lambda message: None
    paho.manual_ack_set(True)

    def ack(message: aiomqtt.Message) -> None:
        if message.qos > 0:
            paho.ack(message.mid, message.qos)

    return ack
