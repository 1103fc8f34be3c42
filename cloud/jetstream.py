"""Ingest workers on a NATS JetStream cluster: the scale-out path past one Mosquitto.

The gateways keep speaking MQTT 3.1.1 (QoS 1) - to any node of a NATS cluster with
its MQTT listener on. NATS maps ``safewatch/v1/<site>/<gateway>/<kind>`` to the
subject ``safewatch.v1.<site>.<gateway>.<kind>`` (a ``.`` inside a topic level
becomes ``//``), and a replicated JetStream stream (``SAFEWATCH``, R3, work-queue
retention) keeps every message until an ingest worker acknowledged it.

Every worker pulls from the same durable consumer, so they split the load and any
of them may die: what it held unacknowledged is redelivered to the others after
``ack_wait``. A worker handles a fetched batch exactly like the MQTT ingest
(:meth:`IngestService.process`: dead letters, dedup on (gateway, seq), InfluxDB or
spool, one commit) and acks the messages only after that; a store failure is
retried with backoff and nothing is acked meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from cloud.ingest import Incoming, IngestService
from wire.backoff import Backoff

__all__ = ["JetStreamIngest", "subject_to_topic", "topic_to_subject"]

log = logging.getLogger(__name__)

STREAM = "SAFEWATCH"
SUBJECTS = "safewatch.v1.>"


def topic_to_subject(topic: str) -> str:
    """The NATS subject the NATS MQTT listener publishes an MQTT topic as."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def subject_to_topic(subject: str) -> str:
    """Back from a NATS subject to the MQTT topic (``//`` was a ``.`` in a level)."""
    return "/".join(token.replace("//", ".") for token in subject.split("."))


class JetStreamIngest:
    """One ingest worker pulling from the shared durable consumer of the SAFEWATCH stream."""

    def __init__(
        self,
        servers: Sequence[str],
        ingest: IngestService,
        *,
        durable: str = "safewatch-ingest",
        replicas: int = 3,
        batch: int = 256,
        ack_wait_s: float = 60.0,
    ) -> None:
        self.servers = list(servers)
        self.ingest = ingest
        self.durable = durable
        self.replicas = replicas
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.connected = False

    async def _stream(self, js: Any) -> None:
        config = StreamConfig(
            name=STREAM,
            subjects=[SUBJECTS],
            num_replicas=self.replicas,
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            await js.add_stream(config)

    async def run(self) -> None:
        """Connect (the client fails over between the servers), pull, process, ack; forever."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ingest.drain_spool_forever(), name="influx-spool-drainer")
            backoff = Backoff(initial=0.5, cap=5.0)
            while True:
                try:
                    await self._pull_forever()
                except (nats.errors.Error, TimeoutError, OSError) as exc:
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
            await self._stream(js)
            sub = await js.pull_subscribe(
                SUBJECTS,
                durable=self.durable,
                stream=STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait_s,
                    max_ack_pending=self.batch * 4,
                ),
            )
            self.connected = True
            while True:
                try:
                    messages = await sub.fetch(self.batch, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                received = time.time_ns()
                self.ingest.count("received", len(messages))
                items = [Incoming(subject_to_topic(m.subject), m.data, received) for m in messages]
                await self.ingest.process_until_durable(items)
                for message in messages:  # only now: the batch is durable
                    await message.ack()
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await nc.close()
