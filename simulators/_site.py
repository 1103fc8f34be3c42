"""Serve a whole site's Modbus devices from the same YAML the gateway reads.

One pymodbus TCP server per bus, on the bus's host:port; every device of the
bus is a unit (its ``unit_id``) with its own holding registers, input
registers and coils, sized to cover the addresses its tags and actuators use.
Reads outside those ranges answer "illegal data address".

Fault injection: :meth:`SiteSimulator.set_offline` makes one unit stay silent
(the client times out) while its bus-mates keep answering;
:meth:`SiteSimulator.set_failing` makes it answer every request with
"server device failure"; :meth:`SiteSimulator.set_slow` answers late;
:meth:`SiteSimulator.set_garbled` sends every n-th answer of an RTU-framed bus
(RTU line or RTU over TCP) with a bad CRC, as line noise would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from device_drivers.modbus import DataType, decode, encode, from_engineering, to_engineering
from edge.config import (
    Device,
    LoadedSite,
    ModbusActuator,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTag,
    OpcUaBus,
    SerialLineBus,
    WaveformSource,
)
from simulators._pty import NullModem

__all__ = ["CoilWriteHook", "ReadHook", "SimulatorError", "SiteSimulator"]

log = logging.getLogger(__name__)

CoilWriteHook = Callable[[str, bool, int], None]
"""``on_coil_write(actuator_id, value, t_ns)``, called in the server's event loop."""

ReadHook = Callable[[str, int], None]
"""``on_read(device_id, t_ns)``: a register read of that device was answered (monotonic ns)."""

_LOG_LENGTH = 100_000

# Modbus function codes -> the table they address.
_COIL_FUNCTIONS = {1, 5, 15}
_HOLDING_FUNCTIONS = {3, 6, 16, 22, 23}
_INPUT_FUNCTIONS = {4}


class SimulatorError(RuntimeError):
    """The simulator cannot serve (e.g. a bus port is already in use)."""


@dataclass
class _Unit:
    device: Device
    holding: list[int]
    input: list[int]
    coils: list[bool]
    actuators: dict[int, ModbusActuator]  # coil address -> actuator
    offline: bool = False
    failing: bool = False
    slow_s: float = 0.0  # answer this much later (a slow device)


def _size(addresses: Sequence[int]) -> int:
    return max(addresses) + 1 if addresses else 0


# The catch-all unit stays silent for reads up to this far past the bus's highest register.
# Not the whole 65,536-register map: 100 buses of that were 26 million list slots that every
# full garbage collection walked (a 100-register read took 200 ms).
_SILENT_MARGIN = 125


def _register_block(size: int) -> list[SimData]:
    if size == 0:
        return [SimData(0, datatype=SimType.INVALID)]
    return [SimData(0, count=size, values=0, datatype=SimType.REGISTERS)]


def _coil_block(values: list[bool]) -> list[SimData]:
    # pymodbus maps bits in whole registers; the action refuses coils past the unit's own
    return [SimData(0, values=list(values) or [False], datatype=SimType.BITS)]


