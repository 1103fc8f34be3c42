"""Waveform blocks from the field: a vibration sensor's block -> the runner.

A waveform model (``vibration-wear``) reads one block of 2048 acceleration samples, not
the scalar readings the pollers take. :class:`WaveformReader` reads each configured
``inference.waveforms`` source every ``every_s`` and hands complete blocks to
:meth:`InferenceRunner.offer_block`, by the device's bus:

- **Modbus TCP / RTU over TCP**: the block registers through the ordinary Modbus driver on
  its own connection to the bus (17 requests for 2048 registers), so a block read never
  holds up the safety polls;
- **OPC UA**: one Read of the block's array variable on its own session;
- **Modbus RTU**: a serial line has one master, so the block's requests go through that
  line's :class:`~edge.polling.BusPoller` as side reads, one request at a time in the
  schedule's slack (the site check refuses blocks on a line with safety-class tags).

A block with any bad value, or a device that does not answer, is dropped and counted; it
never reaches the model half-filled. Off the safety path like the runner itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device_drivers import DeviceDriver, DeviceSpec, DriverError, PointSpec, ReadPlan, Sample
from device_drivers.modbus import DataType, ModbusPoint
from edge.config import (
    LoadedSite,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTcpBus,
    OpcUaBus,
    WaveformSource,
)
from edge.drivers import DriverFactory, make_driver
from edge.inference._runner import InferenceError, InferenceRunner

__all__ = ["LineReader", "WaveformReader"]

log = logging.getLogger("safewatch.edge.inference.waveform")

_CHUNK = 125  # registers per Modbus read request


class LineReader(Protocol):
    """What a shared line's owner offers the waveform reader (:class:`BusPoller`)."""

    driver: DeviceDriver

    async def side_read(self, plan: ReadPlan) -> Sequence[Sample]: ...


@dataclass
class _Source:
    spec: WaveformSource
    bus: str
    device: str
    plan: ReadPlan | None = None  # own Modbus connection: the whole block
    chunks: tuple[ReadPlan, ...] = ()  # a shared RTU line: one plan per request
    opcua: bool = False
    next_due: float = 0.0


class WaveformReader:
    """Reads the site's waveform sources into the runner."""

    def __init__(
        self,
        site: LoadedSite,
        runner: InferenceRunner,
        driver_factory: DriverFactory = make_driver,
        *,
        lines: Mapping[str, LineReader] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self._clock = clock
        self._lines = dict(lines or {})
        self.drivers: dict[str, DeviceDriver] = {}
        self.sources: list[_Source] = []
        for source in site.config.inference.waveforms:
            where = f"{site.source}: inference.waveforms {source.tag!r}"
            device, _ = site.tag(source.tag)
            bus = site.bus(device.bus)
            window = runner.block_window(source.tag)
            if window is None:
                raise InferenceError(f"{where}: no waveform model is assigned to this tag")
            if window != source.samples:
                raise InferenceError(
                    f"{where}: {source.samples} samples per block, the model wants {window}"
                )
            if isinstance(bus, OpcUaBus):
                if source.address is not None:
                    raise InferenceError(f"{where}: bus {bus.id!r} is OPC UA; give 'node'")
                self._driver(bus, driver_factory)
                self.sources.append(_Source(source, bus.id, device.id, opcua=True))
                continue
            if not isinstance(bus, ModbusTcpBus | ModbusRtuOverTcpBus | ModbusRtuBus):
                raise InferenceError(f"{where}: bus {bus.id!r} ({bus.type}) carries no blocks")
            if source.address is None:
                raise InferenceError(f"{where}: bus {bus.id!r} is Modbus; give 'address'")
            kind = DataType(source.type)
            points = tuple(
                PointSpec(f"{source.tag}[{i}]", ModbusPoint(source.table, source.address + i, kind),
                          source.scale)
                for i in range(source.samples)
            )  # fmt: skip
            if isinstance(bus, ModbusRtuBus):
                line = self._lines.get(bus.id)
                if line is None:
                    raise InferenceError(f"{where}: RTU line {bus.id!r} has no poller to share")
                chunks = tuple(
                    line.driver.plan(DeviceSpec(device.id, device.unit_id, points[i : i + _CHUNK]))
                    for i in range(0, len(points), _CHUNK)
                )
                self.sources.append(_Source(source, bus.id, device.id, chunks=chunks))
                continue
            driver = self._driver(bus, driver_factory)
            plan = driver.plan(DeviceSpec(device.id, device.unit_id, points))
            self.sources.append(_Source(source, bus.id, device.id, plan=plan))
        self.blocks = 0
        self.bad_blocks = 0

    def _driver(self, bus: ModbusTcpBus | ModbusRtuOverTcpBus | OpcUaBus,
                factory: DriverFactory) -> DeviceDriver:  # fmt: skip
        driver = self.drivers.get(bus.id)
        if driver is None:
            driver = self.drivers[bus.id] = factory(bus)
        return driver

    def counters(self) -> dict[str, int]:
        return {"waveform_blocks": self.blocks, "waveform_bad_blocks": self.bad_blocks}

    async def _values(self, source: _Source) -> list[float] | str:
        """The block's engineering values, or why there is no whole block."""
        if source.opcua:
            from device_drivers.opcua import OpcUaDriver

            driver = self.drivers[source.bus]
            assert isinstance(driver, OpcUaDriver)
            raw = await driver.read_array(source.device, source.spec.opcua_point())
            if len(raw) != source.spec.samples:
                return f"{len(raw)} values, the block has {source.spec.samples}"
            scale = source.spec.scale
            return [v * scale for v in raw]
        samples: list[Sample] = []
        if source.plan is not None:
            samples.extend(await self.drivers[source.bus].read(source.plan))
        else:
            line = self._lines[source.bus]
            for chunk in source.chunks:
                samples.extend(await line.side_read(chunk))
        values = [s.value for s in samples if s.is_good and s.value is not None]
        if len(values) != source.spec.samples:
            bad = next((s for s in samples if not s.is_good), None)
            return f"{bad.tag} is {bad.reason}" if bad is not None else "short block"
        return values

    async def read_once(self, source: _Source) -> bool:
        """Read one block and offer it; False (counted, logged) when it is not whole."""
        tag = source.spec.tag
        try:
            values = await self._values(source)
        except DriverError as exc:
            self.bad_blocks += 1
            log.warning("waveform %s: block not read: %s", tag, exc)
            return False
        if isinstance(values, str):
            self.bad_blocks += 1
            log.warning("waveform %s: block dropped: %s", tag, values)
            return False
        self.runner.offer_block(tag, np.asarray(values, dtype=np.float64))
        self.blocks += 1
        return True

    async def run(self) -> None:
        """Read every source when it is due, until cancelled."""
        for driver in self.drivers.values():
            try:
                await driver.open()
            except DriverError as exc:  # reads retry (the driver reconnects)
                log.warning("waveform bus %s: %s", driver.name, exc)
        try:
            while True:
                now = self._clock()
                for source in self.sources:
                    if now >= source.next_due:
                        source.next_due = now + source.spec.every_s
                        await self.read_once(source)
                due = min(s.next_due for s in self.sources)
                await asyncio.sleep(max(0.05, due - self._clock()))
        finally:
            for driver in self.drivers.values():
                await driver.close()
