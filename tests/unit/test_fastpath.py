"""The safety fast path: safety buses on their own thread and loop, hand-offs to the main loop.

The gateway tests run the real Modbus simulator on a thread of its own (so that blocking
the gateway's main loop does not block the devices) and the real gateway in this loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

import wire
from device_drivers import Quality, Sample, SampleBlock
from edge.config import LoadedSite, SiteConfig
from edge.fastpath import Handoff, SafetyThread, UplinkHandoff
from edge.gateway import Gateway
from edge.rules import Level
from edge.uplink.batcher import SampleQueue
from edge.uplink.buffer import StoreAndForwardBuffer
from simulators import SiteSimulator
from tests.support import async_wait_until, free_port, wait_until
from tests.unit.test_polling import PROFILES

LOCATION = {"area": "face 1", "position": "face"}


def two_bus_site(safety_port: int, bg_port: int, *, poll_ms: int = 50) -> LoadedSite:
    raw = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [
            {"id": "safety-net", "type": "modbus_tcp", "host": "127.0.0.1", "port": safety_port,
             "timeout_ms": 200},
            {"id": "bg-net", "type": "modbus_tcp", "host": "127.0.0.1", "port": bg_port,
             "timeout_ms": 500},
        ],
        "devices": [
            {"id": "ch4-a", "bus": "safety-net", "unit_id": 1, "poll_ms": poll_ms,
             "tags": [{"name": "CH4_A", "profile": "ch4", "address": 0, "type": "uint16",
                       "scale": 0.01, "location": LOCATION, "actuators": ["power"],
                       "thresholds": {"alarm": 1.0, "cut": 1.5, "restore": 1.0,
                                      "restore_hold_s": 0, "source": "test"}}]},
            {"id": "breaker", "bus": "safety-net", "unit_id": 10},
            {"id": "roof", "bus": "bg-net", "unit_id": 1, "poll_ms": 200,
             "tags": [{"name": f"ROOF_{i}", "profile": "roof_separation", "address": i,
                       "type": "uint16", "scale": 0.1, "location": LOCATION}
                      for i in range(20)]},
        ],
        "actuators": [{"id": "power", "kind": "power_cut", "device": "breaker", "coil": 0}],
    }  # fmt: skip
    return LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)


@contextmanager
def simulator_thread(site: LoadedSite) -> Iterator[tuple[SiteSimulator, list[tuple[bool, int]]]]:
    """The site's simulator on its own thread and loop; yields it and its coil writes."""
    writes: list[tuple[bool, int]] = []
    sim = SiteSimulator(site, on_coil_write=lambda _a, value, t_ns: writes.append((value, t_ns)))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sim", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
        yield sim, writes
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def start(site: LoadedSite, tmp_path: Path, **kwargs: object) -> tuple[Gateway, asyncio.Task[None]]:
    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        mqtt_port=1,  # nothing listens: the uplink is down
        drain_s=0.3,
        **kwargs,  # type: ignore[arg-type]
    )
    return gateway, asyncio.create_task(gateway.run(), name="gateway")


