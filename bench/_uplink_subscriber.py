"""Child process of ``bench uplink``: counts telemetry points arriving at the broker.

``python -m bench._uplink_subscriber HOST PORT OUT`` holds a persistent QoS 1
session (it survives the broker restart of the outage phase) and appends one
line ``recv_time gateway seq points`` per message to OUT, flushed every 0.1 s. It runs
in its own process so that decoding does not take CPU from the gateway side.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

import aiomqtt

import wire


async def main(host: str, port: int, out: TextIO) -> None:
    lines: list[str] = []
    if True:

        async def flusher() -> None:
            while True:
                await asyncio.sleep(0.1)
                if lines:
                    out.write("".join(lines))
                    lines.clear()
                    out.flush()

        flush_task = asyncio.create_task(flusher(), name="flusher")
        try:
            while True:
                try:
                    async with aiomqtt.Client(
                        host,
                        port,
                        identifier="bench-uplink-subscriber",
                        clean_session=False,
                        max_queued_incoming_messages=0,
                        timeout=5,
                    ) as client:
                        await client.subscribe(f"{wire.TOPIC_ROOT}/#", qos=1)
                        out.write("ready\n")
                        out.flush()
                        async for message in client.messages:
                            now = time.time()
                            payload = message.payload
                            if not isinstance(payload, bytes):
                                continue
                            decoded = wire.decode(payload)
                            if isinstance(decoded, wire.TelemetryBatch):
                                lines.append(
                                    f"{now:.6f} {decoded.gateway} {decoded.seq} "
                                    f"{len(decoded.points)}\n"
                                )
                            elif not isinstance(decoded, wire.GatewayStatus):
                                lines.append(f"{now:.6f} {decoded.gateway} {decoded.seq} 0\n")
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)  # the broker is down (outage phase): retry
        finally:
            flush_task.cancel()


if __name__ == "__main__":
    with (
        open(sys.argv[3], "a", encoding="utf-8") as out_file,
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), out_file))