def _sim_device(
    unit_id: int,
    unit: _Unit,
    on_coil: Callable[[_Unit, int, bool], None],
    on_read: Callable[[_Unit], None] | None = None,
) -> SimDevice:
    """One unit in pymodbus's current datastore (``SimDevice``): pymodbus checks the
    address map, our action serves values from (and stores writes into) the unit."""

    async def action(
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if unit.slow_s > 0:
            await asyncio.sleep(unit.slow_s)
        if unit.offline:
            raise NoSuchIdException(f"unit {unit_id} does not answer")  # stays silent
        if unit.failing:
            return ExcCodes.DEVICE_FAILURE
        if func_code in _COIL_FUNCTIONS:
            if address + len(set_values or [None]) > len(unit.coils):
                return ExcCodes.ILLEGAL_ADDRESS
            if set_values:
                for i, value in enumerate(set_values):
                    unit.coils[address + i] = bool(value)
                    on_coil(unit, address + i, bool(value))
            return None
        if func_code in _HOLDING_FUNCTIONS:
            table = unit.holding
        elif func_code in _INPUT_FUNCTIONS:
            table = unit.input
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        first = address - start_address
        if set_values:
            table[address : address + len(set_values)] = [int(v) & 0xFFFF for v in set_values]
        else:
            registers[first : first + count] = table[address : address + count]
            if on_read is not None:
                on_read(unit)
        return None

    return SimDevice(
        unit_id,
        simdata=(
            _coil_block(unit.coils),
            [SimData(0, values=[False], datatype=SimType.BITS)],  # no discrete inputs
            _register_block(len(unit.holding)),
            _register_block(len(unit.input)),
        ),
        action=action,
    )


def _silent_device(registers: int) -> SimDevice:
    """Unit 0 is pymodbus's catch-all: any unit the site does not define stays silent."""

    async def action(*_: object) -> ExcCodes | None:
        raise NoSuchIdException("no such unit")

    return SimDevice(
        0,
        simdata=(
            [SimData(0, count=2000, values=False, datatype=SimType.BITS)],
            [SimData(0, values=[False], datatype=SimType.BITS)],
            _register_block(registers),
            _register_block(registers),
        ),
        action=action,
    )


@dataclass
class _Bus:
    id: str
    host: str
    port: int
    rtu_framing: bool = False
    serial: ModbusRtuBus | None = None  # an RS-485 line, served on a pty null modem
    units: dict[int, _Unit] = field(default_factory=dict)
    server: ModbusTcpServer | ModbusSerialServer | None = None
    modem: NullModem | None = None
    garble_every: int = 0  # RTU framing: every n-th answer goes out with a bad CRC
    answers: int = 0
    crc_bad_sent: int = 0

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's hook on every frame in and out: damage the CRC of every n-th answer."""
        if not sending or not self.rtu_framing or not data:
            return data
        self.answers += 1
        if self.garble_every and self.answers % self.garble_every == 0:
            self.crc_bad_sent += 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    @property
    def where(self) -> str:
        return self.serial.port if self.serial is not None else f"{self.host}:{self.port}"


class SiteSimulator:
    """Every bus, device, tag and actuator of a site, served over Modbus TCP.

    Tags start at their profile's ``nominal`` value; actuator coils start
    inactive (``not active_value``).
    """

    def __init__(
        self,
        site: LoadedSite,
        *,
        on_coil_write: CoilWriteHook | None = None,
        on_read: ReadHook | None = None,
        pace_serial: bool = True,
    ) -> None:
        self.site = site
        self.pace_serial = pace_serial
        self.on_coil_write = on_coil_write
        self.on_read = on_read
        self.value_log: deque[tuple[int, str, float]] = deque(maxlen=_LOG_LENGTH)
        self.coil_log: deque[tuple[int, str, bool]] = deque(maxlen=_LOG_LENGTH)
        self._buses: dict[str, _Bus] = {}
        self._units_by_device: dict[str, _Unit] = {}
        self._tags: dict[str, tuple[_Unit, ModbusTag]] = {}
        self._actuators: dict[str, tuple[_Unit, ModbusActuator]] = {}
        self._waveforms: dict[str, tuple[_Unit, WaveformSource]] = {}
        cfg = site.config
        for bus in cfg.buses:
            if isinstance(bus, OpcUaBus | SerialLineBus):
                continue  # served by OpcUaSimulator / SerialLineSimulator
            if isinstance(bus, ModbusRtuBus):
                self._buses[bus.id] = _Bus(bus.id, "", 0, rtu_framing=True, serial=bus)
                continue
            rtu = isinstance(bus, ModbusRtuOverTcpBus)
            self._buses[bus.id] = _Bus(bus.id, bus.host, bus.port, rtu_framing=rtu)
        for device in cfg.devices:
            if device.bus not in self._buses:
                continue  # a device of another protocol's bus
            acts = {
                a.coil: a
                for a in cfg.actuators
                if a.device == device.id and isinstance(a, ModbusActuator)
            }
            tags = [t for t in device.tags if isinstance(t, ModbusTag)]
            unit = _Unit(
                device=device,
                holding=[0] * _size([r for t in tags if t.table == "holding" for r in t.registers]),
                input=[0] * _size([r for t in tags if t.table == "input" for r in t.registers]),
                coils=[False] * _size(list(acts)),
                actuators=acts,
            )
            for coil, act in acts.items():
                unit.coils[coil] = not act.active_value
                self._actuators[act.id] = (unit, act)
            self._buses[device.bus].units[device.unit_id] = unit
            self._units_by_device[device.id] = unit
            for tag in tags:
                self._tags[tag.name] = (unit, tag)
                self._write(unit, tag, site.profile_of(tag).nominal)
        for source in cfg.inference.waveforms:  # block registers of vibration sensors
            found = self._units_by_device.get(site.tag(source.tag)[0].id)
            if found is None or source.address is None:
                continue
            table = found.holding if source.table == "holding" else found.input
            table.extend([0] * max(0, source.address + source.samples - len(table)))
            self._waveforms[source.tag] = (found, source)
            self.set_wear(source.tag, 0)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, str, int, list[int]]]:
        """``(bus_id, host, port, unit_ids)`` for every TCP bus."""
        return [
            (b.id, b.host, b.port, sorted(b.units))
            for b in self._buses.values()
            if b.serial is None
        ]

    def lines(self) -> list[tuple[str, str, NullModem | None, list[int]]]:
        """``(bus_id, port, null modem, unit_ids)`` for every serial RTU bus."""
        return [
            (b.id, b.where, b.modem, sorted(b.units))
            for b in self._buses.values()
            if b.serial is not None
        ]

    @property
    def serving(self) -> bool:
        return any(b.server is not None for b in self._buses.values())

    async def start(self) -> None:
        """Listen on every bus; raise :class:`SimulatorError` if one cannot listen."""
        try:
            for bus in self._buses.values():
                if bus.server is not None:
                    continue
                devices = [
                    _sim_device(
                        u,
                        unit,
                        self._coil_written,
                        self._read_served if self.on_read is not None else None,
                    )
                    for u, unit in bus.units.items()
                ]
                if 0 not in bus.units:
                    size = max(
                        [len(u.holding) for u in bus.units.values()]
                        + [len(u.input) for u in bus.units.values()]
                        + [0]
                    )
                    devices.append(_silent_device(min(65535, size + _SILENT_MARGIN)))
                if bus.serial is not None:
                    await self._serve_line(bus, devices)
                    continue
                server = ModbusTcpServer(
                    devices,
                    address=(bus.host, bus.port),
                    framer=FramerType.RTU if bus.rtu_framing else FramerType.SOCKET,
                    ignore_missing_devices=True,  # offline units stay silent
                    trace_packet=bus.trace_packet,
                )
                try:
                    await server.serve_forever(background=True)
                except RuntimeError as exc:
                    raise SimulatorError(
                        f"bus {bus.id}: cannot listen on {bus.host}:{bus.port} "
                        "(address in use or not local?)"
                    ) from exc
                bus.server = server
        except BaseException:
            await self.stop()
            raise

    async def _serve_line(self, bus: _Bus, devices: list[SimDevice]) -> None:
        """An RTU line: a pty null modem whose gateway end appears at the bus's ``port``
        (a symlink), and pymodbus's serial server on the other end."""
        line = bus.serial
        assert line is not None
        modem = NullModem(
            baudrate=line.baudrate if self.pace_serial else None,
            char_bits=line.char_bits,
            link_a=line.port,
        )
        try:
            await modem.start()
        except OSError as exc:
            raise SimulatorError(f"bus {bus.id}: cannot create {line.port}: {exc}") from exc
        bus.modem = modem
        server = ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=modem.b,
            baudrate=line.baudrate,
            # a pty carries no parity bit, and Linux refuses to re-apply PARENB on one
            parity="N",
            stopbits=line.stopbits,
            bytesize=line.bytesize,
            ignore_missing_devices=True,
            trace_packet=bus.trace_packet,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise SimulatorError(f"bus {bus.id}: cannot serve on {modem.b}") from exc
        bus.server = server

    async def stop(self) -> None:
        """Close every listener and client connection."""
        for bus in self._buses.values():
            server, bus.server = bus.server, None
            if server is not None:
                await server.shutdown()  # type: ignore[no-untyped-call]
            modem, bus.modem = bus.modem, None
            if modem is not None:
                await modem.stop()

    async def __aenter__(self) -> SiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- values ------------------------------------------------------------------------

    def _tag(self, name: str) -> tuple[_Unit, ModbusTag]:
        try:
            return self._tags[name]
        except KeyError:
            raise KeyError(f"unknown tag {name!r}") from None

    def _write(self, unit: _Unit, tag: ModbusTag, value: float) -> None:
        raw = from_engineering(value, scale=tag.scale, offset=tag.offset)
        registers = encode(raw, tag.type, word_order=tag.word_order, byte_order=tag.byte_order)
        table = unit.holding if tag.table == "holding" else unit.input
        table[tag.address : tag.address + len(registers)] = registers

    def set_value(self, tag: str, value: float) -> None:
        """Set a tag's engineering value; raises ``CodecError`` if it cannot be encoded."""
        unit, spec = self._tag(tag)
        self._write(unit, spec, value)
        self.value_log.append((time.monotonic_ns(), tag, value))

    def value(self, tag: str) -> float:
        """The tag's engineering value as a client would decode it now."""
        unit, spec = self._tag(tag)
        table = unit.holding if spec.table == "holding" else unit.input
        regs = table[spec.address : spec.address + len(spec.registers)]
        raw = decode(regs, spec.type, word_order=spec.word_order, byte_order=spec.byte_order)
        return to_engineering(raw, scale=spec.scale, offset=spec.offset)

    def tags(self) -> list[str]:
        return list(self._tags)

    def set_waveform(self, tag: str, values: Sequence[float]) -> None:
        """Put one waveform block (engineering units) into ``tag``'s block registers;
        values past the register type's range are clipped, as a sensor's ADC would."""
        try:
            unit, source = self._waveforms[tag]
        except KeyError:
            raise KeyError(f"no waveform block for tag {tag!r}") from None
        if len(values) != source.samples:
            raise ValueError(f"{tag}: {len(values)} values, the block has {source.samples}")
        kind = DataType(source.type)
        low, high = (-32768, 32767) if kind is DataType.INT16 else (0, 65535)
        table = unit.holding if source.table == "holding" else unit.input
        start = source.address or 0  # always set for a Modbus block
        table[start : start + source.samples] = [
            encode(min(high, max(low, round(from_engineering(v, scale=source.scale)))), kind)[0]
            for v in values
        ]

    def set_wear(self, tag: str, stage: int, seed: int = 7) -> None:
        """Serve a synthetic bearing block of wear ``stage`` (0 healthy .. 3 severe)."""
        from simulators.synthetic import vibration_blocks  # numpy only when used

        source = self._waveforms[tag][1] if tag in self._waveforms else None
        if source is None:
            raise KeyError(f"no waveform block for tag {tag!r}")
        block = vibration_blocks(seed, [stage], block=source.samples).values[0]
        self.set_waveform(tag, block.tolist())

    def coil(self, actuator_id: str) -> bool:
        """The actuator's coil as last written (by a client, or the initial state)."""
        unit, act = self._actuator(actuator_id)
        return unit.coils[act.coil]

    def _actuator(self, actuator_id: str) -> tuple[_Unit, ModbusActuator]:
        try:
            return self._actuators[actuator_id]
        except KeyError:
            raise KeyError(f"unknown actuator {actuator_id!r}") from None

    def _read_served(self, unit: _Unit) -> None:
        if self.on_read is None:
            return
        try:
            self.on_read(unit.device.id, time.monotonic_ns())
        except Exception:  # a faulty observer must not fail the Modbus read
            log.exception("on_read hook failed for %s", unit.device.id)

    def _coil_written(self, unit: _Unit, address: int, value: bool) -> None:
        act = unit.actuators.get(address)
        if act is None:
            return
        t_ns = time.monotonic_ns()
        self.coil_log.append((t_ns, act.id, value))
        if self.on_coil_write is not None:
            try:
                self.on_coil_write(act.id, value, t_ns)
            except Exception:  # a faulty observer must not fail the Modbus write
                log.exception("on_coil_write hook failed for %s", act.id)

    # -- faults ------------------------------------------------------------------------

    def _unit_of(self, device_id: str) -> _Unit:
        try:
            return self._units_by_device[device_id]
        except KeyError:
            raise KeyError(f"unknown device {device_id!r}") from None

    def set_offline(self, device_id: str, offline: bool) -> None:
        """An offline unit does not answer at all; its bus-mates keep answering."""
        self._unit_of(device_id).offline = offline

    def set_slow(self, device_id: str, delay_s: float) -> None:
        """Answer every request of this unit ``delay_s`` late (0: on time)."""
        self._unit_of(device_id).slow_s = max(0.0, delay_s)

    def _bus(self, bus_id: str) -> _Bus:
        try:
            return self._buses[bus_id]
        except KeyError:
            raise KeyError(f"unknown Modbus bus {bus_id!r}") from None

    def set_garbled(self, bus_id: str, every: int) -> None:
        """Send every ``every``-th answer on this RTU-framed bus with a bad CRC (0: none)."""
        bus = self._bus(bus_id)
        if not bus.rtu_framing:
            raise ValueError(f"bus {bus_id!r} has no CRC to damage (Modbus TCP framing)")
        bus.garble_every = max(0, every)

    def crc_bad_sent(self, bus_id: str) -> int:
        """Answers sent with a damaged CRC so far on this bus."""
        return self._bus(bus_id).crc_bad_sent

    def set_failing(self, device_id: str, failing: bool) -> None:
        """A failing unit answers every request with exception 4 (server device failure)."""
        self._unit_of(device_id).failing = failing
