"""Bus poller with an in-memory Modbus bus: read plan, decoding, breaker, command priority.

``FakeBus`` is the real :class:`ModbusDriver` (planning, decoding, verify) with its
register-level I/O replaced by dictionaries: a fake at the transport seam."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from device_drivers import DeviceSpec, DeviceTimeout, DeviceUnavailable, PointSpec, Quality, Sample
from device_drivers.modbus import (
    DataType,
    ModbusDriver,
    ModbusPlan,
    ModbusTcpLink,
    Order,
    encode,
    plan_reads,
)
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import PACKAGED_PROFILES, LoadedSite, ModbusTag, SiteConfig, load_profiles
from edge.engine import SafetyEngine
from edge.polling import BusPoller
from tests.support import async_wait_until

PROFILES = load_profiles(PACKAGED_PROFILES)
LOCATION = {"area": "1201 face", "position": "face"}


def tag(name: str, address: int, **kw: Any) -> ModbusTag:
    return ModbusTag.model_validate(
        {"name": name, "profile": "ch4", "address": address, "location": LOCATION, **kw}
    )


def plan_of(tags: list[ModbusTag], **kw: Any) -> ModbusPlan:
    spec = DeviceSpec("dev", 1, tuple(PointSpec(t.name, t.point()) for t in tags))
    return plan_reads(spec, **kw)


class FakeBus(ModbusDriver):
    """A Modbus bus in memory; ``dead`` units time out after ``timeout_s``."""

    def __init__(self, timeout_s: float = 0.2) -> None:
        super().__init__("net", ModbusTcpLink("in-memory", 502), timeout_s)
        self.registers: dict[tuple[int, str], dict[int, int]] = {}
        self.coils: dict[tuple[int, int], bool] = {}
        self.dead: set[int] = set()
        self.unreachable: set[int] = set()
        self.ops: list[tuple[Any, ...]] = []
        self.closed = False

    def set(self, unit: int, table: str, address: int, words: list[int]) -> None:
        regs = self.registers.setdefault((unit, table), {})
        for i, w in enumerate(words):
            regs[address + i] = w

    async def open(self) -> None:
        self.ops.append(("connect",))

    async def close(self) -> None:
        self.closed = True

    async def read_registers(
        self,
        unit: int,
        table: Literal["holding", "input"],
        address: int,
        count: int,
        *,
        device: str | None = None,
        timeout_s: float | None = None,
    ) -> list[int]:
        self.ops.append(("read", unit, table, address, count))
        await asyncio.sleep(0)
        if unit in self.dead:
            await asyncio.sleep(self.timeout_s if timeout_s is None else timeout_s)
            raise DeviceTimeout(f"unit {unit}", "no answer")
        if unit in self.unreachable:
            raise DeviceUnavailable(f"unit {unit}", "connection refused")
        regs = self.registers.get((unit, table), {})
        return [regs.get(a, 0) for a in range(address, address + count)]

    async def read_coils(
        self, unit: int, address: int, count: int, *, device: str | None = None
    ) -> list[bool]:
        self.ops.append(("read_coils", unit, address, count))
        return [self.coils.get((unit, a), False) for a in range(address, address + count)]

    async def write_coil(
        self, unit: int, address: int, value: bool, *, device: str | None = None
    ) -> None:
        self.ops.append(("write", unit, address, value))
        await asyncio.sleep(0)
        if unit in self.dead:
            raise DeviceTimeout(f"unit {unit}", "no answer")
        self.coils[(unit, address)] = value


def make_site(poll_ms: int = 50) -> LoadedSite:
    raw = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_ms": 200}],
        "devices": [
            {
                "id": "ch4-a",
                "bus": "net",
                "unit_id": 1,
                "poll_ms": poll_ms,
                "tags": [
                    {"name": "CH4_A", "profile": "ch4", "address": 0, "location": LOCATION,
                     "actuators": ["power"]},
                ],
            },
            {
                "id": "env",
                "bus": "net",
                "unit_id": 2,
                "poll_ms": poll_ms,
                "tags": [
                    {"name": "CH4_B", "profile": "ch4", "address": 0, "type": "uint16",
                     "scale": 0.01, "location": LOCATION},
                    {"name": "O2", "profile": "o2", "table": "input", "address": 1,
                     "type": "int16", "scale": 0.01, "location": LOCATION},
                    {"name": "CH4_LE", "profile": "ch4", "address": 4, "type": "float32",
                     "word_order": "little", "location": LOCATION},
                ],
            },
            {"id": "breaker", "bus": "net", "unit_id": 10},
        ],
        "actuators": [{"id": "power", "kind": "power_cut", "device": "breaker", "coil": 0}],
    }  # fmt: skip
    return LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)


def f32(value: float, order: Order = Order.BIG) -> list[int]:
    return encode(value, DataType.FLOAT32, word_order=order)


@asynccontextmanager
async def polling(
    site: LoadedSite, bus: FakeBus, sink: Callable[[Sample], object], **kw: Any
) -> AsyncIterator[BusPoller]:
    poller = BusPoller(site, "net", bus, sink, kw.pop("interlock", None) or Interlock(site), **kw)
    task = asyncio.create_task(poller.run(), name="poll:net")
    try:
        yield poller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_plan_merges_small_gaps_and_splits_tables() -> None:
    tags = [
        tag("a", 0),  # float32: 0-1
        tag("b", 2, type="uint16"),
        tag("c", 6, type="uint16"),  # gap of 3 after b: merged
        tag("d", 20, type="uint16"),  # gap of 13: new block
        tag("e", 0, table="input", type="int16"),
    ]
    blocks = [(b.table, b.address, b.count, list(b.points)) for b in plan_of(tags).blocks]
    assert blocks == [
        ("holding", 0, 7, ["a", "b", "c"]),
        ("holding", 20, 1, ["d"]),
        ("input", 0, 1, ["e"]),
    ]


def test_plan_respects_the_125_register_limit() -> None:
    tags = [tag(f"t{i}", 2 * i) for i in range(70)]  # 140 contiguous registers
    blocks = plan_of(tags).blocks
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 16)]
    assert sum(len(b.points) for b in blocks) == 70
    assert plan_of([tag("x", 0), tag("y", 5)], max_gap=2).blocks[1].address == 5


async def test_samples_are_decoded_scaled_and_range_checked() -> None:
    site = make_site()
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.42))
    bus.set(2, "holding", 0, [137])  # 1.37 %
    bus.set(2, "input", 1, encode(-5, DataType.INT16))  # -0.05 % O2: out of range
    bus.set(2, "holding", 4, f32(0.8, Order.LITTLE))
    got: dict[str, Sample] = {}
    async with polling(site, bus, lambda s: got.__setitem__(s.tag, s)):
        await async_wait_until(lambda: len(got) == 4, 5, "one sample per tag")
    assert got["CH4_A"].quality is Quality.GOOD and abs((got["CH4_A"].value or 0) - 0.42) < 1e-6
    assert got["CH4_B"].value == 1.37 and got["CH4_B"].device == "env"
    assert abs((got["CH4_LE"].value or 0) - 0.8) < 1e-6
    o2 = got["O2"]
    assert (o2.quality, o2.reason, o2.value) == (Quality.BAD, "out_of_range", -0.05)
    reads = {op for op in bus.ops if op[0] == "read"}
    # unit 2 needs two requests: holding 0..5 (gap of 3 merged) and input 1
    assert ("read", 2, "holding", 0, 6) in reads and ("read", 2, "input", 1, 1) in reads
    assert bus.closed


async def test_driver_errors_make_every_tag_of_the_device_bad() -> None:
    site = make_site()
    bus = FakeBus()
    bus.unreachable.add(2)
    bad: dict[str, Sample] = {}
    good: list[Sample] = []

    def sink(s: Sample) -> None:
        if s.quality is Quality.BAD:
            bad[s.tag] = s
        else:
            good.append(s)

    async with polling(site, bus, sink):
        await async_wait_until(lambda: len(bad) == 3 and good, 5, "bad samples for env")
    assert {s.reason for s in bad.values()} == {"comms_lost"}
    assert all(s.value is None for s in bad.values())
    assert {s.tag for s in good} == {"CH4_A"}


async def test_dead_device_does_not_delay_its_bus_mate() -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus(timeout_s=0.2)
    bus.set(1, "holding", 0, f32(0.3))
    bus.dead.add(2)
    live: list[float] = []
    dead: list[Sample] = []

    def sink(s: Sample) -> None:
        if s.device == "ch4-a":
            live.append(time.monotonic())
        else:
            dead.append(s)

    async with polling(site, bus, sink, breaker_after=2, breaker_retry_s=30.0) as poller:
        await async_wait_until(lambda: poller.breaker_open("env"), 5, "breaker opens")
        opened_at = len(live)
        await async_wait_until(lambda: len(live) >= opened_at + 20, 10, "20 more live polls")
        window = live[-1] - live[opened_at]
        attempts = poller.read_attempts("env")
    assert attempts == 2  # the dead unit is not retried inside the 30 s breaker period
    assert {s.reason for s in dead} == {"timeout"}
    # 19 intervals at 50 ms; paying the dead unit's 200 ms timeout each cycle would take 3.8 s
    assert window < 2.5, window


async def test_actuator_command_goes_before_the_next_read() -> None:
    site = make_site()
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(2.0))  # over the face cut limit
    bus.set(2, "holding", 0, [30])
    lock = Interlock(site)
    engine = SafetyEngine(site, lock, AlarmManager(site, lambda e: None))
    async with polling(site, bus, engine.handle, interlock=lock):
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 5, "breaker coil set")
    first_read = bus.ops.index(("read", 1, "holding", 0, 2))
    assert bus.ops[first_read + 1] == ("write", 10, 0, True)
    assert bus.ops[first_read + 2] == ("read_coils", 10, 0, 1)  # verified by reading back
    assert lock.written("power") is True
    record = lock.last_write("power")
    assert record is not None and record.ok


async def test_failed_actuator_write_is_retried() -> None:
    site = make_site()
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(2.0))
    bus.dead.add(10)  # the breaker does not answer
    lock = Interlock(site, retry_s=0.05)
    engine = SafetyEngine(site, lock, AlarmManager(site, lambda e: None))
    async with polling(site, bus, engine.handle, interlock=lock) as poller:
        await async_wait_until(lambda: poller.commands_failed >= 2, 5, "two failed writes")
        bus.dead.discard(10)
        await async_wait_until(lambda: lock.written("power") is True, 5, "write succeeds")
    assert lock.writes_failed >= 2


async def test_safety_class_devices_are_polled_first() -> None:
    site = make_site()
    bus = FakeBus()
    async with polling(site, bus, lambda s: None) as poller:
        await async_wait_until(lambda: poller.reads_ok >= 4, 5, "a few polls")
    reads = [op[1] for op in bus.ops if op[0] == "read"]
    # both devices carry safety tags (ch4, o2); on equal class the earlier due goes first
    assert reads[:3] == [1, 2, 2]
    assert poller.device_health("ch4-a").safety and poller.device_health("env").safety


async def test_a_late_poll_is_skipped_and_counted_never_queued_twice() -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus()
    slow = asyncio.Event()
    original = bus.read_registers

    async def stalled(*args: Any, **kw: Any) -> list[int]:
        if args[0] == 2 and not slow.is_set():
            slow.set()
            await asyncio.sleep(0.3)  # six periods of everybody on the bus
        return await original(*args, **kw)

    bus.read_registers = stalled  # type: ignore[method-assign]
    async with polling(site, bus, lambda s: None) as poller:
        await async_wait_until(lambda: slow.is_set(), 5, "the stall")
        await async_wait_until(lambda: poller.reads_ok >= 12, 5, "polling resumes")
    health = poller.device_health("ch4-a")
    assert health.skipped >= 4, health  # the periods that passed during the stall
    # no burst after the stall: reads of unit 1 are never closer than half a period
    assert poller.health.skipped >= health.skipped


async def test_over_and_under_range_values_are_bad_with_their_reason() -> None:
    site = make_site()
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(9.5))  # methane range is 0-4 %: saturated sensor
    bus.set(2, "holding", 4, f32(float("nan"), Order.LITTLE))
    got: dict[str, Sample] = {}
    async with polling(site, bus, lambda s: got.__setitem__(s.tag, s)):
        await async_wait_until(lambda: len(got) == 4, 5, "one sample per tag")
    assert (got["CH4_A"].quality, got["CH4_A"].reason) == (Quality.BAD, "over_range")
    assert got["CH4_A"].value == 9.5
    assert (got["CH4_LE"].reason, got["CH4_LE"].value) == ("decode", None)


async def test_health_reports_latency_errors_and_breaker() -> None:
    site = make_site(poll_ms=50)
    bus = FakeBus(timeout_s=0.05)
    bus.dead.add(2)
    async with polling(site, bus, lambda s: None, breaker_after=2, breaker_retry_s=30.0) as poller:
        await async_wait_until(lambda: poller.breaker_open("env"), 5, "breaker opens")
        await async_wait_until(lambda: poller.device_health("ch4-a").ok >= 3, 5, "good reads")
    live, dead = poller.device_health("ch4-a"), poller.device_health("env")
    assert live.breaker == "closed" and live.latency_avg_s is not None
    assert live.last_good_ns is not None and live.last_good_at is not None
    assert dead.errors == {"timeout": 2} and dead.breaker == "open"
    assert dead.last_good_at is None and dead.last_attempt_at is not None
    report = poller.health.as_dict()
    assert report["reads_failed"] == 2 and report["reads_ok"] >= 3
    assert dead.as_dict()["errors"] == {"timeout": 2}


def _with_background_device(site: LoadedSite) -> LoadedSite:
    """The test site plus a temperature profile of the background class on unit 2's tags."""
    temp = PROFILES["co"].model_copy(update={"id": "temp", "priority": "normal"})
    devices = []
    for device in site.config.devices:
        if device.id == "env":
            tags = tuple(t.model_copy(update={"profile": "temp"}) for t in device.tags)
            device = device.model_copy(update={"tags": tags})
        devices.append(device)
    config = site.config.model_copy(update={"devices": tuple(devices)})
    return site.model_copy(update={"config": config, "profiles": {**PROFILES, "temp": temp}})


