"""Acknowledgement round trip cloud -> gateway -> cloud over a real Mosquitto, restarted
in between: the cut raised on the gateway comes back acknowledged under the same id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt

import wire
from cloud.commands import CommandSigner, generate_command_key, send_command
from device_drivers import DeviceDriver
from edge.config import LoadedSite
from edge.config._models import CommandSettings
from edge.gateway import Gateway
from tests.support import async_wait_until, start_mosquitto
from tests.unit.test_polling import FakeBus, f32, make_site


@contextlib.asynccontextmanager
async def cloud_view(port: int, seen: list[wire.AlarmEvent]) -> AsyncIterator[None]:
    """What the cloud hears on the gateway's alarm topic."""

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="cloud-view") as client:
            await client.subscribe(wire.topic_for("s1", "gw1", "alarms"), qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                decoded = wire.decode(payload)
                if isinstance(decoded, wire.AlarmEvent):
                    seen.append(decoded)

    ready = asyncio.Event()
    task = asyncio.create_task(listen(), name="cloud-view")
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_acknowledge_from_the_cloud_comes_back_acknowledged(tmp_path: Path) -> None:
    generate_command_key(tmp_path / "cmd.key", tmp_path / "cmd.pub")
    signer = CommandSigner(tmp_path / "cmd.key")
    base = make_site(poll_ms=50)
    config = base.config.model_copy(
        update={"commands": CommandSettings(public_key_files=(str(tmp_path / "cmd.pub"),))}
    )
    site = LoadedSite(source="test", config=config, profiles=base.profiles)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    broker = start_mosquitto(tmp_path)
    port = broker.port

    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        mqtt_port=port,
        driver_factory=factory,
        drain_s=0.3,
        command_check_s=0.1,
    )
    task = asyncio.create_task(gateway.run(), name="gateway")
    seen: list[wire.AlarmEvent] = []
    try:
        async with cloud_view(port, seen):
            await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 10, "power released")
            bus.set(1, "holding", 0, f32(1.8))
            await async_wait_until(
                lambda: any(e.tag == "CH4_A" and e.reason == "above_cut" for e in seen),
                10,
                "the cut reaches the cloud",
            )
        raised = next(e for e in seen if e.tag == "CH4_A" and e.reason == "above_cut")
        assert raised.state == "unacknowledged" and raised.priority == "critical"

        broker.stop()  # the broker goes away and comes back on the same port
        broker = start_mosquitto(tmp_path, port)
        assert gateway.remote_commands is not None
        seen.clear()
        async with cloud_view(port, seen):
            await async_wait_until(
                lambda: (
                    gateway.remote_commands is not None
                    and gateway.remote_commands.subscribed.is_set()
                ),
                20,
                "the gateway listens for commands again",
            )
            command = signer.command(
                "s1", "gw1", "acknowledge", "ops", {"alarm": raised.alarm_id, "why": "seen"}
            )
            await send_command(
                signer, command, host="127.0.0.1", port=port, username=None, password=None,
                tls_context=None,
            )  # fmt: skip
            acked = await async_wait_until(
                lambda: next(
                    (e for e in seen if e.alarm_id == raised.alarm_id and e.kind == "alarm_state"),
                    None,
                ),
                20,
                "the acknowledgement comes back to the cloud",
            )
        assert acked is not None
        assert acked.state == "acknowledged" and acked.actor == "cloud:ops"
        assert acked.level == "cut" and "seen" in acked.message
        rec = gateway.alarm_store.get(raised.alarm_id)
        assert rec is not None and rec.state == "acknowledged"
        # the same command again is a replay: refused, and nothing changes
        await send_command(
            signer, command, host="127.0.0.1", port=port, username=None, password=None,
            tls_context=None,
        )  # fmt: skip
        await async_wait_until(
            lambda: gateway.counters().get("commands_refused_replayed", 0) >= 1, 10, "replay"
        )
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)
        broker.stop()
    states = [e.state for e in seen if e.alarm_id == raised.alarm_id and e.kind == "alarm_state"]
    assert states == ["acknowledged"], "one acknowledgement, forwarded once"
