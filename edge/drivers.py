"""From configuration to drivers: one driver per bus, driver specs per device and output.

The only place in the gateway that knows which driver serves which bus
``type``; the poller sees :class:`device_drivers.DeviceDriver` only.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from device_drivers import DeviceDriver, DeviceSpec, OutputSpec, PointSpec
from device_drivers.modbus import ModbusDriver, ModbusSerialLink, ModbusTcpLink
from device_drivers.serial import SerialLineDriver, SerialLink
from edge.config import (
    AnyActuator,
    AnyBus,
    Device,
    LoadedSite,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTcpBus,
    OpcUaBus,
    SerialLineBus,
)

__all__ = ["DriverFactory", "device_spec", "make_driver", "output_spec"]

DriverFactory = Callable[[AnyBus], DeviceDriver]


def make_driver(bus: AnyBus) -> DeviceDriver:
    """The driver for one configured bus."""
    timeout_s = bus.timeout_ms / 1000
    if isinstance(bus, ModbusTcpBus):
        return ModbusDriver(bus.id, ModbusTcpLink(bus.host, bus.port), timeout_s)
    if isinstance(bus, ModbusRtuOverTcpBus):
        return ModbusDriver(bus.id, ModbusTcpLink(bus.host, bus.port, rtu_framing=True), timeout_s)
    if isinstance(bus, ModbusRtuBus):
        link = ModbusSerialLink(
            bus.port,
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
            inter_frame_s=None if bus.inter_frame_ms is None else bus.inter_frame_ms / 1000,
        )
        return ModbusDriver(bus.id, link, timeout_s)
    if isinstance(bus, OpcUaBus):
        return _opcua_driver(bus, timeout_s)
    if isinstance(bus, SerialLineBus):
        serial_link = SerialLink(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
        return SerialLineDriver(bus.id, serial_link, bus.format, bus.max_age_ms / 1000)
    raise TypeError(f"no driver for bus type {type(bus).__name__}")  # pragma: no cover


def device_spec(site: LoadedSite, device: Device) -> DeviceSpec:
    """The driver's view of a device: its unit and its points with scaling and range."""
    points = []
    for tag in device.tags:
        rng = site.profile_of(tag).range
        points.append(PointSpec(tag.name, tag.point(), tag.scale, tag.offset, rng.min, rng.max))
    return DeviceSpec(device.id, device.unit_id, tuple(points))


def output_spec(actuator: AnyActuator) -> OutputSpec:
    return OutputSpec(actuator.id, actuator.output(), verify=actuator.verify)


def _opcua_driver(bus: OpcUaBus, timeout_s: float) -> DeviceDriver:
    """The OPC UA driver; secrets (user name, password) come from the environment."""
    from device_drivers.opcua import OpcUaDriver, OpcUaEndpoint, OpcUaSecurity

    security = OpcUaSecurity(
        mode=bus.security,
        certificate=bus.certificate,
        private_key=bus.private_key,
        server_certificate=bus.server_certificate,
        username=os.environ.get(bus.username_env) if bus.username_env else None,
        password=os.environ.get(bus.password_env) if bus.password_env else None,
    )
    endpoint = OpcUaEndpoint(
        bus.endpoint,
        namespace=bus.namespace,
        security=security,
        publishing_ms=bus.publishing_ms,
        max_nodes_per_read=bus.max_nodes_per_read,
        reads_in_flight=bus.reads_in_flight,
        publish_requests=bus.publish_requests,
    )
    return OpcUaDriver(bus.id, endpoint, timeout_s)
