"""The Modbus driver behind the protocol-neutral seam, against real peers.

- plan + read through :class:`DeviceDriver` against the simulator, over Modbus TCP and
  over RTU-over-TCP (the same driver, another framer);
- a malformed answer (short or over-long PDU) fails that one request as a decode error
  and the shared connection stays up;
- a write is read back and a mismatch is flagged;
- a cancel always reaches the caller, even while pymodbus is answering;
- register reads take the lean path (our request, pymodbus's framer, no transaction
  layer): the same registers as pymodbus's own client reads, garbage reported as garbage,
  frames split anywhere, another unit's or an earlier request's answer skipped; coil
  reads and writes still go through pymodbus's client, with the same guard.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from device_drivers import (
    DecodeError,
    DeviceDriver,
    DeviceTimeout,
    DeviceUnavailable,
    OutputSpec,
    Quality,
    WriteMismatch,
)
from device_drivers.modbus import ModbusCoil, ModbusDriver, ModbusTcpDriver, ModbusTcpLink
from edge.config import LoadedSite, load_site
from edge.drivers import device_spec, make_driver, output_spec
from simulators import SiteSimulator
from tests.support import free_port

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
DEMO_TEXT = (ROOT / "firmware_configs" / "sites" / "demo-mine.yaml").read_text(encoding="utf-8")


def _site(tmp_path: Path, bus_type: str) -> LoadedSite:
    text = DEMO_TEXT.replace("type: modbus_tcp", f"type: {bus_type}").replace(
        "port: 5020", f"port: {free_port()}"
    )
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


@pytest.mark.parametrize("bus_type", ["modbus_tcp", "modbus_rtu_over_tcp"])
async def test_read_and_write_through_the_seam(tmp_path: Path, bus_type: str) -> None:
    site = _site(tmp_path, bus_type)
    driver: DeviceDriver = make_driver(site.config.buses[0])
    async with SiteSimulator(site) as sim:
        sim.set_value("CO_1201", 4000.0)  # over the CO sensor's 0-1000 ppm range
        try:
            await driver.open()
            env = device_spec(site, site.device("env-1201"))
            plan = driver.plan(env)
            assert plan.requests == 1  # CO and O2 share one input-register read
            got = {s.tag: s for s in await driver.read(plan)}
            o2 = got["O2_1201"]
            assert o2.quality is Quality.GOOD and o2.value == pytest.approx(20.9)
            co = got["CO_1201"]
            assert (co.quality, co.reason, co.value) == (Quality.BAD, "over_range", 4000.0)
            breaker = device_spec(site, site.device("breaker-1201"))
            output = output_spec(site.actuator("power-1201"))
            assert await driver.write(breaker, output, True) is True  # read back and matched
            assert sim.coil("power-1201") is True
        finally:
            await driver.close()


class _RawPeer:
    """A Modbus TCP peer that answers each request with what ``answer`` builds
    (``split``: one byte per TCP segment)."""

    def __init__(self, answer: Callable[[int, int, int, int], bytes], split: bool = False) -> None:
        self.answer = answer
        self.split = split
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                frame = await reader.readexactly(12)
                tid, _, _, unit, fc, _address, count = struct.unpack(">HHHBBHH", frame)
                answer = self.answer(tid, unit, fc, count)
                for chunk in (
                    [answer[i : i + 1] for i in range(len(answer))] if self.split else [answer]
                ):
                    writer.write(chunk)
                    await writer.drain()
                    if self.split:
                        await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
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


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def test_malformed_answers_fail_one_request_not_the_connection() -> None:
    calls = 0

    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        nonlocal calls
        calls += 1
        good = struct.pack(">BB", fc, 2 * count) + b"\x00\x07" * count
        if calls == 1:  # short: the byte count promises more than the PDU holds
            return _mbap(tid, unit, struct.pack(">BB", fc, 200) + b"\x00\x01")
        if calls == 2:  # over-long: more registers than asked for
            return _mbap(
                tid, unit, struct.pack(">BB", fc, 2 * count + 4) + b"\x00\x07" * (count + 2)
            )
        return _mbap(tid, unit, good)

    async with _RawPeer(answer) as port:
        drv = ModbusTcpDriver("garbage", "127.0.0.1", port, 0.5)
        try:
            with pytest.raises(DecodeError, match="malformed"):
                await drv.read_registers(1, "holding", 0, 2)
            with pytest.raises(DecodeError, match="got 4 register"):
                await drv.read_registers(1, "holding", 0, 2)
            assert await drv.read_registers(1, "holding", 0, 2) == [7, 7]
            assert drv.connected and drv.garbage_frames == 1
        finally:
            await drv.close()


class _StuckCoil(ModbusDriver):
    """A relay whose contact does not follow the command (welded)."""

    def __init__(self) -> None:
        super().__init__("stuck", ModbusTcpLink("in-memory", 502), 0.2)

    async def write_coil(
        self, unit: int, address: int, value: bool, *, device: str | None = None
    ) -> None:
        return None

    async def read_coils(
        self, unit: int, address: int, count: int, *, device: str | None = None
    ) -> list[bool]:
        return [False] * count


async def test_write_read_back_mismatch_is_flagged(tmp_path: Path) -> None:
    site = _site(tmp_path, "modbus_tcp")
    breaker = device_spec(site, site.device("breaker-1201"))
    drv = _StuckCoil()
    with pytest.raises(WriteMismatch, match="reads back False") as caught:
        await drv.write(breaker, OutputSpec("power", ModbusCoil(0)), True)
    assert caught.value.reason == "verify_mismatch"
    assert await drv.write(breaker, OutputSpec("power", ModbusCoil(0), verify=False), True) is False


async def test_cancel_reaches_the_caller_while_a_request_is_answered() -> None:
    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        return _mbap(tid, unit, struct.pack(">BB", fc, 2 * count) + b"\x00\x01" * count)

    async with _RawPeer(answer) as port:
        drv = ModbusTcpDriver("cancel", "127.0.0.1", port, 1.0)
        try:
            await drv.open()
            for attempt in range(30):  # cancel lands at every moment of a request's life
                task = asyncio.create_task(drv.read_registers(1, "holding", 0, 2))
                await asyncio.sleep(0)
                for _ in range(attempt % 4):
                    await asyncio.sleep(0)
                task.cancel()
                done, _pending = await asyncio.wait([task], timeout=2)
                assert done, "a cancel was swallowed"
                if not task.cancelled():
                    assert task.result() == [1, 1]  # finished before the cancel landed
            assert await drv.read_registers(1, "holding", 0, 2) == [1, 1]
        finally:
            await drv.close()


async def test_silent_unit_times_out_with_a_short_probe_timeout(tmp_path: Path) -> None:
    site = _site(tmp_path, "modbus_tcp")
    async with SiteSimulator(site) as sim:
        sim.set_offline("ch4-1201-t1", True)
        drv = make_driver(site.config.buses[0])
        try:
            plan = drv.plan(device_spec(site, site.device("ch4-1201-t1")))
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DeviceTimeout):
                await drv.read(plan, timeout_s=0.05)
            assert loop.time() - started < 0.3  # not the bus's 500 ms
        finally:
            await drv.close()


@pytest.mark.parametrize("bus_type", ["modbus_tcp", "modbus_rtu_over_tcp"])
async def test_lean_register_reads_match_pymodbus_reads(tmp_path: Path, bus_type: str) -> None:
    """Every block of every device of the demo site, read by the lean path and by
    pymodbus's own client on the same simulator: the same registers."""
    from device_drivers.modbus import make_client

    site = _site(tmp_path, bus_type)
    bus = site.config.buses[0]
    drv = make_driver(bus)
    assert isinstance(drv, ModbusDriver)
    async with SiteSimulator(site) as sim:
        sim.set_value("CO_1201", 37.5)
        client = make_client(drv.link, name="oracle", timeout_s=1.0, trace_connect=lambda _: None)
        try:
            assert await client.connect()
            compared = 0
            for device in site.config.devices:
                if device.bus != bus.id or not device.tags:
                    continue
                plan = drv.plan(device_spec(site, device))
                for block in plan.blocks:
                    read = (
                        client.read_holding_registers
                        if block.table == "holding"
                        else client.read_input_registers
                    )
                    oracle = await read(block.address, count=block.count, device_id=plan.unit)
                    got = await drv.read_registers(
                        plan.unit, block.table, block.address, block.count
                    )
                    assert got == oracle.registers, (device.id, block)
                    compared += 1
            assert compared >= 3
        finally:
            client.close()
            await drv.close()


