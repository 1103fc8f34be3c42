"""ModbusTcpDriver against a real SiteSimulator (pymodbus server) on a free port.

Also against a deliberately misbehaving raw Modbus TCP peer, to hold the
driver (and the pymodbus version under it) to "a late answer is never taken as
the answer to the next request".
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_drivers import DeviceException, DeviceTimeout, DeviceUnavailable
from device_drivers.modbus import DataType, ModbusTcpDriver, Order, decode, to_engineering
from edge.config import LoadedSite, ModbusTag, ModbusTcpBus, load_site
from simulators import SimulatorError, SiteSimulator
from tests.support import async_wait_until, free_port

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
DEMO_SITE = ROOT / "firmware_configs" / "sites" / "demo-mine.yaml"
TIMEOUT_S = 0.3


def _tcp(site: LoadedSite) -> ModbusTcpBus:
    bus = site.config.buses[0]
    assert isinstance(bus, ModbusTcpBus)
    return bus


def _on_port(site: LoadedSite, port: int) -> LoadedSite:
    bus = site.config.buses[0].model_copy(update={"port": port})
    return site.model_copy(update={"config": site.config.model_copy(update={"buses": (bus,)})})


@pytest.fixture
def site() -> LoadedSite:
    return _on_port(load_site(DEMO_SITE), free_port())


@pytest.fixture
async def sim(site: LoadedSite) -> AsyncIterator[SiteSimulator]:
    simulator = SiteSimulator(site)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def driver(site: LoadedSite) -> AsyncIterator[ModbusTcpDriver]:
    bus = _tcp(site)
    drv = ModbusTcpDriver(
        bus.id, bus.host, bus.port, TIMEOUT_S, backoff_initial_s=0.05, backoff_max_s=0.2
    )
    try:
        yield drv
    finally:
        await drv.close()


# -- every data type and order, end to end --------------------------------------------

# (type, word order, byte order, scale, engineering value); values are exact after scaling
_TYPED = [
    (t, w, b, scale, value)
    for t, scale, value in [
        (DataType.INT16, 0.01, -12.34),
        (DataType.UINT16, 0.1, 4321.5),
        (DataType.INT32, 0.001, -123456.789),
        (DataType.UINT32, 1.0, 3_000_000_000.0),
        (DataType.FLOAT32, 1.0, 1.5),
    ]
    for w in Order
    for b in Order
]


def _typed_site(tmp_path: Path, port: int) -> LoadedSite:
    lines = []
    for i, (t, w, b, scale, _) in enumerate(_TYPED):
        lines.append(
            f"      - name: T{i}\n"
            f"        profile: ch4\n"
            f"        table: {'holding' if i % 2 == 0 else 'input'}\n"
            f"        address: {i * 2}\n"
            f"        type: {t}\n"
            f"        word_order: {w}\n"
            f"        byte_order: {b}\n"
            f"        scale: {scale}\n"
            f"        location: {{area: lab, position: face}}\n"
        )
    text = (
        "site: {id: lab}\n"
        "gateway: {id: gw-lab}\n"
        f"buses:\n  - {{id: lab-net, type: modbus_tcp, host: 127.0.0.1, port: {port}}}\n"
        "devices:\n"
        "  - id: typed\n"
        "    bus: lab-net\n"
        "    unit_id: 7\n"
        "    tags:\n" + "".join(lines)
    )
    path = tmp_path / "lab.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


async def test_reads_every_type_and_order_back(tmp_path: Path) -> None:
    site = _typed_site(tmp_path, free_port())
    bus = _tcp(site)
    async with SiteSimulator(site) as sim:
        drv = ModbusTcpDriver(bus.id, bus.host, bus.port, TIMEOUT_S)
        try:
            for i, (_, _, _, _, value) in enumerate(_TYPED):
                sim.set_value(f"T{i}", value)
            for (_, tag), (t, w, b, scale, value) in zip(site.tags(), _TYPED, strict=True):
                assert isinstance(tag, ModbusTag)
                regs = await drv.read_registers(7, tag.table, tag.address, len(tag.registers))
                raw = decode(regs, t, word_order=w, byte_order=b)
                got = to_engineering(raw, scale=scale)
                assert got == pytest.approx(value, rel=1e-9), (tag.name, t, w, b)
                assert got == sim.value(tag.name)
        finally:
            await drv.close()


async def test_demo_site_nominal_values(sim: SiteSimulator, driver: ModbusTcpDriver) -> None:
    regs = await driver.read_registers(1, "holding", 0, 2)
    assert decode(regs, DataType.FLOAT32) == pytest.approx(0.3)  # ch4 nominal
    assert await driver.read_registers(2, "holding", 0, 1) == [30]  # 0.3 % / 0.01
    assert await driver.read_registers(3, "input", 0, 2) == [20, 2090]  # CO 2.0/0.1, O2 20.9/0.01
    assert driver.connected


async def test_value_changes_are_seen_and_logged(
    sim: SiteSimulator, driver: ModbusTcpDriver
) -> None:
    before = time.monotonic_ns()
    sim.set_value("CH4_1201_T1", 1.6)
    sim.set_value("O2_1201", 17.5)
    assert decode(await driver.read_registers(1, "holding", 0, 2), DataType.FLOAT32) == (
        pytest.approx(1.6)
    )
    assert decode(await driver.read_registers(3, "input", 1, 1), DataType.INT16) == 1750
    assert [(tag, v) for _, tag, v in sim.value_log] == [("CH4_1201_T1", 1.6), ("O2_1201", 17.5)]
    assert all(t >= before for t, _, _ in sim.value_log)


# -- actuators ------------------------------------------------------------------------


async def test_coil_write_reaches_the_simulator(site: LoadedSite, driver: ModbusTcpDriver) -> None:
    seen: list[tuple[str, bool, int]] = []
    async with SiteSimulator(site, on_coil_write=lambda a, v, t: seen.append((a, v, t))) as sim:
        assert sim.coil("power-1201") is False  # starts inactive
        assert await driver.read_coils(10, 0, 1) == [False]
        before = time.monotonic_ns()
        await driver.write_coil(10, 0, True)
        assert sim.coil("power-1201") is True
        assert await driver.read_coils(10, 0, 1) == [True]
        [(t_ns, actuator, value)] = sim.coil_log
        assert (actuator, value) == ("power-1201", True)
        assert before <= t_ns <= time.monotonic_ns()
        assert seen == [("power-1201", True, t_ns)]
        await driver.write_coil(10, 0, False)
        assert sim.coil("power-1201") is False
        assert [(a, v) for _, a, v in sim.coil_log] == [("power-1201", True), ("power-1201", False)]


# -- faults ---------------------------------------------------------------------------


async def test_offline_unit_times_out_while_bus_mates_answer(
    sim: SiteSimulator, driver: ModbusTcpDriver
) -> None:
    await driver.connect()
    sim.set_offline("ch4-1201-t1", True)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout) as info:
        await driver.read_registers(1, "holding", 0, 2, device="ch4-1201-t1")
    elapsed = time.monotonic() - started
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 0.5
    assert info.value.device == "ch4-1201-t1"
    assert isinstance(info.value.__cause__, TimeoutError)
    # a bus-mate on the same connection answers at once, and with its own data
    assert await driver.read_registers(2, "holding", 0, 1) == [30]
    assert await driver.read_registers(3, "input", 0, 2) == [20, 2090]
    assert driver.connected
    sim.set_offline("ch4-1201-t1", False)
    regs = await driver.read_registers(1, "holding", 0, 2)
    assert decode(regs, DataType.FLOAT32) == pytest.approx(0.3)


async def test_unknown_unit_times_out(sim: SiteSimulator, driver: ModbusTcpDriver) -> None:
    with pytest.raises(DeviceTimeout):
        await driver.read_registers(42, "holding", 0, 1)


async def test_illegal_address_is_a_device_exception(
    sim: SiteSimulator, driver: ModbusTcpDriver
) -> None:
    with pytest.raises(DeviceException, match=r"exception 2 \(illegal data address\)"):
        await driver.read_registers(2, "holding", 1, 1)  # unit 2 has one holding register
    with pytest.raises(DeviceException, match="exception 2"):
        await driver.read_registers(3, "holding", 0, 1)  # unit 3 has input registers only
    with pytest.raises(DeviceException, match="exception 2"):
        await driver.write_coil(10, 5, True)
    # the connection is still good
    assert await driver.read_registers(2, "holding", 0, 1) == [30]


async def test_failing_unit_answers_device_failure(
    sim: SiteSimulator, driver: ModbusTcpDriver
) -> None:
    sim.set_failing("env-1201", True)
    with pytest.raises(DeviceException, match="exception 4"):
        await driver.read_registers(3, "input", 0, 2)
    sim.set_failing("env-1201", False)
    assert await driver.read_registers(3, "input", 0, 2) == [20, 2090]


async def test_nothing_listening_is_unavailable_then_backs_off(site: LoadedSite) -> None:
    bus = _tcp(site)
    drv = ModbusTcpDriver(bus.id, bus.host, bus.port, TIMEOUT_S, backoff_initial_s=5.0)
    with pytest.raises(DeviceUnavailable, match="cannot connect"):
        await drv.read_registers(1, "holding", 0, 2)
    assert not drv.connected
    # while backing off the caller is told at once, not blocked for the backoff
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable, match="next reconnect attempt in"):
        await drv.read_registers(1, "holding", 0, 2)
    assert time.monotonic() - started < 0.05
    # an explicit connect ignores the backoff (and fails again here)
    with pytest.raises(DeviceUnavailable):
        await drv.connect()
    await drv.close()


async def test_driver_recovers_when_the_simulator_restarts(
    site: LoadedSite, driver: ModbusTcpDriver
) -> None:
    sim = SiteSimulator(site)
    await sim.start()
    try:
        assert await driver.read_registers(2, "holding", 0, 1) == [30]
        await sim.stop()
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable):
            await driver.read_registers(2, "holding", 0, 1)
        assert time.monotonic() - started < TIMEOUT_S  # a lost connection fails fast
        assert not driver.connected

        sim = SiteSimulator(site)
        sim.set_value("CH4_1201_T2", 0.77)
        await sim.start()

        got: list[list[int]] = []

        async def reads() -> bool:
            try:
                got.append(await driver.read_registers(2, "holding", 0, 1))
            except DeviceUnavailable:
                return False
            return True

        reconnected: bool = await async_wait_until(reads, 5, "driver reconnects")
        assert reconnected
        assert got == [[77]]
        assert driver.connected
    finally:
        await sim.stop()


async def test_second_simulator_on_a_busy_port_refuses(
    sim: SiteSimulator, site: LoadedSite
) -> None:
    other = SiteSimulator(site)
    with pytest.raises(SimulatorError, match="cannot listen"):
        await other.start()
    assert not other.serving


async def test_argument_checks(driver: ModbusTcpDriver) -> None:
    with pytest.raises(ValueError, match="count"):
        await driver.read_registers(1, "holding", 0, 126)
    with pytest.raises(ValueError, match="unit"):
        await driver.read_coils(256, 0, 1)
    with pytest.raises(ValueError, match="address"):
        await driver.read_registers(1, "input", 65535, 2)


# -- late answers ---------------------------------------------------------------------


class _LateAnswerPeer:
    """A raw Modbus TCP peer that holds its answer to the FIRST request and sends
    it only once the second request has arrived, just before answering that one.

    A client that matched answers to requests by arrival order would return the
    first request's registers (0xDEAD...) as the answer to the second request.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[int, int, int, int]] = []  # (tid, unit, address, count)
        self.server: asyncio.Server | None = None

    @staticmethod
    def _answer(tid: int, unit: int, registers: list[int]) -> bytes:
        pdu = struct.pack(">BB", 3, 2 * len(registers)) + b"".join(
            struct.pack(">H", r) for r in registers
        )
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: bytes | None = None
        try:
            while True:
                frame = await reader.readexactly(12)  # MBAP (7) + read-holding PDU (5)
                tid, _, _, unit, fc, address, count = struct.unpack(">HHHBBHH", frame)
                assert fc == 3
                self.requests.append((tid, unit, address, count))
                if len(self.requests) == 1:
                    held = self._answer(tid, unit, [0xDEAD] * count)
                    continue  # no answer yet: the client times out
                if held is not None:
                    writer.write(held)  # the late answer, in its own segment
                    await writer.drain()
                    held = None
                    await asyncio.sleep(0.05)
                writer.write(self._answer(tid, unit, list(range(1, count + 1))))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_late_answer_is_never_taken_for_the_next_request() -> None:
    peer = _LateAnswerPeer()
    async with peer as port:
        drv = ModbusTcpDriver("late", "127.0.0.1", port, TIMEOUT_S)
        try:
            with pytest.raises(DeviceTimeout):
                await drv.read_registers(1, "holding", 0, 2)
            # the 0xDEAD answer to the first request arrives while this one waits
            assert await drv.read_registers(1, "holding", 0, 2) == [1, 2]
            assert await drv.read_registers(1, "holding", 0, 3) == [1, 2, 3]
            assert drv.connected  # handled without dropping the connection
        finally:
            await drv.close()
    tids = [tid for tid, *_ in peer.requests]
    assert len(tids) == 3
    assert len(set(tids)) == 3  # every request had its own transaction id
