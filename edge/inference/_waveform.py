"""Waveform blocks from the field: a vibration sensor's block registers -> the runner.

A waveform model (``vibration-wear``) reads one block of 2048 acceleration samples, not
the scalar readings the pollers take. :class:`WaveformReader` reads each configured
``inference.waveforms`` source every ``every_s`` through the ordinary Modbus driver
(its own connection to the bus, so a 17-request block read never holds up the safety
polls) and hands complete blocks to :meth:`InferenceRunner.offer_block`. A block with
any bad register, or a device that does not answer, is dropped and counted; it never
reaches the model half-filled. Off the safety path like the runner itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device_drivers import DeviceDriver, DeviceSpec, DriverError, PointSpec, ReadPlan
from device_drivers.modbus import DataType, ModbusPoint
from edge.config import LoadedSite, ModbusRtuOverTcpBus, ModbusTcpBus, WaveformSource
from edge.drivers import DriverFactory, make_driver
from edge.inference._runner import InferenceError, InferenceRunner

__all__ = ["WaveformReader"]

log = logging.getLogger("safewatch.edge.inference.waveform")


@dataclass
class _Source:
    spec: WaveformSource
    bus: str
    plan: ReadPlan
    next_due: float = 0.0


class WaveformReader:
    """Reads the site's waveform sources into the runner (one driver per bus)."""

    def __init__(
        self,
        site: LoadedSite,
        runner: InferenceRunner,
        driver_factory: DriverFactory = make_driver,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self._clock = clock
        self.drivers: dict[str, DeviceDriver] = {}
        self.sources: list[_Source] = []
        for source in site.config.inference.waveforms:
            where = f"{site.source}: inference.waveforms {source.tag!r}"
            device, _ = site.tag(source.tag)
            bus = site.bus(device.bus)
            if not isinstance(bus, ModbusTcpBus | ModbusRtuOverTcpBus):
                raise InferenceError(
                    f"{where}: blocks are read over Modbus TCP only; bus {bus.id!r} is {bus.type}"
                )
            window = runner.block_window(source.tag)
            if window is None:
                raise InferenceError(f"{where}: no waveform model is assigned to this tag")
            if window != source.samples:
                raise InferenceError(
                    f"{where}: {source.samples} samples per block, the model wants {window}"
                )
            kind = DataType(source.type)
            points = tuple(
                PointSpec(f"{source.tag}[{i}]", ModbusPoint(source.table, source.address + i, kind),
                          source.scale)
                for i in range(source.samples)
            )  # fmt: skip
            driver = self.drivers.get(bus.id)
            if driver is None:
                driver = self.drivers[bus.id] = driver_factory(bus)
            plan = driver.plan(DeviceSpec(device.id, device.unit_id, points))
            self.sources.append(_Source(source, bus.id, plan))
        self.blocks = 0
        self.bad_blocks = 0

    def counters(self) -> dict[str, int]:
        return {"waveform_blocks": self.blocks, "waveform_bad_blocks": self.bad_blocks}

    async def read_once(self, source: _Source) -> bool:
        """Read one block and offer it; False (counted, logged) when it is not whole."""
        tag = source.spec.tag
        driver = self.drivers[source.bus]
        try:
            samples = await driver.read(source.plan)
        except DriverError as exc:
            self.bad_blocks += 1
            log.warning("waveform %s: block not read: %s", tag, exc)
            return False
        values = [s.value for s in samples if s.is_good]
        if len(values) != source.spec.samples:
            self.bad_blocks += 1
            bad = next(s for s in samples if not s.is_good)
            log.warning("waveform %s: block dropped: %s is %s", tag, bad.tag, bad.reason)
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
