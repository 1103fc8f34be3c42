"""Errors raised by device drivers.

The tree is small on purpose; callers catch the base class at a bus boundary
and the leaves when they need to act differently::

    DriverError                 any failure talking to or decoding from a device
    ├── DeviceTimeout           the device did not answer in time
    ├── DeviceUnavailable       no connection (refused, reset, closed, host down)
    ├── DeviceException         the device answered with a protocol exception (e.g. illegal address)
    ├── FrameError              a frame failed its checksum (RTU CRC); the line is noisy
    ├── DecodeError             the answer arrived but is malformed or cannot be turned into values
    └── WriteMismatch           a write was acknowledged but reading it back gave another value

Every error has a :attr:`DriverError.reason`: the quality reason that the
values of the device carry while it fails (``timeout``, ``comms_lost``,
``exception``, ``crc``, ``decode``, ``verify_mismatch``).

Library exceptions (pymodbus, asyncua, pyserial) are translated at the driver
boundary and kept as ``__cause__``.
"""

from __future__ import annotations

from typing import ClassVar


class DriverError(Exception):
    """A device could not be read or written. ``device`` names it."""

    reason: ClassVar[str] = "error"

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class DeviceTimeout(DriverError):
    """The device did not answer within the configured timeout."""

    reason = "timeout"


class DeviceUnavailable(DriverError):
    """The connection to the device could not be opened or was lost."""

    reason = "comms_lost"


class DeviceException(DriverError):
    """The device answered with a protocol-level exception response."""

    reason = "exception"


class FrameError(DriverError):
    """A frame arrived damaged (bad CRC); the request failed, the line stays open."""

    reason = "crc"


class DecodeError(DriverError):
    """Raw data from the device is malformed or cannot be decoded into values."""

    reason = "decode"


class WriteMismatch(DriverError):
    """An output was written and acknowledged, but reading it back gave another value."""

    reason = "verify_mismatch"
