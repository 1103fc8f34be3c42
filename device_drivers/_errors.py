"""Errors raised by device drivers.

The tree is small on purpose; callers catch the base class at a bus boundary
and the leaves when they need to act differently::

    DriverError                 any failure talking to or decoding from a device
    ├── DeviceTimeout           the device did not answer in time
    ├── DeviceUnavailable       no connection (refused, reset, closed, host down)
    ├── DeviceException         the device answered with a protocol exception (e.g. illegal address)
    └── DecodeError             the answer arrived but cannot be turned into a value

Library exceptions (pymodbus, asyncua, pyserial) are translated at the driver
boundary and kept as ``__cause__``.
"""

from __future__ import annotations


class DriverError(Exception):
    """A device could not be read or written. ``device`` names it."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class DeviceTimeout(DriverError):
    """The device did not answer within the configured timeout."""


class DeviceUnavailable(DriverError):
    """The connection to the device could not be opened or was lost."""


class DeviceException(DriverError):
    """The device answered with a protocol-level exception response."""


class DecodeError(DriverError):
    """Raw data from the device could not be decoded into a value."""
