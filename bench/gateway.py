"""Gateway core benchmarks: modbus, overload, gateway-memory (child processes) and rtu.

``modbus``/``overload``/``gateway-memory`` run the real ``safewatch sim run`` and
``safewatch edge run`` as child processes (one Modbus TCP port per device, a
private Mosquitto for the uplink) and read the gateway's own health endpoint
(``/status``): values through the rule engine, skipped polls, period and
jitter percentiles. CPU and RSS come from ``/proc/<pid>`` of the gateway
process and its descendants (a safety process, where the gateway runs one), never
the simulator's, so the simulator's cost is not counted against the gateway.

``rtu`` polls an RTU line on a pty null modem paced at the baud rate, in this
process, and reports the share of the line's capacity the driver keeps busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench._harness import (
    EDGE_NICE,
    PLANT_NICE,
    REPO_CONFIGS,
    can_raise_priority,
    child,
    free_port,
    priority,
    private_mosquitto,
    workdir,
)

_TICK = os.sysconf("SC_CLK_TCK")
_NORMAL_PROFILE = """id: temp
name: Air temperature (background)
kind: temp
unit: degC
range: {min: -40.0, max: 125.0}
nominal: 21.5
fail_safe: false
priority: normal
thresholds:
  default: {alarm: 40.0, source: "bench background tag"}
"""


def write_profiles(work: Path) -> Path:
    folder = work / "profiles"
    folder.mkdir()
    for src in (REPO_CONFIGS / "sensors").glob("*.yaml"):
        (folder / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "temp.yaml").write_text(_NORMAL_PROFILE, encoding="utf-8")
    return folder


def write_site(
    work: Path,
    *,
    devices: int,
    tags: int,
    poll_ms: int,
    safety_devices: int | None = None,
    safety_poll_ms: int | None = None,
    mqtt_port: int = 1883,
    timeout_ms: int | None = None,
) -> Path:
    """One Modbus TCP bus (own port) per device, ``tags`` float32 tags each.

    The first ``safety_devices`` devices carry methane tags (safety class), the
    rest temperature tags (background); all devices are safety when None.
    """
    safety = devices if safety_devices is None else safety_devices
    timeout = timeout_ms or 500
    lines = [
        "site: {id: bench}",
        "gateway: {id: gw-bench}",
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}",
        f"buffer: {{path: {work / 'buffer.db'}, max_mb: 64}}",
        "buses:",
    ]
    ports: set[int] = set()
    while len(ports) < devices:  # free_port() may hand out the same port twice
        ports.add(free_port())
    for d, port in enumerate(sorted(ports)):
        lines.append(
            f"  - {{id: bus{d}, type: modbus_tcp, host: 127.0.0.1, port: {port}, "
            f"timeout_ms: {timeout}}}"
        )
    lines.append("devices:")
    for d in range(devices):
        is_safety = d < safety
        period = safety_poll_ms if (is_safety and safety_poll_ms) else poll_ms
        profile, position = ("ch4", "main_return") if is_safety else ("temp", "default")
        lines += [
            f"  - id: dev{d}",
            f"    bus: bus{d}",
            f"    poll_ms: {period}",
            f"    stale_after_ms: {max(3 * period, period + timeout)}",
            "    tags:",
        ]
        lines += [
            f"      - {{name: T{d}_{t}, profile: {profile}, address: {2 * t}, "
            f"location: {{area: a{d}, position: {position}}}}}"
            for t in range(tags)
        ]
    path = work / "site.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ports_of(site: Path) -> list[int]:
    return [
        int(line.split("port: ")[1].split(",")[0])
        for line in site.read_text(encoding="utf-8").splitlines()
        if "type: modbus_tcp" in line
    ]


def _wait_ports(
    ports: list[int], deadline_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + deadline_s
    for port in ports:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("simulator exited")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"simulator port {port} not open") from None
                time.sleep(0.05)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a gateway may run its safety buses in a child
    process: its CPU and memory are the gateway's too)."""
    found = [pid]
    for current in found:
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            found.extend(int(c) for c in children if int(c) not in found)
    return found


def _own_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _own_rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants."""
    return sum(_own_cpu_s(p) for p in process_tree(pid))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its live descendants, MB."""
    return sum(_own_rss_mb(p) for p in process_tree(pid))


