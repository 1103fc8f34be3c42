"""``safewatch bench opcua``: values/s through the OPC UA driver, batched reads and subscriptions.

``servers`` asyncua servers run in child processes (their CPU is not ours, but is
measured) with ``nodes`` Double variables spread over them, as a gateway with one
bus per PLC. Phase 1 reads every node once per poll, each bus's device in one
poll (Read requests of at most ``max_nodes_per_read`` nodes, up to
``reads_in_flight`` of them on a session at once), through
:class:`device_drivers.opcua.OpcUaDriver` (scaling, range, quality: a whole
``Sample`` per value); the buses poll concurrently, as the gateway's bus pollers
do. As the baseline in the same run, asyncua's own ``Client.read_values`` reads
the same nodes, one request per server at a time. Phase 2 subscribes to every
node while the servers change every value ``churn_hz`` times a second, and counts
the notifications that reach the drivers.

``cpu_cores_used`` is this process's CPU time over wall time across the measured
phases; ``server_cpu_cores_used`` the servers' together (from /proc), per phase.
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
from device_drivers import DeviceSpec, DriverError, PointSpec
from device_drivers.opcua import OpcUaDriver, OpcUaEndpoint, OpcUaPoint

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def _spec(first: int, count: int, subscribe: bool) -> DeviceSpec:
    points = tuple(
        PointSpec(f"v{i}", OpcUaPoint(node=f"ns=2;s=v{i}", subscribe=subscribe))
        for i in range(first, first + count)
    )
    return DeviceSpec("bench", 1, points)


class _Servers:
    """``count`` bench servers in child processes, ``nodes`` variables spread over them."""

    def __init__(self, count: int, nodes: int, churn_hz: float) -> None:
        self.slices: list[tuple[str, int, int]] = []  # (url, first node, nodes)
        self.procs: list[subprocess.Popen[str]] = []
        per, extra = divmod(nodes, count)
        first = 0
        try:
            for i in range(count):
                n = per + (1 if i < extra else 0)
                port = free_port()
                self.procs.append(_server(port, first, n, churn_hz))
                self.slices.append((f"opc.tcp://127.0.0.1:{port}/bench", first, n))
                first += n
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> float:
        return _proc_cpu([p.pid for p in self.procs])

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc)


async def _read_phase(
    servers: _Servers, seconds: float, endpoint: dict[str, Any]
) -> dict[str, float]:
    drivers = [
        OpcUaDriver(f"bench{i}", OpcUaEndpoint(url, **endpoint), timeout_s=10.0)
        for i, (url, _, _) in enumerate(servers.slices)
    ]
    plans = [
        drv.plan(_spec(first, n, subscribe=False))
        for drv, (_, first, n) in zip(drivers, servers.slices, strict=True)
    ]
    for drv, plan in zip(drivers, plans, strict=True):
        await drv.read(plan)  # connect, resolve
    counts = [0] * len(drivers)
    t0 = time.monotonic()

    async def poll(i: int) -> None:  # one bus poller: its device read back to back
        drv, plan = drivers[i], plans[i]
        while time.monotonic() - t0 < seconds:
            samples = await drv.read(plan)
            counts[i] += sum(1 for s in samples if s.is_good)

    cpu0, srv0 = _cpu(), servers.cpu()
    await asyncio.gather(*(poll(i) for i in range(len(drivers))))
    wall, cpu, srv = time.monotonic() - t0, _cpu() - cpu0, servers.cpu() - srv0
    for drv in drivers:
        await drv.close()

    from asyncua import Client  # the baseline: asyncua's own batched read

    clients = [Client(url, timeout=10) for url, _, _ in servers.slices]
    base = [0] * len(clients)
    try:
        for client in clients:
            await client.connect()
        node_lists = [
            [client.get_node(f"ns=2;s=v{i}") for i in range(first, first + n)]
            for client, (_, first, n) in zip(clients, servers.slices, strict=True)
        ]
        for client, node_list in zip(clients, node_lists, strict=True):
            await client.read_values(node_list)
        b0 = time.monotonic()

        async def base_poll(i: int) -> None:
            while time.monotonic() - b0 < seconds:
                base[i] += len(await clients[i].read_values(node_lists[i]))

        await asyncio.gather(*(base_poll(i) for i in range(len(clients))))
        base_wall = time.monotonic() - b0
    finally:
        for client in clients:
            await client.disconnect()
    return {
        "read_values_per_s": sum(counts) / wall,
        "read_cpu_s": cpu,
        "read_wall_s": wall,
        "read_server_cpu_s": srv,
        "baseline_asyncua_read_values_per_s": sum(base) / base_wall,
    }


async def _subscribe_phase(
    servers: _Servers, seconds: float, endpoint: dict[str, Any]
) -> dict[str, float]:
    drivers = [
        OpcUaDriver(f"bench{i}", OpcUaEndpoint(url, **endpoint), timeout_s=10.0)
        for i, (url, _, _) in enumerate(servers.slices)
    ]
    plans = [
        drv.plan(_spec(first, n, subscribe=True))
        for drv, (_, first, n) in zip(drivers, servers.slices, strict=True)
    ]
    for drv, plan in zip(drivers, plans, strict=True):
        await drv.read(plan)  # subscribe
    await asyncio.sleep(1.0)
    n0 = sum(drv.notifications for drv in drivers)
    cpu0, srv0, t0 = _cpu(), servers.cpu(), time.monotonic()
    errors = 0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.1)  # the gateway polls its devices; the servers push
        for drv, plan in zip(drivers, plans, strict=True):
            try:
                await drv.read(plan)
            except DriverError:  # a starved server missed its keep-alives: counted
                errors += 1
    wall, cpu, srv = time.monotonic() - t0, _cpu() - cpu0, servers.cpu() - srv0
    got = sum(drv.notifications for drv in drivers) - n0
    for drv in drivers:
        await drv.close()
    return {
        "notifications_per_s": got / wall,
        "sub_cpu_s": cpu,
        "sub_wall_s": wall,
        "sub_server_cpu_s": srv,
        "sub_read_errors": errors,
    }


def _server(port: int, first: int, nodes: int, churn_hz: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench._opcua_server",
            str(port),
            str(nodes),
            str(churn_hz),
            str(first),
        ],
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
        proc.wait()


def run(
    nodes: int = 2000,
    seconds: float = 10.0,
    churn_hz: float = 5.0,
    *,
    servers: int = 1,
    max_nodes_per_read: int = 500,
    reads_in_flight: int = 4,
    publish_requests: int = 3,
    publishing_ms: float = 50.0,
) -> dict[str, Any]:
    if not 1 <= servers <= nodes:
        raise ValueError("need 1 <= servers <= nodes")
    read_ep = {"max_nodes_per_read": max_nodes_per_read, "reads_in_flight": reads_in_flight}
    sub_ep = {"publishing_ms": publishing_ms, "publish_requests": publish_requests}
    quiet = _Servers(servers, nodes, 0.0)
    try:
        read = asyncio.run(_read_phase(quiet, seconds, read_ep))
    finally:
        quiet.stop()
    churning = _Servers(servers, nodes, churn_hz)
    try:
        sub = asyncio.run(_subscribe_phase(churning, seconds, sub_ep))
    finally:
        churning.stop()
    cpu = read["read_cpu_s"] + sub["sub_cpu_s"]
    wall = read["read_wall_s"] + sub["sub_wall_s"]
    return {
        "read_values_per_s": round(read["read_values_per_s"]),
        "baseline_asyncua_read_values_per_s": round(read["baseline_asyncua_read_values_per_s"]),
        "notifications_per_s": round(sub["notifications_per_s"]),
        "offered_changes_per_s": round(nodes * churn_hz),
        "cpu_cores_used": round(cpu / wall, 3),
        "read_cpu_cores_used": round(read["read_cpu_s"] / read["read_wall_s"], 3),
        "sub_cpu_cores_used": round(sub["sub_cpu_s"] / sub["sub_wall_s"], 3),
        "server_cpu_cores_used": round(
            (read["read_server_cpu_s"] + sub["sub_server_cpu_s"]) / wall, 3
        ),
        "read_server_cpu_cores_used": round(read["read_server_cpu_s"] / read["read_wall_s"], 3),
        "sub_server_cpu_cores_used": round(sub["sub_server_cpu_s"] / sub["sub_wall_s"], 3),
        "read_values_per_cpu_s": round(
            read["read_values_per_s"] * read["read_wall_s"] / max(read["read_cpu_s"], 1e-9)
        ),
        "notifications_per_cpu_s": round(
            sub["notifications_per_s"] * sub["sub_wall_s"] / max(sub["sub_cpu_s"], 1e-9)
        ),
        "read_values_per_server_cpu_s": round(
            read["read_values_per_s"] * read["read_wall_s"] / max(read["read_server_cpu_s"], 1e-9)
        ),
        "notifications_per_server_cpu_s": round(
            sub["notifications_per_s"] * sub["sub_wall_s"] / max(sub["sub_server_cpu_s"], 1e-9)
        ),
        "subscription_read_errors": sub["sub_read_errors"],
        "nodes": nodes,
        "servers": servers,
        "max_nodes_per_read": max_nodes_per_read,
        "reads_in_flight": reads_in_flight,
        "publish_requests": publish_requests,
        "publishing_ms": publishing_ms,
        "seconds_per_phase": seconds,
        "load_average": round(os.getloadavg()[0], 2),
    }
