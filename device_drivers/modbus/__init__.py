"""Modbus support: a pure register codec and an async TCP client."""

from device_drivers.modbus._client import ModbusTcpDriver
from device_drivers.modbus._codec import (
    CodecError,
    DataType,
    Order,
    decode,
    encode,
    from_engineering,
    register_count,
    to_engineering,
)

__all__ = [
    "CodecError",
    "DataType",
    "ModbusTcpDriver",
    "Order",
    "decode",
    "encode",
    "from_engineering",
    "register_count",
    "to_engineering",
]
