"""Ingest workers on a NATS JetStream cluster: the scale-out path past one Mosquitto.

The gateways keep speaking MQTT 3.1.1 (QoS 1) - to any node of a NATS cluster with
its MQTT listener on. NATS maps ``safewatch/v1/<site>/<gateway>/<kind>`` to the
subject ``safewatch.v1.<site>.<gateway>.<kind>`` (a ``.`` inside a topic level
becomes ``//``).

Where the workers read from matters. nats-server handles an MQTT QoS 1 PUBLISH in
two steps (``mqttProcessPub``, server/README-MQTT.md "Message"): a plain NATS
publish on the subject, then a synchronous JetStream store of the same message as
``$MQTT.msgs.<subject>`` in its own replicated stream ``$MQTT_msgs`` (interest
retention); the PUBACK goes out only after that store. A stream of our own on
``safewatch.v1.>`` only sees the plain publish, which nothing acknowledges: while
that stream has no leader (its leader node died, an election is running) the
message is dropped although the gateway already had its PUBACK and deleted it -
a whole burst of sequence numbers lost for good. So the workers pull from a
durable consumer on ``$MQTT_msgs`` itself, filtered on
``$MQTT.msgs.safewatch.v1.>``: what was PUBACKed is exactly what they read, and
interest retention keeps each message until this consumer acked it.

Every worker pulls from the same durable consumer, so they split the load and any
of them may die: what it held unacknowledged is redelivered to the others after
``ack_wait``. A worker handles a fetched batch exactly like the MQTT ingest
(:meth:`IngestService.process`: dead letters, dedup on (gateway, seq), InfluxDB or
spool, one commit) and acks the messages only after that; a store failure is
retried with backoff and nothing is acked meanwhile.

The consumer must exist before the first gateway publishes: an interest stream
drops a message no consumer wants. nats-server creates ``$MQTT_msgs`` on the
first MQTT CONNECT of the account, so a worker given the MQTT listeners
(``mqtt``) connects once itself to have it created, then adds the consumer; it
is durable and replicated afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt
import nats
import nats.errors
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from cloud.ingest import Incoming, IngestService
from wire.backoff import Backoff

__all__ = ["MQTT_STREAM", "JetStreamIngest", "subject_to_topic", "topic_to_subject"]

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"  # nats-server's stream of stored QoS 1/2 MQTT messages
MQTT_PREFIX = "$MQTT.msgs."
SUBJECTS = MQTT_PREFIX + "safewatch.v1.>"
COMMAND_SUFFIX = ".command"  # cloud -> gateway commands share the prefix: not ours to ingest


class MqttStreamMissing(nats.errors.Error):
    """``$MQTT_msgs`` does not exist yet: no MQTT client has connected to the cluster."""


def topic_to_subject(topic: str) -> str:
    """The NATS subject the NATS MQTT listener publishes an MQTT topic as."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def subject_to_topic(subject: str) -> str:
    """Back from a NATS subject to the MQTT topic (``//`` was a ``.`` in a level)."""
    return "/".join(token.replace("//", ".") for token in subject.split("."))


class JetStreamIngest:
    """One ingest worker pulling from the shared durable consumer on ``$MQTT_msgs``."""

    def __init__(
        self,
        servers: Sequence[str],
        ingest: IngestService,
        *,
        durable: str = "safewatch-ingest",
        batch: int = 256,
        ack_wait_s: float = 60.0,
        mqtt: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.servers = list(servers)
        self.ingest = ingest
        self.durable = durable
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.mqtt = list(mqtt)
        self.connected = False

    async def _ensure_mqtt_stream(self, js: Any) -> None:
        """Have nats-server create ``$MQTT_msgs`` (one MQTT CONNECT) when it is missing."""
        try:
            await js.stream_info(MQTT_STREAM)
            return
        except NotFoundError:
            pass
        for host, port in self.mqtt:
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=f"{self.durable}-setup",
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=True,
                    timeout=10,
                ):
                    pass
            except aiomqtt.MqttError as exc:
                log.warning("jetstream: MQTT listener %s:%d: %s", host, port, exc)
                continue
            await js.stream_info(MQTT_STREAM)  # the CONNACK came after the streams
            return
        raise MqttStreamMissing(
            f"stream {MQTT_STREAM} does not exist yet (no MQTT client connected to the "
            "cluster); give the worker the MQTT listeners (--mqtt HOST:PORT) to create it"
        )

    async def run(self) -> None:
        """Connect (the client fails over between the servers), pull, process, ack; forever."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ingest.drain_spool_forever(), name="influx-spool-drainer")
            backoff = Backoff(initial=0.5, cap=5.0)
            while True:
                try:
                    await self._pull_forever()
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    me = asyncio.current_task()
                    if me is not None and me.cancelling():  # nats-py turned a cancel into this
                        raise asyncio.CancelledError from exc
                    # A node lost, no stream leader yet: what was not acked is redelivered.
                    delay = backoff.next_delay()
                    log.warning("jetstream: %r; reconnect in %.1fs", exc, delay)
                    await asyncio.sleep(delay)

    async def _pull_forever(self) -> None:
        nc = await nats.connect(
            self.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
        )
        try:
            js = nc.jetstream()
            await self._ensure_mqtt_stream(js)
            sub = await js.pull_subscribe(
                SUBJECTS,
                durable=self.durable,
                stream=MQTT_STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait_s,
                    max_ack_pending=self.batch * 4,
                ),
            )
            self.connected = True
            me = asyncio.current_task()
            while True:
                # nats-py swallows a CancelledError in places (a flush after publish): do not
                # let a cancelled worker pull on forever
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                try:
                    messages = await sub.fetch(self.batch, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                received = time.time_ns()
                ours = [m for m in messages if not m.subject.endswith(COMMAND_SUFFIX)]
                self.ingest.count("received", len(ours))
                items = [
                    Incoming(
                        subject_to_topic(m.subject.removeprefix(MQTT_PREFIX)), m.data, received
                    )
                    for m in ours
                ]
                if items:
                    await self.ingest.process_until_durable(items)
                for message in messages:  # only now: the batch is durable
                    await message.ack()
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):  # a close towards a dead node may hang
                    await nc.close()