async def test_uplink_backpressure_holds_back_background_devices_never_safety() -> None:
    site = _with_background_device(make_site(poll_ms=50))
    bus = FakeBus()
    pressure = [1.0]  # the uplink hand-off is full
    async with polling(site, bus, lambda s: None, backpressure=lambda: pressure[0]) as poller:
        await async_wait_until(lambda: poller.device_health("ch4-a").ok >= 5, 5, "safety polls")
        assert poller.device_health("env").ok == 0
        assert poller.device_health("env").held_back >= 3
        pressure[0] = 0.1  # the uplink caught up
        await async_wait_until(lambda: poller.device_health("env").ok >= 2, 5, "background again")
    assert poller.device_health("ch4-a").safety is not False
    assert poller.health.held_back == poller.device_health("env").held_back


class SwallowingBus(FakeBus):
    """A read that swallows the first cancel, as pymodbus's wait_for does on Python 3.11."""

    swallowed = 0

    async def read_registers(self, *args: Any, **kw: Any) -> list[int]:
        if not self.swallowed:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                type(self).swallowed += 1  # and carry on as if the answer had come
        return await super().read_registers(*args, **kw)


async def test_stop_completes_even_when_a_driver_swallows_the_cancel(tmp_path: Any) -> None:
    from edge.gateway import Gateway

    site = make_site(poll_ms=50)
    bus = SwallowingBus()
    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        driver_factory=lambda _: bus,
        drain_s=0.2,
    )
    task = asyncio.create_task(gateway.run())
    await async_wait_until(lambda: gateway.ready.is_set(), 10, "gateway running")
    # the first read blocks in the swallowing call: nothing was read yet
    await async_wait_until(lambda: ("connect",) in bus.ops, 5, "the poller started")
    assert not [op for op in bus.ops if op[0] == "read"]
    started = time.monotonic()
    gateway.stop()
    await asyncio.wait_for(task, 10)
    assert SwallowingBus.swallowed == 1
    assert time.monotonic() - started < 5