def _busy(seconds: float) -> None:
    """Background work that holds the main loop (and competes for the GIL) this long."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(200))


async def test_a_cut_is_written_while_the_main_loop_is_blocked(tmp_path: Path) -> None:
    site = two_bus_site(free_port(), free_port())
    with simulator_thread(site) as (sim, writes):
        sim.set_value("CH4_A", 0.3)
        gateway, task = start(site, tmp_path)
        try:
            await async_wait_until(lambda: any(v is False for v, _ in writes), 10, "released")
            assert [p.bus_id for p in gateway.fast_pollers] == ["safety-net"]
            assert [p.bus_id for p in gateway.main_pollers] == ["bg-net"]
            writes.clear()
            # the main loop is stuck for 1.5 s (a storm of background work, a slow disk)
            t0 = time.monotonic_ns()
            sim.set_value("CH4_A", 1.8)
            _busy(1.5)
            released_at = time.monotonic_ns()
            cuts = [t for value, t in writes if value is True]
            assert cuts, "no cut written while the main loop was busy"
            assert cuts[0] < released_at
            assert (cuts[0] - t0) / 1e9 < 0.5, f"cut after {(cuts[0] - t0) / 1e9:.3f} s"
            assert gateway.levels()["CH4_A"] is Level.CUT
            # the alarm record was handed to the main loop and is stored once it runs again
            await async_wait_until(lambda: gateway.alarms.level("CH4_A") is Level.CUT, 5, "alarm")
            bg = gateway.main_pollers[0]
            await async_wait_until(lambda: bg.reads_ok > 0, 10, "a background read")
        finally:
            gateway.stop()
            await asyncio.wait_for(task, 15)
    assert not gateway.safety_thread.alive
    buffer = StoreAndForwardBuffer(tmp_path / "buf.db", 10**7, site="s1", gateway="gw1")
    messages = [wire.decode(p.payload) for p in buffer.pending(100_000)]
    buffer.close()
    alarms = [m for m in messages if isinstance(m, wire.AlarmEvent) and m.tag == "CH4_A"]
    assert [(a.previous, a.level) for a in alarms][-1] == ("normal", "cut")
    telemetry = [m for m in messages if isinstance(m, wire.TelemetryBatch)]
    tags = {p.tag for batch in telemetry for p in batch.points}
    assert "CH4_A" in tags and "ROOF_0" in tags, "both threads' samples reach the uplink"


async def test_without_the_fast_path_the_blocked_loop_delays_the_cut(tmp_path: Path) -> None:
    """The same scenario on one loop (``fast_path=False``): the cut waits for the loop. This
    is what the safety thread is for, and shows the first test measures something."""
    site = two_bus_site(free_port(), free_port())
    with simulator_thread(site) as (sim, writes):
        sim.set_value("CH4_A", 0.3)
        gateway, task = start(site, tmp_path, fast_path=False)
        try:
            await async_wait_until(lambda: any(v is False for v, _ in writes), 10, "released")
            assert gateway.fast_pollers == []
            writes.clear()
            sim.set_value("CH4_A", 1.8)
            _busy(1.0)
            released_at = time.monotonic_ns()
            assert not [t for value, t in writes if value is True and t < released_at]
            await async_wait_until(lambda: any(v is True for v, _ in writes), 5, "cut later")
        finally:
            gateway.stop()
            await asyncio.wait_for(task, 15)


async def test_safety_bus_offline_is_still_a_fail_safe_cut_on_the_thread(tmp_path: Path) -> None:
    site = two_bus_site(free_port(), free_port())
    with simulator_thread(site) as (sim, writes):
        sim.set_value("CH4_A", 0.3)
        gateway, task = start(site, tmp_path)
        try:
            await async_wait_until(lambda: any(v is False for v, _ in writes), 10, "released")
            writes.clear()
            sim.set_offline("ch4-a", True)
            await async_wait_until(lambda: any(v is True for v, _ in writes), 5, "fault lockout")
            assert gateway.levels()["CH4_A"] is Level.FAULT
        finally:
            gateway.stop()
            await asyncio.wait_for(task, 15)


# -- the hand-offs ---------------------------------------------------------------------


async def test_handoff_runs_calls_from_threads_on_the_loop_in_order() -> None:
    handoff = Handoff("t")
    ran: list[tuple[int, int]] = []
    handoff.submit(lambda: ran.append((-1, threading.get_ident())))  # unbound: inline
    assert ran == [(-1, threading.get_ident())]
    handoff.bind(asyncio.get_running_loop())
    main = threading.get_ident()

    def record(i: int) -> None:
        ran.append((i, threading.get_ident()))

    def producer() -> None:
        for i in range(500):
            handoff.submit(partial(record, i))

    worker = threading.Thread(target=producer)
    worker.start()
    worker.join()
    await async_wait_until(lambda: len(ran) == 501, 5, "all calls ran")
    assert [i for i, _ in ran[1:]] == list(range(500))
    assert {t for _, t in ran[1:]} == {main}


async def test_handoff_survives_a_failing_call_and_bounds_its_backlog() -> None:
    handoff = Handoff("t", maxlen=3)
    handoff.bind(asyncio.get_running_loop())
    ran: list[int] = []

    def boom() -> None:
        raise ValueError("bad record")

    handoff.submit(boom)
    for i in range(4):
        handoff.submit(partial(ran.append, i))
    assert handoff.dropped == 2  # 3 waiting at most: boom, 0, 1
    await async_wait_until(lambda: len(handoff) == 0, 5, "drained")
    assert ran == [0, 1] and handoff.failed == 1


async def test_uplink_handoff_carries_samples_from_another_thread_and_counts_drops() -> None:
    queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=5)
    uplink = UplinkHandoff(queue)
    uplink.bind(asyncio.get_running_loop())
    sample = Sample("T", "d", 1.0, Quality.GOOD, 0)
    uplink.put_nowait(sample)  # the loop's own thread: straight in
    assert queue.qsize() == 1

    def produce() -> None:
        for _ in range(10):
            uplink.put_nowait(sample)

    worker = threading.Thread(target=produce)
    worker.start()
    worker.join()
    await async_wait_until(lambda: queue.qsize() == 5, 5, "carried over")
    await async_wait_until(lambda: uplink.dropped == 6, 5, "drops counted")
    with pytest.raises(asyncio.QueueFull):
        uplink.put_nowait(sample)  # the loop's thread sees the full queue itself


def test_safety_thread_runs_work_on_its_own_loop_and_stops() -> None:
    thread = SafetyThread("t-safety", switch_interval_s=0.001)
    thread.start()
    try:
        assert thread.alive and thread.loop is not None

        async def where() -> int:
            return threading.get_ident()

        assert thread.submit(where()).result(5) == thread.thread_id != threading.get_ident()
    finally:
        thread.stop()
    wait_until(lambda: not thread.alive, 5, "thread stopped")
    with pytest.raises(RuntimeError, match="not running"):
        thread.submit(where())


def test_safety_thread_raises_its_priority_where_the_process_may() -> None:
    thread = SafetyThread("t-nice", nice=-5)
    thread.start()
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = os.getpriority(os.PRIO_PROCESS, thread.native_id)
        # root or CAP_SYS_NICE: raised; otherwise refused, logged, and left as it was; a
        # process already at -5 or higher keeps its priority (never lowered)
        assert theirs == (-5 if thread.niced else mine)
        assert theirs <= mine
    finally:
        thread.stop()


async def test_uplink_handoff_carries_whole_blocks_from_another_thread() -> None:
    queue = SampleQueue(maxsize=5)
    uplink = UplinkHandoff(queue)
    uplink.bind(asyncio.get_running_loop())
    block = SampleBlock(("A", "B"), "d", [1.0, 2.0], [1, 2])
    assert uplink.put_block(block)  # the loop's own thread: one item, two samples
    assert queue.qsize() == 2

    def produce() -> None:
        for _ in range(3):
            uplink.put_block(block)

    worker = threading.Thread(target=produce)
    worker.start()
    worker.join()
    await async_wait_until(lambda: uplink.dropped == 4, 5, "what did not fit counted")
    assert queue.qsize() == 4  # one more block fitted whole; two were refused whole
    items = queue.take_all()
    assert len(items) == 2 and all(isinstance(i, SampleBlock) and len(i) == 2 for i in items)
    assert uplink.put_block(block) and uplink.put_block(block)
    assert not uplink.put_block(block)  # 2 + 2 + 2 > 5: refused whole, on the loop thread
