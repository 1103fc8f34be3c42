"""alarm-latency: simulator value change -> power-cut coil written, end to end.

The gateway is the real ``safewatch edge run`` in a child process; the
simulator runs in this process and stamps, on one clock, when a methane value
is set over the cut limit and when the gateway writes that lane's power-cut
coil (``on_coil_write``). Each of ``lanes`` methane tags drives its own
breaker coil, so lanes trip concurrently and 1,000 trips take seconds, not an
hour; each trip starts at a random phase of the poll cycle (expected p50 about
poll/2 + processing, max about one poll + read + react).

- ``background_tags``: that many other tags (roof separation, thresholds and
  all) on a second bus, polled every second, so their rule work and telemetry
  compete with the safety path for the gateway's CPU. The second bus is served
  by a simulator in a child process (``safewatch sim run``): served from this
  process it made the safety devices' answers and the timestamps below wait
  behind 5,000 background registers a second, which is the bench, not the gateway.
- ``uplink="down"``: the MQTT port points at nothing; telemetry piles up in
  the buffer. ``"up"``: a private Mosquitto.
- ``react`` (from the gateway, ``--stats-out``): the rule engine receiving the
  over-limit reading (right after the read returned) -> the coil write
  acknowledged (and read back), per trip.
- ``react_wire`` (from the simulator, this process): the device answering the
  read that carried the over-limit value -> the device receiving the coil
  write. Outside the gateway, so it includes both bus legs and any wait for the
  gateway's threads, and excludes the read-back after the write.

The restore hold is set to 0 for the bench lanes (``restore_hold_s: 0``) so a
lane can trip again right away; the hold only delays releasing, never cutting.

Baseline measured in the same run: the Modbus read round trip against the
same simulator, so a slow, shared machine shows up in both numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from bench._harness import (
    EDGE_NICE,
    PLANT_NICE,
    PLANT_RT_PRIORITY,
    can_raise_priority,
    child,
    free_port,
    percentile,
    priority,
    private_mosquitto,
    realtime,
    workdir,
)
from device_drivers.modbus import ModbusTcpDriver
from edge.config import load_site
from simulators import SiteSimulator

HIGH, LOW = 1.6, 0.4
TRIP_TIMEOUT_S = 10.0
BACKGROUND_PER_DEVICE = 100
BACKGROUND_POLL_MS = 1000
MAX_LANES = 200  # Modbus unit ids 1..200; the breakers are unit 201


def site_doc(
    *,
    sim_port: int,
    bg_port: int,
    mqtt_port: int,
    buffer: Path,
    poll_ms: int,
    lanes: int,
    background_tags: int,
) -> dict[str, Any]:
    safety_tags = [
        {
            "name": f"CH4_{i:03d}",
            "profile": "ch4",
            "address": 0,
            "type": "uint16",
            "scale": 0.01,
            "location": {"area": f"lane {i}", "position": "face"},
            "thresholds": {
                "alarm": 1.0,
                "cut": 1.5,
                "restore": 1.0,
                "deadband": 0.05,
                "restore_hold_s": 0,
                "source": "SAFETY_REFERENCE.md face; hold 0 for the benchmark",
            },
            "actuators": [f"power-{i:03d}"],
        }
        for i in range(lanes)
    ]
    # one sensor per lane, each its own Modbus unit (as KJ substations wire them), so the
    # poller executes a lane's cut before it reads the next sensor
    devices: list[dict[str, Any]] = [
        {"id": f"ch4-{i:03d}", "bus": "safety-net", "unit_id": 1 + i, "poll_ms": poll_ms,
         "tags": [tag]}
        for i, tag in enumerate(safety_tags)
    ]  # fmt: skip
    devices.append({"id": "breakers", "bus": "safety-net", "unit_id": MAX_LANES + 1})
    for d in range(0, background_tags, BACKGROUND_PER_DEVICE):
        count = min(BACKGROUND_PER_DEVICE, background_tags - d)
        devices.append(
            {
                "id": f"bg-{d // BACKGROUND_PER_DEVICE}",
                "bus": "bg-net",
                "unit_id": 1 + d // BACKGROUND_PER_DEVICE,
                "poll_ms": BACKGROUND_POLL_MS,
                "tags": [
                    {
                        "name": f"ROOF_{d + j:05d}",
                        "profile": "roof_separation",
                        "address": j,
                        "type": "uint16",
                        "scale": 0.1,
                        "location": {"area": f"panel {d // 1000}", "position": "default"},
                    }
                    for j in range(count)
                ],
            }
        )
    buses = [{"id": "safety-net", "type": "modbus_tcp", "host": "127.0.0.1", "port": sim_port,
              "timeout_ms": min(500, poll_ms)}]  # fmt: skip
    if background_tags:
        buses.append(
            {"id": "bg-net", "type": "modbus_tcp", "host": "127.0.0.1", "port": bg_port,
             "timeout_ms": 1000}
        )  # fmt: skip
    return {
        "site": {"id": "bench"},
        "gateway": {"id": "gw-bench"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "buffer": {"path": str(buffer), "max_mb": 512},
        "buses": buses,
        "devices": devices,
        "actuators": [
            {"id": f"power-{i:03d}", "kind": "power_cut", "device": "breakers", "coil": i}
            for i in range(lanes)
        ],
    }


async def _modbus_rtt_ms(port: int, samples: int = 200) -> list[float]:
    driver = ModbusTcpDriver("bench", "127.0.0.1", port, 1.0)
    await driver.connect()
    out = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            await driver.read_registers(1, "holding", 0, 1)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        await driver.close()
    return out


def split_doc(doc: dict[str, Any], bus: str) -> dict[str, Any]:
    """The part of ``doc`` on ``bus`` (for a simulator that serves only that bus)."""
    devices = [d for d in doc["devices"] if d["bus"] == bus]
    ids = {d["id"] for d in devices}
    return {
        **doc,
        "buses": [b for b in doc["buses"] if b["id"] == bus],
        "devices": devices,
        "actuators": [a for a in doc["actuators"] if a["device"] in ids],
    }


class _Coils:
    """Futures resolved by the simulator's coil-write hook (no log scanning), and the
    first read answered after a lane's value went over the limit."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, bool], asyncio.Future[int]] = {}
        self.written_false: set[str] = set()
        self.armed: dict[str, int | None] = {}

    def read(self, device: str, t_ns: int) -> None:
        if device in self.armed and self.armed[device] is None:
            self.armed[device] = t_ns

    def hook(self, actuator: str, value: bool, t_ns: int) -> None:
        if not value:
            self.written_false.add(actuator)
        fut = self.waiting.pop((actuator, value), None)
        if fut is not None and not fut.done():
            fut.set_result(t_ns)

    def expect(self, actuator: str, value: bool) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[(actuator, value)] = fut
        return fut