async def test_lean_read_reports_garbage_as_garbage() -> None:
    """A wrong function code and an odd byte count fail that one read as a decode error
    (counted), not as a timeout; the connection stays up."""
    calls = 0

    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        nonlocal calls
        calls += 1
        good = struct.pack(">BB", fc, 2 * count) + b"\x00\x05" * count
        if calls == 1:  # an answer to another function
            return _mbap(tid, unit, struct.pack(">BB", 4, 2 * count) + b"\x00\x05" * count)
        if calls == 2:  # an odd byte count
            return _mbap(tid, unit, struct.pack(">BB", fc, 3) + b"\x00\x05\x00")
        return _mbap(tid, unit, good)

    async with _RawPeer(answer) as port:
        drv = ModbusTcpDriver("garbage", "127.0.0.1", port, 0.5)
        loop = asyncio.get_running_loop()
        try:
            for expected in ("function code 4", "byte_count 3"):
                started = loop.time()
                with pytest.raises(DecodeError, match=expected):
                    await drv.read_registers(1, "holding", 0, 2)
                assert loop.time() - started < 0.4  # at once, not at the timeout
            assert await drv.read_registers(1, "holding", 0, 2) == [5, 5]
            assert drv.connected and drv.garbage_frames == 2
        finally:
            await drv.close()


