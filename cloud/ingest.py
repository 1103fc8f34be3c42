"""MQTT ingest: wire messages from the gateways into InfluxDB and the store.

The ingest holds a persistent MQTT v5 session (stable client id, clean start
off, session expiry): while it is away the broker queues QoS 1 messages for it.
By default it subscribes plainly to ``safewatch/v1/+/+/<kind>``. With a
``group``, telemetry, alarms and events use a shared subscription
(``$share/<group>/...``) so several workers split the load - but Mosquitto 2.0
does not restore shared subscriptions after a broker restart, so messages
published between a broker restart and the workers' return are lost there;
a single worker with a plain subscription keeps them. Status is always a
plain subscription (brokers do not deliver retained messages to shared ones).
Every message is deduplicated on (gateway, seq) in the store, so a resend
after a reconnect is dropped.

A bad message (wrong topic, malformed payload, topic/payload mismatch) is
dropped, logged with its topic and counted by reason; it never stops the ingest.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import wire
from cloud._backoff import Backoff
from cloud.storage import PointWriter, Store, StoreError, to_lines

__all__ = ["IngestService"]

log = logging.getLogger(__name__)

_SHARED_KINDS: Final = ("telemetry", "alarms", "events")


class IngestService:
    """Subscribes to every gateway's topics and stores what arrives.

    ``connected`` says whether the broker session is up; ``counters()`` gives
    received/processed counts and ``dropped_<reason>`` for each dropped message.
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
    ) -> None:
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.store = store
        self.writer = writer
        self.group = group
        # A stable id and a persistent session: while the ingest is away (restart,
        # network, broker restart with persistence) the broker queues QoS 1 messages
        # for it instead of dropping them. Several workers on one host need their
        # own ids (--client-id).
        self.client_id = client_id or f"{group or 'safewatch-ingest'}-{socket.gethostname()}"
        self.session_expiry_s = session_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self._connected = False
        self._counters: collections.Counter[str] = collections.Counter()

    @property
    def connected(self) -> bool:
        return self._connected

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
        props.SessionExpiryInterval = self.session_expiry_s
        return props

    def subscriptions(self) -> list[str]:
        prefix = f"$share/{self.group}/" if self.group else ""
        shared = [f"{prefix}{wire.TOPIC_ROOT}/+/+/{kind}" for kind in _SHARED_KINDS]
        return [*shared, f"{wire.TOPIC_ROOT}/+/+/status"]

    async def run(self) -> None:
        """Connect, subscribe, handle messages; reconnect forever with capped jittered backoff."""
        backoff = Backoff(initial=0.5, cap=self.backoff_cap_s)
        while True:
            client = aiomqtt.Client(
                self.mqtt_host,
                self.mqtt_port,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=self._connect_properties(),
                timeout=self.connect_timeout_s,
            )
            ack = _manual_acks(client)
            try:
                async with client:
                    options = SubscribeOptions(qos=1)
                    async with asyncio.timeout(self.connect_timeout_s):
                        await client.subscribe([(t, options) for t in self.subscriptions()])
                    self._connected = True
                    self._counters["connects"] += 1
                    backoff.reset()
                    log.info("ingest subscribed on %s:%d", self.mqtt_host, self.mqtt_port)
                    async for message in client.messages:
                        await self.handle(str(message.topic), message.payload)
                        ack(message)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                problem: object = exc
            else:
                problem = "session ended"
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

    def _drop(self, reason: str, topic: str, detail: object) -> None:
        self._counters[f"dropped_{reason}"] += 1
        log.warning("ingest dropped a message on %r (%s): %s", topic, reason, detail)

    async def handle(self, topic: str, payload: object) -> None:
        """Decode, check and store one message; never raises for bad input."""
        self._counters["received"] += 1
        if not isinstance(payload, bytes | bytearray):
            self._drop("malformed", topic, f"payload of type {type(payload).__name__}")
            return
        try:
            wire.parse_topic(topic)
        except wire.WireError as exc:
            self._drop("bad_topic", topic, exc)
            return
        try:
            message = wire.decode(bytes(payload))
        except wire.WireError as exc:
            self._drop("malformed", topic, exc)
            return
        try:
            expected = wire.topic_of(message)
        except wire.WireError as exc:
            self._drop("malformed", topic, exc)
            return
        if expected != topic:
            self._drop("topic_mismatch", topic, f"message belongs on {expected!r}")
            return
        try:
            await self._store(message)
        except StoreError as exc:
            self._drop("store_error", topic, exc)
        except Exception as exc:  # one message must never stop the ingest
            log.exception("ingest failed on a message from %r", topic)
            self._drop("internal_error", topic, exc)

    async def _store(self, message: wire.Message) -> None:
        if isinstance(message, wire.GatewayStatus):
            await asyncio.to_thread(self.store.record_status, message)
            self._counters["status"] += 1
            return
        # Store first, then remember the seq: a crash in between (the broker then
        # redelivers, since the ack comes last) re-processes the message, and every
        # store step is idempotent - alarms are unique on (gateway, seq), points
        # overwrite themselves in InfluxDB, latest values only move forward.
        if await asyncio.to_thread(self.store.seen, message.gateway, message.seq):
            self._counters["duplicates"] += 1
            return
        if isinstance(message, wire.TelemetryBatch):
            self.writer.enqueue(to_lines(message))
            await asyncio.to_thread(self.store.upsert_latest, message)
            self._counters["telemetry"] += 1
            self._counters["points"] += len(message.points)
        elif isinstance(message, wire.AlarmEvent):
            if not await asyncio.to_thread(self.store.record_alarm, message):
                self._counters["duplicates"] += 1
                return
            self._counters["alarms"] += 1
        else:
            await asyncio.to_thread(self.store.record_gap, message)
            self._counters["gaps"] += 1
        await asyncio.to_thread(self.store.note_seq, message.gateway, message.site, message.seq)


def _manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], None]:
    """Acknowledge QoS 1 messages only after they were handled (stored or counted).

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
