"""``safewatch bench opcua``: values/s through the OPC UA driver, batched reads and subscriptions.

An asyncua server runs in a child process (its CPU is not ours) with ``nodes``
Double variables. Phase 1 reads all of them in one Read request per poll,
through :class:`device_drivers.opcua.OpcUaDriver` (scaling, range, quality: a
whole ``Sample`` per value), and, as the baseline in the same run, through
asyncua's own ``Client.read_values``. Phase 2 subscribes to all of them while
the server changes every value ``churn_hz`` times a second, and counts the
notifications that reach the driver. ``cpu_cores_used`` is this process's CPU
time over wall time across the measured phases.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import free_port
from device_drivers import DeviceSpec, PointSpec
from device_drivers.opcua import OpcUaDriver, OpcUaEndpoint, OpcUaPoint

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _spec(nodes: int, subscribe: bool) -> DeviceSpec:
    points = tuple(
        PointSpec(f"v{i}", OpcUaPoint(node=f"ns=2;s=v{i}", subscribe=subscribe))
        for i in range(nodes)
    )
    return DeviceSpec("bench", 1, points)


async def _read_phase(url: str, nodes: int, seconds: float) -> dict[str, float]:
    drv = OpcUaDriver("bench", OpcUaEndpoint(url), timeout_s=10.0)
    plan = drv.plan(_spec(nodes, subscribe=False))
    await drv.read(plan)  # connect, resolve
    values = 0
    cpu0, t0 = _cpu(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        samples = await drv.read(plan)
        values += sum(1 for s in samples if s.is_good)
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    await drv.close()

    from asyncua import Client  # the baseline: asyncua's own batched read

    client = Client(url, timeout=10)
    await client.connect()
    try:
        node_list = [client.get_node(f"ns=2;s=v{i}") for i in range(nodes)]
        await client.read_values(node_list)
        base = 0
        b0 = time.monotonic()
        while time.monotonic() - b0 < seconds:
            base += len(await client.read_values(node_list))
        base_wall = time.monotonic() - b0
    finally:
        await client.disconnect()
    return {
        "read_values_per_s": values / wall,
        "read_cpu_s": cpu,
        "read_wall_s": wall,
        "baseline_asyncua_read_values_per_s": base / base_wall,
    }


async def _subscribe_phase(url: str, nodes: int, seconds: float) -> dict[str, float]:
    drv = OpcUaDriver("bench", OpcUaEndpoint(url, publishing_ms=50), timeout_s=10.0)
    plan = drv.plan(_spec(nodes, subscribe=True))
    await drv.read(plan)  # subscribe
    await asyncio.sleep(1.0)
    n0, cpu0, t0 = drv.notifications, _cpu(), time.monotonic()
    polls = 0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.1)  # the gateway polls its devices; the server pushes
        await drv.read(plan)
        polls += 1
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    got = drv.notifications - n0
    await drv.close()
    return {"notifications_per_s": got / wall, "sub_cpu_s": cpu, "sub_wall_s": wall}


def _server(port: int, nodes: int, churn_hz: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._opcua_server", str(port), str(nodes), str(churn_hz)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # asyncua builds its address space: seconds
    if "ready" not in line:
        proc.kill()
        raise RuntimeError("bench OPC UA server did not start")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run(nodes: int = 2000, seconds: float = 10.0, churn_hz: float = 5.0) -> dict[str, Any]:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/bench"
    server = _server(port, nodes, 0.0)
    try:
        read = asyncio.run(_read_phase(url, nodes, seconds))
    finally:
        _stop(server)
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/bench"
    server = _server(port, nodes, churn_hz)
    try:
        sub = asyncio.run(_subscribe_phase(url, nodes, seconds))
    finally:
        _stop(server)
    cpu = read["read_cpu_s"] + sub["sub_cpu_s"]
    wall = read["read_wall_s"] + sub["sub_wall_s"]
    return {
        "read_values_per_s": round(read["read_values_per_s"]),
        "baseline_asyncua_read_values_per_s": round(read["baseline_asyncua_read_values_per_s"]),
        "notifications_per_s": round(sub["notifications_per_s"]),
        "offered_changes_per_s": round(nodes * churn_hz),
        "cpu_cores_used": round(cpu / wall, 3),
        "nodes": nodes,
        "seconds_per_phase": seconds,
    }
