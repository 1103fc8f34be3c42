"""Protocol drivers: bytes on a bus <-> :class:`Sample` values, behind one interface."""

from device_drivers._driver import DeviceDriver, DeviceSpec, OutputSpec, PointSpec, ReadPlan
from device_drivers._errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    FrameError,
    WriteMismatch,
)
from device_drivers._sample import Quality, Reason, Sample, SampleBlock

__all__ = [
    "DecodeError",
    "DeviceDriver",
    "DeviceException",
    "DeviceSpec",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DriverError",
    "FrameError",
    "OutputSpec",
    "PointSpec",
    "Quality",
    "ReadPlan",
    "Reason",
    "Sample",
    "SampleBlock",
    "WriteMismatch",
]