class CountingInterlock(Interlock):
    """Counts the poller's questions to the interlock."""

    calls = 0

    def take_commands(self, bus: str, now: float | None = None) -> list[Any]:
        type(self).calls += 1
        return super().take_commands(bus, now)

    def next_due(self, bus: str, now: float | None = None) -> float | None:
        type(self).calls += 1
        return super().next_due(bus, now)


async def test_a_bus_without_outputs_keeps_its_period_without_asking_the_interlock() -> None:
    """No actuator on the bus: no command can ever be due there, so the poller neither
    looks for one (three times a read before) nor sleeps on the command wake event; it
    still polls on its grid."""
    raw = make_site(poll_ms=50).config.model_dump(mode="json", exclude_none=True)
    raw["devices"] = [d for d in raw["devices"] if d["id"] != "breaker"]
    raw["actuators"] = []
    for device in raw["devices"]:
        for t in device["tags"]:
            t.pop("actuators", None)
    site = LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    starts: list[float] = []
    interlock = CountingInterlock(site)
    async with polling(
        site,
        bus,
        lambda s: starts.append(time.monotonic()) if s.tag == "CH4_A" else None,
        interlock=interlock,
    ) as poller:
        await async_wait_until(lambda: len(starts) >= 12, 5, "a dozen polls")
        assert poller._outputs == {}
    assert CountingInterlock.calls == 0
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert sum(gaps) / len(gaps) > 0.04  # sleeps until the next 50 ms slot: no busy loop


async def test_a_side_read_wakes_a_bus_without_outputs_at_once() -> None:
    """The plain sleep of a bus without outputs still ends when a side read (a waveform
    block) is queued: it does not wait for the next poll, two seconds away."""
    raw = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_ms": 200}],
        "devices": [
            {"id": "roof", "bus": "net", "unit_id": 3, "poll_ms": 2000,
             "tags": [{"name": "ROOF_1", "profile": "roof_separation", "address": 0,
                       "location": LOCATION}]},
        ],
    }  # fmt: skip
    site = LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)
    bus = FakeBus()
    bus.set(3, "holding", 0, f32(1.5))
    seen: list[Sample] = []
    async with polling(site, bus, seen.append) as poller:
        assert not poller.safety_class
        await async_wait_until(lambda: seen, 5, "the first poll")
        await asyncio.sleep(0.05)  # the poller is asleep until its next poll, 2 s away
        began = time.monotonic()
        got = await asyncio.wait_for(poller.side_read(poller.plan("roof")), 5)
        took = time.monotonic() - began
    assert [s.tag for s in got] == ["ROOF_1"] and poller.side_reads == 1
    assert took < 1.0, took
    assert len(seen) == 1  # no poll came between: the side read did not wait for one
