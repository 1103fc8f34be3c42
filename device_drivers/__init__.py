"""Protocol drivers: bytes on a bus <-> :class:`Sample` values."""

from device_drivers._errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
)
from device_drivers._sample import Quality, Sample

__all__ = [
    "DecodeError",
    "DeviceException",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DriverError",
    "Quality",
    "Sample",
]
