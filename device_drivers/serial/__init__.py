"""Serial line sensors (pyserial): text protocols with a framing and a parser per format."""

from device_drivers.serial._driver import SerialLineDriver, SerialLink, SerialPlan, SerialPoint
from device_drivers.serial._formats import (
    ChecksumError,
    GarbledLine,
    LineError,
    LineFormat,
    format_line,
    nmea_checksum,
    parse_line,
)

__all__ = [
    "ChecksumError",
    "GarbledLine",
    "LineError",
    "LineFormat",
    "SerialLineDriver",
    "SerialLink",
    "SerialPlan",
    "SerialPoint",
    "format_line",
    "nmea_checksum",
    "parse_line",
]
