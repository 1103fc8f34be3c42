"""MqttPublisher against a real, private Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

import wire
from edge.uplink.buffer import StoreAndForwardBuffer
from edge.uplink.publisher import MqttPublisher
from tests.factories import alarm, point
from tests.support import Broker, async_wait_until, start_mosquitto

pytestmark = pytest.mark.contract

SITE, GATEWAY = "s1", "gw1"
STATUS = wire.topic_for(SITE, GATEWAY, "status")


class Subscriber:
    """Collects every message under the gateway's topics."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def data(self) -> list[wire.Message]:
        return [wire.decode(p) for t, p, _ in self.messages if t != STATUS]

    def statuses(self) -> list[str]:
        out: list[str] = []
        for t, p, _ in self.messages:
            if t == STATUS:
                msg = wire.decode(p)
                assert isinstance(msg, wire.GatewayStatus)
                out.append(msg.state)
        return out


@contextlib.asynccontextmanager
async def subscribed(broker: Broker, session: str | None = None) -> AsyncIterator[Subscriber]:
    """Subscribe to the gateway's topics; a named ``session`` persists across disconnects."""
    sub = Subscriber()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        timeout=5,
        identifier=session,
        clean_session=False if session else None,
    ) as client:
        await client.subscribe(wire.topic_for(SITE, GATEWAY, "status").rsplit("/", 1)[0] + "/#", 1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                sub.messages.append((str(message.topic), payload, message.retain))

        task = asyncio.create_task(collect(), name="test-subscriber")
        try:
            yield sub
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def make_publisher(
    buffer: StoreAndForwardBuffer, broker: Broker, *, backoff_s: float = 0.2
) -> MqttPublisher:
    return MqttPublisher(
        buffer,
        site=SITE,
        gateway=GATEWAY,
        host=broker.host,
        port=broker.port,
        op_timeout_s=2.0,
        idle_poll_s=0.1,
        backoff_initial_s=backoff_s,
        backoff_max_s=backoff_s,
    )


@contextlib.asynccontextmanager
async def running(publisher: MqttPublisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run(), name="mqtt-publisher")
    try:
        yield task
    finally:
        if not task.done():
            await asyncio.wait_for(publisher.stop(drain_s=2.0), 10)
        await task


def open_buffer(tmp_path: Path) -> StoreAndForwardBuffer:
    return StoreAndForwardBuffer(tmp_path / "buf.db", 10_000_000, site=SITE, gateway=GATEWAY)


async def test_pending_is_delivered_alarms_first_and_removed_after_puback(
    tmp_path: Path, broker: Broker
) -> None:
    buffer = open_buffer(tmp_path)
    t1 = buffer.append_telemetry([point(value=0.01), point(value=0.02)])
    t2 = buffer.append_telemetry([point(value=0.03)])
    a1 = buffer.append_alarm(alarm(tag="CH4_T1"))
    async with subscribed(broker) as sub:
        publisher = make_publisher(buffer, broker)
        async with running(publisher):
            await async_wait_until(lambda: len(sub.data()) == 3, 10, "three messages")
            await async_wait_until(lambda: buffer.pending() == [], 5, "buffer emptied by acks")
            assert publisher.published == 3
            assert "online" in sub.statuses()
        got = sub.data()
    assert got == [a1, t1, t2]  # alarms before backlog telemetry, then oldest first
    topics = [t for t, _, _ in sub.messages if t != STATUS]
    assert topics == [
        wire.topic_of(a1),
        wire.topic_of(t1),
        wire.topic_of(t2),
    ]
    buffer.close()


async def test_status_online_retained_then_offline_after_stop(
    tmp_path: Path, broker: Broker
) -> None:
    buffer = open_buffer(tmp_path)
    publisher = make_publisher(buffer, broker)
    async with running(publisher):
        await async_wait_until(lambda: publisher.connected, 10, "publisher connected")
        async with subscribed(broker) as late:  # subscribes after the publish: retained
            await async_wait_until(lambda: late.statuses() == ["online"], 5, "retained online")
            assert late.messages[0][2] is True  # delivered as a retained message
    async with subscribed(broker) as after:
        await async_wait_until(lambda: after.statuses() == ["offline"], 5, "retained offline")
    buffer.close()


async def test_broker_outage_keeps_messages_and_delivers_after_restart(tmp_path: Path) -> None:
    broker = start_mosquitto(tmp_path)
    buffer = open_buffer(tmp_path)
    publisher = make_publisher(buffer, broker, backoff_s=0.5)
    try:
        # a persistent subscriber session: the restarted broker (persistence on) queues the
        # backlog for it, however the publisher's reconnect and our subscription interleave
        async with subscribed(broker, session="outage-watcher"):
            pass
        async with running(publisher):
            await async_wait_until(lambda: publisher.connected, 10, "publisher connected")
            broker.stop()
            alarm_msg = buffer.append_alarm(alarm(tag="CH4_T2"))
            batch = buffer.append_telemetry([point(value=0.07)])
            publisher.notify()
            await async_wait_until(lambda: publisher.connect_failures >= 1, 15, "loss noticed")
            failures = publisher.connect_failures
            await async_wait_until(
                lambda: publisher.connect_failures > failures, 15, "a failed reconnect"
            )
            # broker down: nothing was acknowledged, so nothing left the buffer
            assert [p.seq for p in buffer.pending()] == [alarm_msg.seq, batch.seq]

            broker = start_mosquitto(tmp_path, port=broker.port)
            async with subscribed(broker, session="outage-watcher") as sub:
                await async_wait_until(lambda: len(sub.data()) == 2, 15, "backlog delivered")
                await async_wait_until(lambda: buffer.pending() == [], 5, "backlog acked")
                assert sub.data() == [alarm_msg, batch]
                assert publisher.connects == 2
                assert "online" in sub.statuses()
    finally:
        broker.stop()
        buffer.close()


async def test_alarms_then_live_then_backlog_at_the_drain_rate(
    tmp_path: Path, broker: Broker
) -> None:
    buffer = open_buffer(tmp_path)
    backlog = [buffer.append_telemetry([point(value=0.01)] * 100) for _ in range(4)]
    async with subscribed(broker) as sub:
        publisher = make_publisher(buffer, broker)
        publisher.drain_points_per_s = 200.0  # two 100-point batches a second
        async with running(publisher):
            await async_wait_until(lambda: publisher.connected, 10, "connected")
            live = buffer.append_telemetry([point(value=0.02)])
            urgent = buffer.append_alarm(alarm(tag="CH4_T9"))
            publisher.notify()
            await async_wait_until(lambda: len(sub.data()) == 6, 15, "everything delivered")
        got = [m.seq for m in sub.data() if not isinstance(m, wire.GatewayStatus)]
    # the backlog's first allowance may go before the session's new rows arrive; after that the
    # alarm and the live batch overtake the rest of the throttled backlog
    rest = [b.seq for b in backlog]
    assert got.index(urgent.seq) < got.index(rest[-1])
    assert got.index(live.seq) < got.index(rest[-1])
    assert [s for s in got if s in rest] == rest  # backlog oldest first
    buffer.close()


async def test_broker_lost_with_a_full_window_in_flight_loses_nothing(tmp_path: Path) -> None:
    """Pipelining fault: the broker dies with many QoS 1 publishes in flight. Every row stays
    in the buffer until its PUBACK, so after the restart every sequence number arrives (a resend
    of an un-acked one may duplicate; the cloud drops those by seq)."""
    broker = start_mosquitto(tmp_path)
    buffer = open_buffer(tmp_path)
    seqs = [buffer.append_telemetry([point(value=i * 1e-3)] * 50).seq for i in range(400)]
    publisher = make_publisher(buffer, broker, backoff_s=0.2)
    try:
        async with subscribed(broker, session="window-watcher"):
            pass
        async with running(publisher):
            await async_wait_until(lambda: publisher.published >= 40, 10, "publishing under way")
            broker.stop()
            await async_wait_until(lambda: publisher.connect_failures >= 1, 15, "loss noticed")
            assert 0 < len(buffer.pending(1000)) < len(seqs)
            broker = start_mosquitto(tmp_path, port=broker.port)
            async with subscribed(broker, session="window-watcher") as sub:
                await async_wait_until(lambda: buffer.pending() == [], 20, "buffer drained")
                await async_wait_until(
                    lambda: (
                        {m.seq for m in sub.data() if isinstance(m, wire.TelemetryBatch)}
                        == set(seqs)
                    ),
                    15,
                    "every sequence number delivered",
                )
                received = [m.seq for m in sub.data() if isinstance(m, wire.TelemetryBatch)]
        # rows PUBACKed before the crash reached the persistent session (broker persistence);
        # the others were resent from the buffer: all arrived, duplicates bounded by the window
        assert len(received) - len(set(received)) <= publisher.window
    finally:
        broker.stop()
        buffer.close()


class CountingBuffer(StoreAndForwardBuffer):
    """The real buffer, counting the publisher's round trips and the acks they carry."""

    exchanges = 0
    acks_carried = 0

    def exchange(
        self, acks: Any, cursor: Any, limit: int, backlog_points: int | None = None
    ) -> Any:
        type(self).exchanges += 1
        type(self).acks_carried += len(acks)
        return super().exchange(acks, cursor, limit, backlog_points)


async def test_live_messages_take_one_round_trip_for_their_acks_not_one_each(
    tmp_path: Path, broker: Broker
) -> None:
    """Live telemetry arrives a few messages at a time: their PUBACKs are acknowledged in
    the buffer together (one thread round trip and one delete), not one by one."""
    buffer = CountingBuffer(tmp_path / "buf.db", 10_000_000, site=SITE, gateway=GATEWAY)
    async with subscribed(broker) as sub:
        publisher = make_publisher(buffer, broker)
        publisher.idle_poll_s = 30  # only notify() and PUBACKs wake it in this test
        async with running(publisher):
            await async_wait_until(lambda: publisher.connected, 10, "connected")
            await async_wait_until(lambda: CountingBuffer.exchanges >= 1, 5, "first read")
            for round_ in range(3):
                before = CountingBuffer.exchanges
                stored = [buffer.append_telemetry([point(value=0.01 * i)]) for i in range(8)]
                publisher.notify()
                want = 8 * (round_ + 1)

                def delivered(want: int = want) -> bool:
                    return not buffer.pending() and len(sub.data()) == want

                await async_wait_until(delivered, 10, "delivered and acked")
                assert stored[-1] in sub.data()
                # one read of the 8, one round trip with their 8 acks (at most one more
                # where a PUBACK raced the read); one per PUBACK would be 9
                assert CountingBuffer.exchanges - before <= 3
    assert CountingBuffer.acks_carried == 24
    buffer.close()
