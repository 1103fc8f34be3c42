"""Bus polling: one task owns one bus driver and is the only one that talks on it.

The poller reads each device at its own ``poll_ms`` with as few requests as
possible (contiguous register blocks, small gaps merged, at most 125
registers a request). Before every read it executes the actuator commands the
interlock has due for its bus, so a power cut waits at most for the one read
in progress. Every sample goes synchronously to the sink (the rule engine);
nothing here waits on the uplink.

A per-device circuit breaker keeps a dead slave from costing its bus-mates
their poll period: after ``breaker_after`` consecutive failures the device is
tried only every ``breaker_retry_s`` and its tags stay BAD meanwhile (which,
for a fail-safe profile, keeps its interlock tripped).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from device_drivers import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    Quality,
    Sample,
)
from device_drivers.modbus import CodecError, decode, register_count, to_engineering
from edge.actuation import ActuatorCommand, Interlock
from edge.config import Device, LoadedSite, Tag

__all__ = ["MAX_READ_REGISTERS", "BusPoller", "ReadBlock", "RegisterDriver", "plan_reads"]

log = logging.getLogger("safewatch.edge.polling")

MAX_READ_REGISTERS = 125  # Modbus limit for one read of holding/input registers
MAX_MERGE_GAP = 4  # read over a gap this small rather than send a second request

Table = Literal["holding", "input"]


class RegisterDriver(Protocol):
    """What a poller needs from a bus driver (``device_drivers.modbus.ModbusTcpDriver``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def read_registers(
        self, unit: int, table: Table, address: int, count: int
    ) -> list[int]: ...

    async def read_coils(self, unit: int, address: int, count: int) -> list[bool]: ...

    async def write_coil(self, unit: int, address: int, value: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers of ``table`` from ``address``, covering ``tags``."""

    table: Table
    address: int
    count: int
    tags: tuple[Tag, ...]


def plan_reads(
    tags: Sequence[Tag],
    *,
    max_count: int = MAX_READ_REGISTERS,
    max_gap: int = MAX_MERGE_GAP,
) -> list[ReadBlock]:
    """Group one device's tags into as few register reads as the limits allow."""
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        ordered = sorted((t for t in tags if t.table == table), key=lambda t: t.address)
        start = end = -1
        members: list[Tag] = []
        for tag in ordered:
            tag_end = tag.address + register_count(tag.type)
            if members and tag.address - end <= max_gap and max(end, tag_end) - start <= max_count:
                end = max(end, tag_end)
                members.append(tag)
                continue
            if members:
                blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = tag.address, tag_end, [tag]
        if members:
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks


def _reason(exc: DriverError) -> str:
    if isinstance(exc, DeviceTimeout):
        return "timeout"
    if isinstance(exc, DeviceUnavailable):
        return "unavailable"
    if isinstance(exc, DeviceException):
        return "exception"
    if isinstance(exc, DecodeError):
        return "decode_error"
    return "error"


@dataclass(slots=True)
class _DeviceSchedule:
    device: Device
    blocks: list[ReadBlock]
    next_due: float = 0.0
    failures: int = 0  # consecutive failed polls
    polls: int = 0
    read_attempts: int = 0
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def period_s(self) -> float:
        return self.device.poll_ms / 1000


SampleSink = Callable[[Sample], object]


class BusPoller:
    """Owns one bus: polls its devices and executes its actuator commands."""

    def __init__(
        self,
        site: LoadedSite,
        bus_id: str,
        driver: RegisterDriver,
        sink: SampleSink,
        interlock: Interlock,
        *,
        breaker_after: int = 3,
        breaker_retry_s: float = 5.0,
        call_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus_id = bus_id
        self.driver = driver
        self.sink = sink
        self.interlock = interlock
        self.breaker_after = breaker_after
        self.breaker_retry_s = breaker_retry_s
        bus = site.bus(bus_id)
        # the driver applies the bus timeout itself; this is a backstop against a hung driver
        self.call_timeout_s = call_timeout_s or bus.timeout_ms / 1000 + 1.0
        self._clock = clock
        self._schedules: dict[str, _DeviceSchedule] = {}
        for device in site.config.devices:
            if device.bus != bus_id or not device.tags:
                continue
            sched = _DeviceSchedule(device, plan_reads(device.tags))
            for tag in device.tags:
                rng = site.profile_of(tag).range
                sched.ranges[tag.name] = (rng.min, rng.max)
            self._schedules[device.id] = sched
        self.reads_ok = 0
        self.reads_failed = 0
        self.commands_written = 0
        self.commands_failed = 0

    # -- introspection (tests, status) ----------------------------------------------

    def blocks(self, device_id: str) -> list[ReadBlock]:
        return list(self._schedules[device_id].blocks)

    def breaker_open(self, device_id: str) -> bool:
        return self._schedules[device_id].failures >= self.breaker_after

    def read_attempts(self, device_id: str) -> int:
        return self._schedules[device_id].read_attempts

    # -- the task --------------------------------------------------------------------

    async def run(self) -> None:
        """Poll forever (until cancelled); closes the driver on the way out."""
        wake = self.interlock.wake_event(self.bus_id)
        try:
            await self._connect()
            start = self._clock()
            for sched in self._schedules.values():
                sched.next_due = start
            while True:
                await self.execute_commands()
                now = self._clock()
                due = sorted(
                    (s for s in self._schedules.values() if s.next_due <= now),
                    key=lambda s: s.next_due,
                )
                for sched in due:
                    await self.execute_commands()  # actuators first, always
                    await self._poll(sched)
                await self._sleep_until_due(wake)
        finally:
            await self._close()

    async def _sleep_until_due(self, wake: asyncio.Event) -> None:
        now = self._clock()
        wake_at = min((s.next_due for s in self._schedules.values()), default=math.inf)
        command_due = self.interlock.next_due(self.bus_id, now)
        if command_due is not None:
            wake_at = min(wake_at, command_due)
        delay = wake_at - now
        if delay <= 0:
            await asyncio.sleep(0)  # let other tasks run between busy cycles
            return
        if math.isinf(delay):
            delay = 1.0  # no devices to poll: still look for commands now and then
        wake.clear()
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            pass

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.connect()
        except (DriverError, TimeoutError) as exc:
            # reads will keep failing (BAD samples) until the driver reconnects
            log.warning("bus %s: cannot connect yet: %s", self.bus_id, exc)

    async def _close(self) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.close()
        except (DriverError, TimeoutError) as exc:
            log.warning("bus %s: close failed: %s", self.bus_id, exc)

    # -- actuator commands -----------------------------------------------------------

    async def execute_commands(self) -> None:
        """Write every actuator command due on this bus now."""
        commands = self.interlock.take_commands(self.bus_id, self._clock())
        for i, command in enumerate(commands):
            try:
                await self._write(command)
            except BaseException:
                self.interlock.release_in_flight(commands[i:])
                raise

    async def _write(self, command: ActuatorCommand) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.write_coil(command.unit, command.coil, command.coil_value)
        except DriverError as exc:
            self.commands_failed += 1
            self.interlock.write_failed(command, f"{_reason(exc)}: {exc}", self._clock())
        except TimeoutError:
            self.commands_failed += 1
            self.interlock.write_failed(command, "timeout: driver did not return", self._clock())
        else:
            self.commands_written += 1
            self.interlock.write_succeeded(command, self._clock())

    # -- reading ---------------------------------------------------------------------

    async def _poll(self, sched: _DeviceSchedule) -> None:
        device = sched.device
        sched.polls += 1
        ok = True
        for block in sched.blocks:
            sched.read_attempts += 1
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    registers = await self.driver.read_registers(
                        device.unit_id, block.table, block.address, block.count
                    )
            except DriverError as exc:
                self._bad_device(sched, _reason(exc), exc)
                ok = False
                break
            except TimeoutError:
                self._bad_device(sched, "timeout", None)
                ok = False
                break
            self.reads_ok += 1
            self._emit_block(sched, block, registers)
        if ok:
            if sched.failures >= self.breaker_after:
                log.info("device %s answers again; polling every %d ms", device.id, device.poll_ms)
            sched.failures = 0
        else:
            sched.failures += 1
            if sched.failures == self.breaker_after:
                log.warning(
                    "device %s failed %d polls in a row; trying it every %.1f s",
                    device.id,
                    sched.failures,
                    self.breaker_retry_s,
                )
        period = sched.period_s
        if sched.failures >= self.breaker_after:
            period = max(period, self.breaker_retry_s)
        now = self._clock()
        # keep the cadence without catching up in a burst after a slow cycle
        sched.next_due = max(sched.next_due + period, now) if ok else now + period

    def _bad_device(self, sched: _DeviceSchedule, reason: str, exc: DriverError | None) -> None:
        self.reads_failed += 1
        if sched.failures == 0:
            log.warning("device %s: read failed (%s): %s", sched.device.id, reason, exc)
        ts = time.time_ns()
        for tag in sched.device.tags:
            self.sink(Sample(tag.name, sched.device.id, None, Quality.BAD, ts, reason))

    def _emit_block(self, sched: _DeviceSchedule, block: ReadBlock, registers: list[int]) -> None:
        ts = time.time_ns()
        for tag in block.tags:
            self.sink(self._decode(sched, tag, block, registers, ts))

    @staticmethod
    def _decode(
        sched: _DeviceSchedule, tag: Tag, block: ReadBlock, registers: list[int], ts: int
    ) -> Sample:
        device = sched.device.id
        first = tag.address - block.address
        words = registers[first : first + register_count(tag.type)]
        try:
            raw = decode(words, tag.type, word_order=tag.word_order, byte_order=tag.byte_order)
        except CodecError:
            return Sample(tag.name, device, None, Quality.BAD, ts, "decode_error")
        value = to_engineering(raw, scale=tag.scale, offset=tag.offset)
        low, high = sched.ranges[tag.name]
        if not math.isfinite(value):
            return Sample(tag.name, device, None, Quality.BAD, ts, "out_of_range")
        if not low <= value <= high:
            return Sample(tag.name, device, value, Quality.BAD, ts, "out_of_range")
        return Sample(tag.name, device, value, Quality.GOOD, ts)
