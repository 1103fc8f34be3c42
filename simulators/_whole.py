"""A whole site simulated at once: Modbus TCP, OPC UA and serial, from one site file.

:class:`WholeSiteSimulator` owns a :class:`SiteSimulator` (Modbus TCP and RTU
over TCP), an :class:`OpcUaSimulator` (every ``opcua`` bus) and a
:class:`SerialLineSimulator` (every ``serial`` bus, on ptys), and routes each
tag, output and fault to the one that serves it. ``safewatch sim run`` and the
scenario player use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge.config import LoadedSite, OpcUaBus, SerialLineBus
from simulators._opcua import OpcUaSimulator
from simulators._serial import SerialLineSimulator
from simulators._site import SiteSimulator

__all__ = ["WholeSiteSimulator"]

OutputHook = Callable[[str, bool, int], None]


class WholeSiteSimulator:
    """Every bus of a site served by the simulator of its protocol."""

    def __init__(
        self,
        site: LoadedSite,
        *,
        on_output_write: OutputHook | None = None,
        serial_interval_s: float = 0.5,
    ) -> None:
        self.site = site
        self.modbus = SiteSimulator(site, on_coil_write=on_output_write)
        self.opcua = OpcUaSimulator(site, on_output_write=on_output_write)
        self.serial = SerialLineSimulator(site, interval_s=serial_interval_s)
        self._owner: dict[str, SiteSimulator | OpcUaSimulator | SerialLineSimulator] = {}
        for sim in (self.modbus, self.opcua, self.serial):
            for tag in sim.tags():
                self._owner[tag] = sim
        self._held: set[str] = set()  # tags a stuck-value fault freezes

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.modbus.start()
            await self.opcua.start()
            await self.serial.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.serial.stop()
        await self.opcua.stop()
        await self.modbus.stop()

    async def __aenter__(self) -> WholeSiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def describe(self) -> list[str]:
        """One line per served bus: where a gateway finds it."""
        out = [
            f"{bus}: modbus {host}:{port} units {', '.join(map(str, units))}"
            for bus, host, port, units in self.modbus.endpoints
        ]
        out += [f"{bus}: opcua {url}" for bus, url in self.opcua.endpoints]
        out += [f"{bus}: serial {port}" for bus, port in self.serial.ports]
        return out

    # -- values ------------------------------------------------------------------------

    def tags(self) -> list[str]:
        return list(self._owner)

    def set_value(self, tag: str, value: float) -> None:
        if tag in self._held:
            return
        try:
            sim = self._owner[tag]
        except KeyError:
            raise KeyError(f"unknown tag {tag!r}") from None
        sim.set_value(tag, value)

    def value(self, tag: str) -> float:
        return self._owner[tag].value(tag)

    def set_waveform(self, tag: str, values: list[float]) -> None:
        """Serve one waveform block (engineering units) where ``tag``'s block lives."""
        if tag in self.opcua.waveform_tags():
            self.opcua.set_waveform(tag, values)
        else:
            self.modbus.set_waveform(tag, values)

    def set_wear(self, tag: str, stage: int, seed: int = 7) -> None:
        """Serve a synthetic bearing block of wear ``stage`` (0 healthy .. 3 severe)."""
        from simulators.synthetic import vibration_blocks  # numpy only when used

        source = next((w for w in self.site.config.inference.waveforms if w.tag == tag), None)
        if source is None:
            raise KeyError(f"no waveform block for tag {tag!r}")
        block = vibration_blocks(seed, [stage], block=source.samples).values[0]
        self.set_waveform(tag, block.tolist())

    def hold(self, tag: str, held: bool) -> None:
        """A stuck sensor: the tag keeps its present value while held."""
        if held:
            self._held.add(tag)
        else:
            self._held.discard(tag)

    def output(self, actuator_id: str) -> bool:
        """An actuator's output as last written (Modbus coil or OPC UA variable)."""
        try:
            return self.modbus.coil(actuator_id)
        except KeyError:
            return self.opcua.output(actuator_id)

    # -- faults ------------------------------------------------------------------------

    async def set_dead(self, device_id: str, dead: bool) -> None:
        """The device stops answering (Modbus unit silent, OPC UA server down, detector mute)."""
        bus = self.site.bus(self.site.device(device_id).bus)
        if isinstance(bus, OpcUaBus):
            await self.opcua.set_offline(bus.id, dead)
        elif isinstance(bus, SerialLineBus):
            self.serial.set_silent(bus.id, dead)
        else:
            self.modbus.set_offline(device_id, dead)

    def set_slow(self, device_id: str, delay_s: float) -> None:
        """The device answers ``delay_s`` late: a Modbus unit's answers, every answer of an
        OPC UA server (reads, publishes, keep-alives), a serial detector's lines (one every
        ``delay_s``). 0: on time again."""
        bus = self.site.bus(self.site.device(device_id).bus)
        if isinstance(bus, OpcUaBus):
            self.opcua.set_slow(bus.id, delay_s)
        elif isinstance(bus, SerialLineBus):
            self.serial.set_slow(bus.id, delay_s)
        else:
            self.modbus.set_slow(device_id, delay_s)

    def set_garbled(self, bus_id: str, every: int) -> None:
        """Every ``every``-th line of a serial detector garbled, or every ``every``-th answer
        of an RTU-framed Modbus bus sent with a bad CRC (0: none)."""
        if isinstance(self.site.bus(bus_id), SerialLineBus):
            self.serial.set_garbled(bus_id, every)
        else:
            self.modbus.set_garbled(bus_id, every)

    async def restart_opcua(self, bus_id: str, down_s: float) -> None:
        await self.opcua.restart(bus_id, down_s=down_s)

    def set_cable(self, bus_id: str, plugged: bool) -> None:
        if plugged:
            self.serial.plug_cable(bus_id)
        else:
            self.serial.pull_cable(bus_id)

    async def settle(self) -> None:
        """Push pending OPC UA values now (tests)."""
        await self.opcua.flush()
        await asyncio.sleep(0)