async def test_lean_read_frames_split_answers_and_skips_other_units() -> None:
    """An answer arriving one byte per segment is framed whole; an answer of another
    unit, or of another transaction (a late one), in front of the right one is skipped."""
    stray = 0

    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        nonlocal stray
        stray += 1
        good = _mbap(tid, unit, struct.pack(">BB", fc, 2 * count) + b"\x01\x02" * count)
        if stray % 2:  # another unit's answer, then another transaction's, then ours
            other = _mbap(tid, unit + 1, struct.pack(">BB", fc, 2 * count) + b"\xff" * 2 * count)
            late = _mbap(tid + 100, unit, struct.pack(">BB", fc, 2 * count) + b"\xee" * 2 * count)
            return other + late + good
        return good

    async with _RawPeer(answer, split=True) as port:
        drv = ModbusTcpDriver("split", "127.0.0.1", port, 2.0)
        try:
            for count in (1, 2, 60, 125):
                got = await drv.read_registers(7, "input", 10, count)
                assert got == [0x0102] * count
            assert drv.garbage_frames == 0 and drv.connected
        finally:
            await drv.close()


async def test_coil_reads_still_go_through_the_guarded_pymodbus_path() -> None:
    """Coils are read by pymodbus's client: a malformed coil answer fails that one
    request (decode error), and register reads on the lean path go on beside it."""
    coil_calls = 0

    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        nonlocal coil_calls
        if fc == 1:
            coil_calls += 1
            if coil_calls == 1:  # a function code pymodbus cannot decode
                return _mbap(tid, unit, struct.pack(">BB", 0x41, 1) + b"\x01")
            return _mbap(tid, unit, struct.pack(">BBB", fc, 1, 0b101))
        return _mbap(tid, unit, struct.pack(">BB", fc, 2 * count) + b"\x00\x09" * count)

    async with _RawPeer(answer) as port:
        drv = ModbusTcpDriver("coils", "127.0.0.1", port, 0.5)
        try:
            with pytest.raises(DecodeError, match="malformed"):
                await drv.read_coils(1, 0, 3)
            assert await drv.read_registers(1, "holding", 0, 2) == [9, 9]
            assert await drv.read_coils(1, 0, 3) == [True, False, True]
            assert await drv.read_registers(1, "holding", 4, 1) == [9]
            assert drv.connected and drv.garbage_frames == 1
        finally:
            await drv.close()


async def test_lean_read_fails_at_once_when_the_peer_closes() -> None:
    """The peer closes the connection while a register read waits: that read fails at
    once as 'no connection' (not at its timeout), nothing else is left with an error
    nobody reads (asyncio would log it), and the next read reconnects."""
    calls = 0

    def answer(tid: int, unit: int, fc: int, count: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError  # the peer drops the connection without answering
        return _mbap(tid, unit, struct.pack(">BB", fc, 2 * count) + b"\x00\x03" * count)

    async with _RawPeer(answer) as port:
        drv = ModbusTcpDriver("closing", "127.0.0.1", port, 3.0)
        loop = asyncio.get_running_loop()
        try:
            await drv.open()
            # pymodbus's own response future, which no lean read awaits
            unused = drv._client.ctx.response_future  # type: ignore[union-attr]
            started = loop.time()
            with pytest.raises(DeviceUnavailable) as caught:
                await drv.read_registers(1, "holding", 0, 2)
            assert loop.time() - started < 1.5  # not the 3 s timeout
            assert not unused.done()  # no error left in it for asyncio to log as unread
            assert caught.value.reason == "comms_lost"
            assert await drv.read_registers(1, "holding", 0, 2) == [3, 3]
        finally:
            await drv.close()
