"""Bus poller with an in-memory fake driver: read plan, decoding, breaker, command priority."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from device_drivers import DeviceTimeout, DeviceUnavailable, Quality, Sample
from device_drivers.modbus import DataType, Order, encode
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import PACKAGED_PROFILES, LoadedSite, SiteConfig, Tag, load_profiles
from edge.engine import SafetyEngine
from edge.polling import BusPoller, plan_reads
from tests.support import async_wait_until

PROFILES = load_profiles(PACKAGED_PROFILES)
LOCATION = {"area": "1201 face", "position": "face"}


def tag(name: str, address: int, **kw: Any) -> Tag:
    return Tag.model_validate(
        {"name": name, "profile": "ch4", "address": address, "location": LOCATION, **kw}
    )


class FakeBus:
    """A Modbus bus in memory; ``dead`` units time out after ``timeout_s``."""

    def __init__(self, timeout_s: float = 0.2) -> None:
        self.timeout_s = timeout_s
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

    async def connect(self) -> None:
        self.ops.append(("connect",))

    async def close(self) -> None:
        self.closed = True

    async def read_registers(
        self, unit: int, table: Literal["holding", "input"], address: int, count: int
    ) -> list[int]:
        self.ops.append(("read", unit, table, address, count))
        await asyncio.sleep(0)
        if unit in self.dead:
            await asyncio.sleep(self.timeout_s)
            raise DeviceTimeout(f"unit {unit}", "no answer")
        if unit in self.unreachable:
            raise DeviceUnavailable(f"unit {unit}", "connection refused")
        regs = self.registers.get((unit, table), {})
        return [regs.get(a, 0) for a in range(address, address + count)]

    async def read_coils(self, unit: int, address: int, count: int) -> list[bool]:
        return [self.coils.get((unit, a), False) for a in range(address, address + count)]

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
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
    blocks = [(b.table, b.address, b.count, [t.name for t in b.tags]) for b in plan_reads(tags)]
    assert blocks == [
        ("holding", 0, 7, ["a", "b", "c"]),
        ("holding", 20, 1, ["d"]),
        ("input", 0, 1, ["e"]),
    ]


def test_plan_respects_the_125_register_limit() -> None:
    tags = [tag(f"t{i}", 2 * i) for i in range(70)]  # 140 contiguous registers
    blocks = plan_reads(tags)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 16)]
    assert sum(len(b.tags) for b in blocks) == 70
    assert plan_reads([tag("x", 0), tag("y", 5)], max_gap=2)[1].address == 5


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
    assert {s.reason for s in bad.values()} == {"unavailable"}
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
