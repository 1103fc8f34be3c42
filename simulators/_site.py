"""Serve a whole site's Modbus devices from the same YAML the gateway reads.

One pymodbus TCP server per bus, on the bus's host:port; every device of the
bus is a unit (its ``unit_id``) with its own holding registers, input
registers and coils, sized to cover the addresses its tags and actuators use.
Reads outside those ranges answer "illegal data address".

Fault injection: :meth:`SiteSimulator.set_offline` makes one unit stay silent
(the client times out) while its bus-mates keep answering;
:meth:`SiteSimulator.set_failing` makes it answer every request with
"server device failure".
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from device_drivers.modbus import decode, encode, from_engineering, to_engineering
from edge.config import Actuator, Device, LoadedSite, Tag

__all__ = ["CoilWriteHook", "SimulatorError", "SiteSimulator"]

log = logging.getLogger(__name__)

CoilWriteHook = Callable[[str, bool, int], None]
"""``on_coil_write(actuator_id, value, t_ns)``, called in the server's event loop."""

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
    actuators: dict[int, Actuator]  # coil address -> actuator
    offline: bool = False
    failing: bool = False

    def table(self, func_code: int) -> list[int] | list[bool] | None:
        if func_code in _HOLDING_FUNCTIONS:
            return self.holding
        if func_code in _INPUT_FUNCTIONS:
            return self.input
        if func_code in _COIL_FUNCTIONS:
            return self.coils
        return None


def _size(addresses: Sequence[int]) -> int:
    return max(addresses) + 1 if addresses else 0


class _BusContext(ModbusServerContext):
    """The datastore pymodbus calls for one bus: our units, our rules.

    pymodbus 3.16 routes a request to ``async_getValues``/``async_setValues``
    and answers an :class:`ExcCodes` as an exception response. With
    ``ignore_missing_devices`` a :class:`NoSuchIdException` means "stay silent",
    which is how an offline unit behaves.
    """

    def __init__(self, units: dict[int, _Unit], on_coil: Callable[[_Unit, int, bool], None]):
        # Deliberately not calling ModbusServerContext.__init__: it converts the
        # deprecated block datastores; we implement the two datastore calls ourselves.
        self.old_simulator = True  # tells ModbusBaseServer to call this object directly
        self.simdevices = []
        self._units = units
        self._on_coil = on_coil

    def _unit(self, device_id: int) -> _Unit:
        unit = self._units.get(device_id)
        if unit is None or unit.offline:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return unit

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        unit = self._unit(device_id)
        if unit.failing:
            return ExcCodes.DEVICE_FAILURE
        table = unit.table(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or count < 1 or address + count > len(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return list(table[address : address + count])

    async def async_setValues(
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        unit = self._unit(device_id)
        if unit.failing:
            return ExcCodes.DEVICE_FAILURE
        if func_code in _COIL_FUNCTIONS:
            if address < 0 or address + len(values) > len(unit.coils):
                return ExcCodes.ILLEGAL_ADDRESS
            for i, value in enumerate(values):
                unit.coils[address + i] = bool(value)
                self._on_coil(unit, address + i, bool(value))
            return None
        if func_code in _HOLDING_FUNCTIONS:
            if address < 0 or address + len(values) > len(unit.holding):
                return ExcCodes.ILLEGAL_ADDRESS
            for i, value in enumerate(values):
                unit.holding[address + i] = int(value) & 0xFFFF
            return None
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return list(self._units)


@dataclass
class _Bus:
    id: str
    host: str
    port: int
    units: dict[int, _Unit] = field(default_factory=dict)
    server: ModbusTcpServer | None = None


class SiteSimulator:
    """Every bus, device, tag and actuator of a site, served over Modbus TCP.

    Tags start at their profile's ``nominal`` value; actuator coils start
    inactive (``not active_value``).
    """

    def __init__(self, site: LoadedSite, *, on_coil_write: CoilWriteHook | None = None) -> None:
        self.site = site
        self.on_coil_write = on_coil_write
        self.value_log: deque[tuple[int, str, float]] = deque(maxlen=_LOG_LENGTH)
        self.coil_log: deque[tuple[int, str, bool]] = deque(maxlen=_LOG_LENGTH)
        self._buses: dict[str, _Bus] = {}
        self._units_by_device: dict[str, _Unit] = {}
        self._tags: dict[str, tuple[_Unit, Tag]] = {}
        self._actuators: dict[str, tuple[_Unit, Actuator]] = {}
        cfg = site.config
        for bus in cfg.buses:
            self._buses[bus.id] = _Bus(bus.id, bus.host, bus.port)
        for device in cfg.devices:
            acts = {a.coil: a for a in cfg.actuators if a.device == device.id}
            unit = _Unit(
                device=device,
                holding=[0]
                * _size([r for t in device.tags if t.table == "holding" for r in t.registers]),
                input=[0]
                * _size([r for t in device.tags if t.table == "input" for r in t.registers]),
                coils=[False] * _size(list(acts)),
                actuators=acts,
            )
            for coil, act in acts.items():
                unit.coils[coil] = not act.active_value
                self._actuators[act.id] = (unit, act)
            self._buses[device.bus].units[device.unit_id] = unit
            self._units_by_device[device.id] = unit
            for tag in device.tags:
                self._tags[tag.name] = (unit, tag)
                self._write(unit, tag, site.profile_of(tag).nominal)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, str, int, list[int]]]:
        """``(bus_id, host, port, unit_ids)`` for every bus."""
        return [(b.id, b.host, b.port, sorted(b.units)) for b in self._buses.values()]

    @property
    def serving(self) -> bool:
        return any(b.server is not None for b in self._buses.values())

    async def start(self) -> None:
        """Listen on every bus; raise :class:`SimulatorError` if one cannot listen."""
        try:
            for bus in self._buses.values():
                if bus.server is not None:
                    continue
                server = ModbusTcpServer(
                    _BusContext(bus.units, self._coil_written),
                    address=(bus.host, bus.port),
                    ignore_missing_devices=True,  # offline units stay silent
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

    async def stop(self) -> None:
        """Close every listener and client connection."""
        for bus in self._buses.values():
            server, bus.server = bus.server, None
            if server is not None:
                await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> SiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- values ------------------------------------------------------------------------

    def _tag(self, name: str) -> tuple[_Unit, Tag]:
        try:
            return self._tags[name]
        except KeyError:
            raise KeyError(f"unknown tag {name!r}") from None

    def _write(self, unit: _Unit, tag: Tag, value: float) -> None:
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

    def coil(self, actuator_id: str) -> bool:
        """The actuator's coil as last written (by a client, or the initial state)."""
        unit, act = self._actuator(actuator_id)
        return unit.coils[act.coil]

    def _actuator(self, actuator_id: str) -> tuple[_Unit, Actuator]:
        try:
            return self._actuators[actuator_id]
        except KeyError:
            raise KeyError(f"unknown actuator {actuator_id!r}") from None

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

    def set_failing(self, device_id: str, failing: bool) -> None:
        """A failing unit answers every request with exception 4 (server device failure)."""
        self._unit_of(device_id).failing = failing
