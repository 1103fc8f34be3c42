"""MQTT publisher: durable buffer -> broker, QoS 1, delete only after PUBACK.

The broker holds a retained :class:`wire.GatewayStatus`: ``online`` published
on every connect, ``offline`` as the last will (unclean loss) and published
explicitly on a clean shutdown. Messages are taken from the buffer alarms
first, published one by one at QoS 1 (aiomqtt's ``publish`` returns after the
PUBACK) and acknowledged in the buffer only then. A resend after a lost
PUBACK is possible; the cloud drops duplicates by (gateway, seq).

The connection is retried forever with capped, jittered exponential backoff;
every network call runs under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Final

import aiomqtt

import wire
from edge.uplink.buffer import BufferStorageError, PendingMessage, StoreAndForwardBuffer

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
        idle_poll_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        version: str = "",
    ) -> None:
        self.buffer = buffer
        self.site = site
        self.gateway = gateway
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.username = username
        self.password = password
        self.op_timeout_s = op_timeout_s
        self.batch = batch
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
        attempt = 0
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
                    attempt = 1 if self.connects > connects_before else attempt + 1
                    delay = min(
                        self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempt - 1, 16)
                    )
                    delay *= random.uniform(0.5, 1.0)
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
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"safewatch-{self.site}-{self.gateway}",
            username=self.username,
            password=self.password,
            will=will,
            keepalive=self.keepalive_s,
            timeout=self.op_timeout_s,
        )

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
        while not self._past_deadline():
            self._wake.clear()
            try:
                pending = await asyncio.to_thread(self.buffer.pending, self.batch)
            except BufferStorageError as exc:
                log.error("cannot read the buffer: %s", exc)
                pending = []
            if pending:
                await self._send(client, pending)
                continue
            if self._stopping:
                return
            try:
                async with asyncio.timeout(self.idle_poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _send(self, client: aiomqtt.Client, pending: Sequence[PendingMessage]) -> None:
        acked: list[int] = []
        try:
            for message in pending:
                if self._past_deadline():
                    break
                topic = wire.topic_for(self.site, self.gateway, _TOPIC_KIND[message.kind])
                await self._publish(client, topic, message.payload)
                acked.append(message.seq)
                self.published += 1
        finally:
            if acked:
                try:
                    await asyncio.to_thread(self.buffer.ack, acked)
                except BufferStorageError as exc:
                    log.error("cannot ack %d message(s) (will resend): %s", len(acked), exc)
