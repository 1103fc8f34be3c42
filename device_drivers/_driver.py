"""The protocol-neutral driver interface every bus driver implements.

A driver owns one bus (one TCP endpoint, one serial line). The poller that
owns the bus is its only caller, so a driver never has two reads in flight (one
read may be several requests on the wire where the protocol allows: the OPC UA
driver sends a big device's Reads together). The gateway talks to it in four
verbs::

    await driver.open()                      # connect (failures are not fatal: reads retry)
    plan = driver.plan(device)               # pure: coalesce a device's points into requests
    samples = await driver.read(plan)        # one Sample per point, quality judged
    await driver.write(device, output, on)   # set one output point, verified where possible
    await driver.close()

Points and outputs carry a protocol-specific ``address`` (for Modbus a
:class:`device_drivers.modbus.ModbusPoint`); the driver checks its type in
:meth:`DeviceDriver.plan`. Everything else here is protocol-neutral: scaling,
the measuring range a value must fall in, the quality reasons.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from device_drivers._sample import Sample

__all__ = ["DeviceDriver", "DeviceSpec", "OutputSpec", "PointSpec", "ReadPlan"]


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One value to read: its name, its protocol address, scaling and measuring range.

    engineering value = raw * ``scale`` + ``offset``; a value below ``low`` is
    BAD ``out_of_range``, above ``high`` BAD ``over_range``.
    """

    name: str
    address: object
    scale: float = 1.0
    offset: float = 0.0
    # finite defaults: an infinite reading then always falls outside and is judged BAD
    low: float = -sys.float_info.max
    high: float = sys.float_info.max


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device on a bus: its id, its protocol address (Modbus unit) and its points."""

    id: str
    address: object
    points: tuple[PointSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One output point (a relay coil...): its id and its protocol address.

    ``verify``: read the output back after writing it where the device allows.
    """

    id: str
    address: object
    verify: bool = True


class ReadPlan(Protocol):
    """What a driver's plan says about itself (the rest is private to the driver)."""

    @property
    def device(self) -> DeviceSpec: ...

    @property
    def requests(self) -> int:
        """How many requests one read of the device costs."""
        ...


class DeviceDriver(Protocol):
    """One bus's driver. Errors are :class:`device_drivers.DriverError` subclasses."""

    name: str

    async def open(self) -> None:
        """Connect; raise ``DeviceUnavailable`` when the bus cannot be reached yet."""
        ...

    async def close(self) -> None:
        """Disconnect; a later call reconnects."""
        ...

    def plan(self, device: DeviceSpec) -> ReadPlan:
        """Coalesce the device's points into as few requests as the protocol allows.

        Raises ``ValueError`` for an address of the wrong protocol or out of range.
        """
        ...

    async def read(self, plan: ReadPlan, *, timeout_s: float | None = None) -> Sequence[Sample]:
        """Read every point of the plan: one Sample each, in the plan's point order.

        A point that cannot be decoded, or falls outside its range, comes back
        BAD with a reason; a request that fails raises (the whole device is
        then BAD with the error's reason). ``timeout_s`` overrides the bus
        timeout for this read (short probes of a device believed dead).
        """
        ...

    async def write(self, device: DeviceSpec, output: OutputSpec, value: bool) -> bool:
        """Set an output; return True when it was read back and matched.

        Returns False when the device cannot be read back; raises
        ``WriteMismatch`` when the read-back differs.
        """
        ...