async def _lane(
    sim: SiteSimulator,
    coils: _Coils,
    lane: int,
    trips: int,
    poll_s: float,
    out: list[float],
    wire_out: list[float],
) -> None:
    tag, actuator, device = f"CH4_{lane:03d}", f"power-{lane:03d}", f"ch4-{lane:03d}"
    for _ in range(trips):
        await asyncio.sleep(random.uniform(0, poll_s))  # random phase of the poll cycle
        cut = coils.expect(actuator, True)
        t0 = time.monotonic_ns()
        sim.set_value(tag, HIGH)
        coils.armed[device] = None  # the next read answered carries HIGH
        t1 = await asyncio.wait_for(cut, TRIP_TIMEOUT_S)
        out.append((t1 - t0) / 1e6)
        served = coils.armed.pop(device, None)
        if served is not None:
            wire_out.append((t1 - served) / 1e6)
        released = coils.expect(actuator, False)
        sim.set_value(tag, LOW)
        await asyncio.wait_for(released, TRIP_TIMEOUT_S)


async def measure(
    poll_ms: int,
    trips: int,
    *,
    background_tags: int,
    uplink: str,
    lanes: int,
    edge_nice: int = 0,
    plant_nice: int = 0,
) -> dict[str, Any]:
    lanes = max(1, min(lanes, trips, MAX_LANES))
    with workdir() as work, private_mosquitto(work) as broker_port:
        mqtt_port = broker_port if uplink == "up" and broker_port else free_port()
        sim_port, bg_port = free_port(), free_port()
        doc = site_doc(
            sim_port=sim_port,
            bg_port=bg_port,
            mqtt_port=mqtt_port,
            buffer=work / "buffer.db",
            poll_ms=poll_ms,
            lanes=lanes,
            background_tags=background_tags,
        )
        site_path, safety_path, bg_path = work / "site.yaml", work / "safety.yaml", work / "bg.yaml"
        for path, part in ((site_path, doc), (safety_path, split_doc(doc, "safety-net"))):
            with path.open("w", encoding="utf-8") as f:
                YAML().dump(part, f)
        coils = _Coils()
        sim = SiteSimulator(load_site(safety_path), on_coil_write=coils.hook, on_read=coils.read)
        for i in range(lanes):
            sim.set_value(f"CH4_{i:03d}", LOW)
        await sim.start()
        stats_path = work / "stats.json"
        background = contextlib.ExitStack()
        try:
            if background_tags:
                with bg_path.open("w", encoding="utf-8") as f:
                    YAML().dump(split_doc(doc, "bg-net"), f)
                bg_sim = background.enter_context(
                    child(
                        ["sim", "run", "--config", str(bg_path)],
                        work / "bg-sim.log",
                        nice=plant_nice,
                    )
                )
                deadline = time.monotonic() + 120
                while "simulator ready" not in (log := (work / "bg-sim.log").read_text()):
                    if time.monotonic() > deadline or bg_sim.poll() is not None:
                        raise RuntimeError(f"background simulator did not come up:\n{log[-3000:]}")
                    await asyncio.sleep(0.1)
            rtt = await _modbus_rtt_ms(sim_port)
            args = ["edge", "run", "--config", str(site_path), "--stats-out", str(stats_path)]
            latencies: list[float] = []
            wire: list[float] = []
            with child(args, work / "edge.log", nice=edge_nice) as proc:
                # up once every lane's breaker was written (released) after start
                deadline = time.monotonic() + 300
                while len(coils.written_false) < lanes:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        tail = (work / "edge.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"gateway did not come up:\n{tail}")
                    await asyncio.sleep(0.05)
                per_lane = [trips // lanes + (1 if i < trips % lanes else 0) for i in range(lanes)]
                started = time.monotonic()
                t_from = started
                async with asyncio.TaskGroup() as tg:
                    for i, n in enumerate(per_lane):
                        tg.create_task(_lane(sim, coils, i, n, poll_ms / 1000, latencies, wire))
                elapsed = time.monotonic() - started
                if proc.poll() is not None:
                    raise RuntimeError("gateway exited during the benchmark")
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
        finally:
            background.close()
            await sim.stop()
    # only cuts decided during the measured trips (not the gateway's start-up), on the
    # host-wide monotonic clock both processes share
    react = [
        ms for at, ms in zip(stats["react_at"], stats["react_ms"], strict=True) if at >= t_from
    ]
    counters: dict[str, int] = stats["counters"]
    return {
        "benchmark": "alarm-latency",
        "poll_ms": poll_ms,
        "trips": len(latencies),
        "lanes": lanes,
        "background_tags": background_tags,
        "uplink": uplink,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "min_ms": round(min(latencies), 2),
        "react_p50_ms": round(percentile(react, 50), 3),
        "react_p99_ms": round(percentile(react, 99), 3),
        "react_max_ms": round(max(react), 3),
        "react_samples": len(react),
        "react_wire_p50_ms": round(percentile(wire, 50), 3),
        "react_wire_p99_ms": round(percentile(wire, 99), 3),
        "react_wire_max_ms": round(max(wire), 3),
        "goal_react_p99_ms": 3.0,
        "goal_p99_ms": poll_ms + 5,
        "baseline_modbus_rtt_p50_ms": round(percentile(rtt, 50), 3),
        "baseline_modbus_rtt_p99_ms": round(percentile(rtt, 99), 3),
        "limit_ms": 2000,
        "elapsed_s": round(elapsed, 1),
        "gateway_samples": counters.get("samples", 0),
        "gateway_uplink_dropped": counters.get("uplink_dropped", 0),
        "gateway_published": counters.get("published", 0),
        "edge_nice": edge_nice,
        "plant_nice": plant_nice,
        "gateway_safety_process": counters.get("safety_process_starts", 0),
        "gateway_safety_realtime": counters.get("safety_realtime", 0),
        "gateway_safety_loop_lag_worst_ms": counters.get("safety_loop_lag_worst_us", 0) / 1000,
    }


def run(
    poll_ms: int = 500,
    trips: int = 100,
    *,
    background_tags: int = 0,
    uplink: str = "up",
    lanes: int = 1,
    as_deployed: bool = True,
) -> dict[str, Any]:
    """``as_deployed``: the gateway at the shipped unit's ``Nice=-10`` (EDGE_NICE), the
    background simulator at PLANT_NICE, and the simulated plant in this process (the
    safety bus's sensors and breakers) real-time (SCHED_RR PLANT_RT_PRIORITY, below the
    safety process's): the field devices a gateway talks to do not share its CPUs, and
    on a machine loaded by other work the bench must time the gateway, not the plant's
    turn on the CPU. Needs root; without it everything runs at nice 0 and normal policy,
    and the result says so (``edge_nice``, ``plant_nice``, ``plant_realtime``)."""
    deployed = as_deployed and can_raise_priority()
    edge_nice = EDGE_NICE if deployed else 0
    plant_nice = PLANT_NICE if deployed else 0
    with (
        priority(plant_nice),
        realtime(PLANT_RT_PRIORITY) if deployed else contextlib.nullcontext(False) as rt,
    ):
        result = asyncio.run(
            measure(
                poll_ms,
                trips,
                background_tags=background_tags,
                uplink=uplink,
                lanes=lanes,
                edge_nice=edge_nice,
                plant_nice=plant_nice,
            )
        )
    result["plant_realtime"] = bool(rt)
    return result
