"""Modbus (TCP, RTU, RTU over TCP): one driver, a pure register codec, read planning."""

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
from device_drivers.modbus._driver import (
    ModbusDriver,
    ModbusLink,
    ModbusSerialLink,
    ModbusTcpDriver,
    ModbusTcpLink,
    inter_frame_gap_s,
    make_client,
)
from device_drivers.modbus._plan import (
    MAX_MERGE_GAP,
    MAX_READ_REGISTERS,
    ModbusCoil,
    ModbusPlan,
    ModbusPoint,
    ReadBlock,
    Table,
    decode_block,
    plan_reads,
)

__all__ = [
    "MAX_MERGE_GAP",
    "MAX_READ_REGISTERS",
    "CodecError",
    "DataType",
    "ModbusCoil",
    "ModbusDriver",
    "ModbusLink",
    "ModbusPlan",
    "ModbusPoint",
    "ModbusSerialLink",
    "ModbusTcpDriver",
    "ModbusTcpLink",
    "Order",
    "ReadBlock",
    "Table",
    "decode",
    "decode_block",
    "encode",
    "from_engineering",
    "inter_frame_gap_s",
    "make_client",
    "plan_reads",
    "register_count",
    "to_engineering",
]
