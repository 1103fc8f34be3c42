"""MQTT publisher: durable buffer -> broker, QoS 1, delete only after PUBACK.

The broker holds a retained :class:`wire.GatewayStatus`: ``online`` published
on every connect, ``offline`` as the last will (unclean loss) and published
explicitly on a clean shutdown.

Publishing is pipelined: up to ``window`` QoS 1 messages are in flight at once
(each aiomqtt ``publish`` returns after its PUBACK; paho's in-flight limit is
set to the same window). PUBACKed sequence numbers are acknowledged in the
buffer in batches, in the same thread round trip that reads the next messages
(:meth:`StoreAndForwardBuffer.exchange`); a PUBACK asks for that round trip only
when it can publish more (a backlog to refill the window from) or when it is the
last of the window, not once per PUBACK. Order within a session: alarms
first, then live telemetry (stored after the session began), then the backlog
oldest first, at most ``drain_points_per_s`` points per second (``None``: as
fast as the broker takes it). A resend after a lost PUBACK is possible; the
cloud drops duplicates by (gateway, seq).

The connection is retried forever with the shared backoff policy (:mod:`wire.backoff`);
every network call runs under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Final

import aiomqtt

import wire
from edge.uplink.buffer import (
    BufferStorageError,
    PendingMessage,
    ReadCursor,
    StoreAndForwardBuffer,
)
from wire.backoff import Backoff

__all__ = ["MqttPublisher"]

log = logging.getLogger("safewatch.edge.publisher")

_TOPIC_KIND: Final[dict[str, wire.TopicKind]] = {
    "telemetry": "telemetry",
    "alarm": "alarms",
    "gap": "events",
}


class MqttPublisher:
    """Forwards the buffer to one MQTT broker until stopped."""

    def __init__(
        self,
        buffer: StoreAndForwardBuffer,
        *,
        site: str,
        gateway: str,
        host: str,
        port: int,
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        op_timeout_s: float = 5.0,
        batch: int = 100,
        window: int = 64,
        drain_points_per_s: float | None = None,
        idle_poll_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        version: str = "",
        tls_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
    ) -> None:
        self.buffer = buffer
        # TLS to the broker (wire.client_tls_context) and a client id that cannot be
        # guessed (wire.secret_client_id): nobody else can take over this session.
        self.tls_context = tls_context
        self.client_id = client_id or f"safewatch-{site}-{gateway}"
        self.site = site
        self.gateway = gateway
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.username = username
        self.password = password
        self.op_timeout_s = op_timeout_s
        self.batch = batch
        self.window = max(1, window)
        self.drain_points_per_s = drain_points_per_s
        self.idle_poll_s = idle_poll_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.version = version
        self.status_topic = wire.topic_for(site, gateway, "status")
        self._wake = asyncio.Event()
        self._stopping = False
        self._drain_deadline = 0.0
        self._finished = asyncio.Event()
        self.connected = False
        self.published = 0
        self.failed = 0
        self.connects = 0
        self.connect_failures = 0  # failed sessions (connect refused, lost, timed out)

    def notify(self) -> None:
        """New messages are in the buffer: publish now rather than at the next poll."""
        self._wake.set()

    async def stop(self, drain_s: float = 5.0) -> None:
        """Ask :meth:`run` to flush what it can within ``drain_s``, go offline and return."""
        self._stopping = True
        self._drain_deadline = time.monotonic() + drain_s
        self._wake.set()
        await self._finished.wait()

    async def run(self) -> None:
        """Publish until :meth:`stop` (or cancellation); reconnect forever."""
        backoff = Backoff(self.backoff_initial_s, max(self.backoff_max_s, self.backoff_initial_s))
        try:
            while True:
                if self._past_deadline():
                    return
                connects_before = self.connects
                try:
                    await self._session()
                    return  # clean stop
                except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                    self.connected = False
                    self.connect_failures += 1
                    if self.connects > connects_before:
                        backoff.reset()  # the session had connected: a new outage starts short
                    delay = backoff.next_delay()
                    if self._stopping:
                        delay = min(delay, max(0.0, self._drain_deadline - time.monotonic()))
                    log.warning(
                        "mqtt %s:%d: %s; retrying in %.1f s",
                        self.host,
                        self.port,
                        str(exc) or type(exc).__name__,
                        delay,
                    )
                    await self._pause(delay)
        finally:
            self.connected = False
            self._finished.set()

    async def _pause(self, delay: float) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()  # a stop request cuts the wait short
        except TimeoutError:
            pass

    def _status(self, state: str) -> bytes:
        status = wire.GatewayStatus(
            gateway=self.gateway,
            site=self.site,
            state="online" if state == "online" else "offline",
            ts_ns=time.time_ns(),
            version=self.version,
        )
        return wire.encode(status)

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            tls_context=self.tls_context,
            will=will,
            keepalive=self.keepalive_s,
            timeout=self.op_timeout_s,
            max_inflight_messages=self.window,
        )
        # a full window is the normal state when pipelining, not a warning
        client.pending_calls_threshold = self.window + 10
        return client

    async def _session(self) -> None:
        client = self._client()
        async with asyncio.timeout(self.op_timeout_s):
            await client.__aenter__()
        clean = False
        try:
            self.connects += 1
            log.info("mqtt connected to %s:%d", self.host, self.port)
            await self._publish(client, self.status_topic, self._status("online"), retain=True)
            self.connected = True  # and announced online
            await self._forward(client)
            await self._publish(client, self.status_topic, self._status("offline"), retain=True)
            clean = True
        except asyncio.CancelledError:
            # cancelled, not stopped: a clean disconnect would suppress the will, so say it
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await client.publish(
                        self.status_topic, self._status("offline"), qos=1, retain=True
                    )
            raise
        finally:
            self.connected = False
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                if clean:
                    log.warning("mqtt disconnect was not clean: %s", exc)

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool = False
    ) -> None:
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await client.publish(topic, payload, qos=1, retain=retain)
        except (aiomqtt.MqttError, TimeoutError):
            self.failed += 1
            raise

    def _past_deadline(self) -> bool:
        return self._stopping and time.monotonic() >= self._drain_deadline

    async def _forward(self, client: aiomqtt.Client) -> None:
        """Publish pending messages until stopping and drained (or past the deadline)."""
        pipe = _Pipeline(self, client, await asyncio.to_thread(self.buffer.cursor))
        try:
            await pipe.run()
        finally:
            await pipe.close()


class _Pipeline:
    """One session's publishing: a window of QoS 1 publishes, acks batched into the buffer."""

    def __init__(self, owner: MqttPublisher, client: aiomqtt.Client, cursor: ReadCursor) -> None:
        self.owner = owner
        self.client = client
        self.cursor = cursor
        self.inflight: dict[asyncio.Task[None], PendingMessage] = {}
        self.acked: list[int] = []
        self.error: BaseException | None = None
        # the last read filled the room it had: the buffer may hold more (a backlog), so
        # every PUBACK that frees a slot is worth a read; else only the last one of the window
        self.more = True
        rate = owner.drain_points_per_s
        self.tokens = rate if rate is not None else 0.0
        self.refilled = time.monotonic()

    def _done(self, task: asyncio.Task[None]) -> None:
        message = self.inflight.pop(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.acked.append(message.seq)
            self.owner.published += 1
        elif self.error is None:
            self.error = exc
        # A PUBACK wakes the loop (a buffer round trip: acks deleted, next rows read) only
        # when that can publish something: the buffer has more, the window has drained, a
        # batch of acks is waiting, or an error must be raised. Live telemetry comes a few
        # messages at a time (notify() wakes for those): one round trip for the lot of
        # them, not one per PUBACK.
        if (
            self.more
            or not self.inflight
            or len(self.acked) >= self.owner.batch
            or self.error is not None
        ):
            self.owner._wake.set()

    def _backlog_allowance(self) -> int | None:
        rate = self.owner.drain_points_per_s
        if rate is None:
            return None
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        return int(self.tokens) if self.tokens >= 1 else 0

    async def run(self) -> None:
        owner = self.owner
        while not owner._past_deadline():
            if self.error is not None:
                raise self.error
            owner._wake.clear()
            room = min(owner.window - len(self.inflight), owner.batch)
            acks, self.acked = self.acked, []
            allowance = self._backlog_allowance()
            messages: list[PendingMessage] = []
            if room > 0 or acks:
                try:
                    messages = await asyncio.to_thread(
                        owner.buffer.exchange, acks, self.cursor, room, allowance
                    )
                except BufferStorageError as exc:
                    log.error("cannot read the buffer: %s", exc)
            if room > 0:
                self.more = len(messages) >= room
            backlog = self.cursor.boundary
            for message in messages:
                if message.kind != "alarm" and message.seq <= backlog:
                    self.tokens -= message.points
                topic = wire.topic_for(owner.site, owner.gateway, _TOPIC_KIND[message.kind])
                task = asyncio.create_task(
                    owner._publish(self.client, topic, message.payload),
                    name=f"mqtt-publish-{message.seq}",
                )
                self.inflight[task] = message
                task.add_done_callback(self._done)
            if messages and len(self.inflight) < owner.window:
                continue  # more may be ready: read again without waiting
            if owner._stopping and not messages and not self.inflight and not self.acked:
                return
            if self.acked and not self.inflight:
                continue
            wait = owner.idle_poll_s
            if allowance == 0 and not self.cursor.backlog_done and owner.drain_points_per_s:
                wait = min(wait, 0.05)  # backlog waits for its drain allowance
            try:
                async with asyncio.timeout(wait):
                    await owner._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Stop in-flight publishes (they are resent next session) and store the acks we have."""
        if self.owner._stopping and self.inflight and self.error is None:
            # a clean stop: give the in-flight messages until the drain deadline
            left = self.owner._drain_deadline - time.monotonic()
            if left > 0:
                await asyncio.wait(list(self.inflight), timeout=left)
        for task in list(self.inflight):
            task.cancel()
        if self.inflight:
            await asyncio.wait(list(self.inflight))
        if self.acked:
            acks, self.acked = self.acked, []
            try:
                await asyncio.to_thread(self.owner.buffer.ack, acks)
            except BufferStorageError as exc:
                log.error(
                    "cannot ack %d message(s) yet (hidden, delete retried): %s", len(acks), exc
                )