def _status(client: httpx.Client, url: str) -> dict[str, Any]:
    data: dict[str, Any] = client.get(url, timeout=5).json()
    return data


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(0.99 * len(ordered) + 0.999) - 1))]


def run_gateway(
    *,
    devices: int,
    tags: int,
    poll_ms: int,
    duration_s: float,
    warmup_s: float = 5.0,
    safety_devices: int | None = None,
    safety_poll_ms: int | None = None,
    rss_every_s: float | None = None,
    nice: int = EDGE_NICE,
    sim_nice: int = PLANT_NICE,
) -> dict[str, Any]:
    """Simulator + gateway children; measure the gateway over ``duration_s`` after warm-up.

    ``nice``: the gateway's niceness; by default the shipped unit's (``Nice=-10``), where
    this process may lower it (root), else the caller's (a warning says so).
    ``sim_nice``: the simulator's. It stands in for the devices, which answer in a few ms
    whatever the gateway's host is doing; on a loaded machine a simulator at the default
    priority answered reads 50-60 ms late on average (20 devices, load 12), and every late
    answer counted as the gateway's own jitter. By default it runs where the tests that
    time the safety loop run their plant (``PLANT_NICE``)."""
    with (
        workdir() as work,
        private_mosquitto(work) as mqtt_port,
        contextlib.ExitStack() as stack,
        httpx.Client() as client,
    ):
        profiles = write_profiles(work)
        for attempt in range(3):  # a port picked free may be taken by another process meanwhile
            site = write_site(
                work,
                devices=devices,
                tags=tags,
                poll_ms=poll_ms,
                safety_devices=safety_devices,
                safety_poll_ms=safety_poll_ms,
                mqtt_port=mqtt_port or 1,
            )
            sim_args = ["sim", "run", "--config", str(site), "--profiles", str(profiles)]
            attempt_stack = contextlib.ExitStack()
            if sim_nice < 0 and not can_raise_priority():
                sim_nice = 0  # child() warns
            sim = attempt_stack.enter_context(child(sim_args, work / "sim.log", nice=sim_nice))
            try:
                _wait_ports(_ports_of(site), 180, sim)
                time.sleep(1.0)
                if sim.poll() is not None:
                    raise RuntimeError("simulator exited")
            except RuntimeError as exc:
                attempt_stack.close()
                if attempt == 2:
                    log = (work / "sim.log").read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"{exc}: {log}") from None
                continue
            stack.enter_context(attempt_stack)
            break
        health = free_port()
        url = f"http://127.0.0.1:{health}/status"
        gw_args = ["edge", "run", "--config", str(site), "--profiles", str(profiles)]
        gw_args += ["--health-port", str(health)]
        if nice < 0 and not can_raise_priority():
            nice = 0  # child() warns
        with child(gw_args, work / "edge.log", nice=nice) as gw:
            deadline = time.monotonic() + 180  # a loaded machine loads a big site slowly
            while True:
                try:
                    _status(client, url)
                    break
                except (httpx.HTTPError, ValueError):
                    if time.monotonic() > deadline or gw.poll() is not None:
                        log = (work / "edge.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"gateway did not serve {url}: {log}") from None
                    time.sleep(0.2)
            time.sleep(warmup_s)
            first = _status(client, url)
            processes = len(process_tree(gw.pid))
            cpu0, sim_cpu0, t0 = cpu_s(gw.pid), cpu_s(sim.pid), time.monotonic()
            rss0 = rss_mb(gw.pid)
            rss_series = [rss0]
            end = t0 + duration_s
            while time.monotonic() < end:
                time.sleep(min(rss_every_s or duration_s, max(0.0, end - time.monotonic())))
                rss_series.append(rss_mb(gw.pid))
            last = _status(client, url)
            cpu1, sim_cpu1, t1 = cpu_s(gw.pid), cpu_s(sim.pid), time.monotonic()
            rss1 = rss_mb(gw.pid)
    elapsed = t1 - t0
    values = last["counters"]["samples"] - first["counters"]["samples"]
    gw_cpu = cpu1 - cpu0
    skipped = sum(b["skipped"] for b in last["buses"]) - sum(b["skipped"] for b in first["buses"])
    safety_p99 = [
        d["interval_p99_ms"] for d in last["devices"] if d["safety"] and d["interval_p99_ms"]
    ]
    return {
        "devices": devices,
        "tags": devices * tags,
        "poll_ms": poll_ms,
        "duration_s": round(elapsed, 1),
        "offered_per_s": round(devices * tags * 1000 / poll_ms, 1)
        if safety_poll_ms is None
        else round(
            sum(
                tags * 1000 / (safety_poll_ms if d < (safety_devices or 0) else poll_ms)
                for d in range(devices)
            ),
            1,
        ),
        "tags_per_s": round(values / elapsed, 1),
        "cpu_cores_used": round(gw_cpu / elapsed, 3),
        "tags_per_cpu_s": round(values / gw_cpu, 1) if gw_cpu > 0 else None,
        "period_jitter_p99_ms": max((b["jitter_p99_ms"] or 0.0) for b in last["buses"]),
        "safety_period_p99_ms": max(safety_p99) if safety_p99 else None,
        "skipped_polls": skipped,
        "rss_start_mb": round(rss0, 1),
        "rss_mb": round(rss1, 1),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "rss_max_mb": round(max(rss_series), 1),
        "sim_cpu_cores_used": round((sim_cpu1 - sim_cpu0) / elapsed, 3),
        "uplink_dropped": last["counters"].get("uplink_dropped"),
        "gateway_processes": processes,
        "gateway_nice": nice,
        "sim_nice": sim_nice,
    }


_TIMER_FLOOR = """
import asyncio, json, sys, time
period, timers, duration = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
lags = []
async def one(start):
    due = start
    while True:
        due += period
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lags.append(time.monotonic() - due)
async def main():
    start = time.monotonic()
    tasks = [asyncio.create_task(one(start)) for _ in range(timers)]
    await asyncio.sleep(duration)
    for t in tasks:
        t.cancel()
asyncio.run(main())
print(json.dumps(sorted(lags)))
"""


def timer_floor(
    period_s: float, timers: int, duration_s: float = 5.0, nice: int = EDGE_NICE
) -> dict[str, float]:
    """The machine's own wake-up lag: ``timers`` asyncio timers on a ``period_s`` grid in
    a bare process at the gateway's niceness, doing nothing else (p50/p99/max, ms).

    A gateway's period jitter cannot be lower than this; on the shared 2-core VM at load
    8-10 it was 7-12 ms at p99 (20 timers, 100 ms), above the 5 ms goal with no gateway."""
    import json
    import sys

    if nice < 0 and not can_raise_priority():
        nice = 0
    out = subprocess.run(
        [sys.executable, "-c", _TIMER_FLOOR, str(period_s), str(timers), str(duration_s)],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 30,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    lags: list[float] = json.loads(out.stdout)
    if not lags:
        return {"timer_floor_p50_ms": 0.0, "timer_floor_p99_ms": 0.0, "timer_floor_max_ms": 0.0}
    return {
        "timer_floor_p50_ms": round(1000 * lags[len(lags) // 2], 3),
        "timer_floor_p99_ms": round(1000 * _p99(lags), 3),
        "timer_floor_max_ms": round(1000 * lags[-1], 3),
    }


# -- rtu ---------------------------------------------------------------------------------


async def _rtu_line(baud: int, duration_s: float, units: int, registers: int) -> dict[str, Any]:
    from device_drivers.modbus import ModbusDriver, ModbusSerialLink, inter_frame_gap_s
    from edge.config import load_site
    from simulators import SiteSimulator

    with workdir() as work:
        port = work / "ttyLINE"
        lines = [
            "site: {id: rtu}",
            "gateway: {id: gw-rtu}",
            f"buffer: {{path: {work / 'b.db'}}}",
            "buses:",
            f"  - {{id: line, type: modbus_rtu, port: {port}, baudrate: {baud}, parity: N, "
            "stopbits: 2, timeout_ms: 1000}",
            "devices:",
        ]
        for u in range(units):
            lines += [f"  - id: unit{u + 1}", "    bus: line", f"    unit_id: {u + 1}", "    tags:"]
            lines += [
                f"      - {{name: U{u}_{t}, profile: ch4, address: {2 * t}, "
                "location: {area: a, position: face}}"
                for t in range(registers // 2)
            ]
        path = work / "site.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        site = load_site(path)
        async with SiteSimulator(site, pace_serial=True) as sim:
            ((_, _, modem, _),) = sim.lines()
            assert modem is not None
            bus = site.config.buses[0]
            driver = ModbusDriver(
                "line", ModbusSerialLink(str(port), baudrate=baud, parity="N", stopbits=2), 1.0
            )
            try:
                await driver.open()
                # back to back, as the poller does on a saturated line
                moved0, t0 = modem.bytes_moved, time.monotonic()
                reads = 0
                while time.monotonic() - t0 < duration_s:
                    await driver.read_registers(1 + reads % units, "holding", 0, registers)
                    reads += 1
                elapsed = time.monotonic() - t0
                moved = modem.bytes_moved - moved0
            finally:
                await driver.close()
            char_bits = 1 + 8 + 2  # 8N2
            assert bus.type == "modbus_rtu"
    # the line's theoretical limit: frames back to back, separated only by the silent
    # interval the RTU spec requires (3.5 characters; 1.75 ms above 19,200 baud)
    gap_s = inter_frame_gap_s(baud, char_bits)
    line_s = moved * char_bits / baud + reads * 2 * gap_s
    useful = reads * registers * 2  # payload bytes of the answers
    return {
        "baudrate": baud,
        "reads": reads,
        "registers_per_read": registers,
        "line_utilisation": round(line_s / elapsed, 3),
        "wire_only_utilisation": round(moved * char_bits / baud / elapsed, 3),
        "payload_bytes_per_s": round(useful / elapsed, 1),
        "registers_per_s": round(reads * registers / elapsed, 1),
    }


def run_rtu(
    duration_s: float = 10.0, units: int = 4, registers: int = 100, nice: int = EDGE_NICE
) -> dict[str, Any]:
    """Both baud rates, this process at the gateway's niceness (where it may): the driver,
    the simulated slaves and the line's pacing share its one event loop, and at 115,200
    baud a few ms of late timers per read on a loaded machine are a tenth of the line."""
    with priority(nice) as niced:
        slow = asyncio.run(_rtu_line(9600, duration_s, units, registers))
        fast = asyncio.run(_rtu_line(115_200, duration_s, units, registers))
    return {
        "nice": nice if niced else os.getpriority(os.PRIO_PROCESS, 0),
        "line_utilisation": min(slow["line_utilisation"], fast["line_utilisation"]),
        "line_utilisation_9600": slow["line_utilisation"],
        "line_utilisation_115200": fast["line_utilisation"],
        "registers_per_s_9600": slow["registers_per_s"],
        "registers_per_s_115200": fast["registers_per_s"],
        "reads_9600": slow["reads"],
        "reads_115200": fast["reads"],
        "duration_s": duration_s,
    }


def decode_baseline(points: int = 60, rounds: int = 2000) -> dict[str, float]:
    """Values/s decoded in this process: the columnar decoder the driver uses (no object per
    GOOD value), the block decoder (one Sample per value) and per-value decoding as the
    poller did before the driver seam (slice, codec ``decode``, scale, range, one Sample each)."""
    import math

    from device_drivers import DeviceSpec, PointSpec, Quality, Sample
    from device_drivers.modbus import (
        DataType,
        ModbusPoint,
        decode,
        decode_block,
        decode_columns,
        encode,
        plan_reads,
        to_engineering,
    )

    specs = tuple(
        PointSpec(f"T{i}", ModbusPoint("holding", 2 * i), 1.0, 0.0, 0.0, 4.0) for i in range(points)
    )
    (block,) = plan_reads(DeviceSpec("d", 1, specs)).blocks
    registers = [r for _ in range(points) for r in encode(0.3, DataType.FLOAT32)]
    out: list[Sample | None] = [None] * points
    started = time.perf_counter()
    for _ in range(rounds):
        decode_block(block, registers, "d", 1, out)
    block_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        for i in range(points):
            raw = decode(registers[2 * i : 2 * i + 2], DataType.FLOAT32)
            value = to_engineering(raw, scale=1.0, offset=0.0)
            good = math.isfinite(value) and 0.0 <= value <= 4.0
            Sample(f"T{i}", "d", value, Quality.GOOD if good else Quality.BAD, 1)
    per_value_s = time.perf_counter() - started
    values: list[float] = [0.0] * points
    stamps: list[int] = [0] * points
    odd: dict[int, Sample] = {}
    started = time.perf_counter()
    for _ in range(rounds):
        decode_columns(block, registers, "d", 1, values, stamps, odd)
    columns_s = time.perf_counter() - started
    total = points * rounds
    return {
        "columns_decode_values_per_s": round(total / columns_s),
        "block_decode_values_per_s": round(total / block_s),
        "baseline_per_value_decode_values_per_s": round(total / per_value_s),
    }
