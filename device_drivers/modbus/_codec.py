"""Pure Modbus register codec: 16-bit registers <-> engineering values.

No I/O here. A value spans one or two registers; multi-register values have a
word order (which register holds the most significant word) and every
register has a byte order (``big`` is the Modbus standard; ``little`` swaps
the two bytes of each register, as some meters do).
"""

from __future__ import annotations

import enum
import math
import struct


class DataType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"


class Order(enum.StrEnum):
    BIG = "big"
    LITTLE = "little"


_FORMATS: dict[DataType, str] = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
}


class CodecError(ValueError):
    """Registers do not match the data type, or a value cannot be encoded."""


def register_count(data_type: DataType) -> int:
    """How many 16-bit registers one value of ``data_type`` occupies."""
    return struct.calcsize(">" + _FORMATS[data_type]) // 2


def _swap_bytes(reg: int) -> int:
    return ((reg & 0xFF) << 8) | (reg >> 8)


def _to_wire_words(registers: list[int], word_order: Order, byte_order: Order) -> list[int]:
    """Turn registers as read into big-endian words, most significant first."""
    words = list(registers)
    if byte_order is Order.LITTLE:
        words = [_swap_bytes(w) for w in words]
    if word_order is Order.LITTLE:
        words.reverse()
    return words


def decode(
    registers: list[int],
    data_type: DataType,
    *,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
) -> int | float:
    """Decode the raw registers of one value (no scaling)."""
    need = register_count(data_type)
    if len(registers) != need:
        raise CodecError(f"{data_type} needs {need} register(s), got {len(registers)}")
    for reg in registers:
        if not 0 <= reg <= 0xFFFF:
            raise CodecError(f"register value {reg} is not a 16-bit unsigned integer")
    words = _to_wire_words(registers, word_order, byte_order)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    value: int | float = struct.unpack(">" + _FORMATS[data_type], raw)[0]
    return value


def encode(
    value: int | float,
    data_type: DataType,
    *,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
) -> list[int]:
    """Encode one raw value into registers (inverse of :func:`decode`)."""
    if data_type is DataType.FLOAT32:
        raw_value: int | float = float(value)
    else:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CodecError(f"cannot encode {value} as {data_type}")
            value = round(value)
        raw_value = int(value)
    try:
        raw = struct.pack(">" + _FORMATS[data_type], raw_value)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{value!r} does not fit {data_type}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if word_order is Order.LITTLE:
        words.reverse()
    if byte_order is Order.LITTLE:
        words = [_swap_bytes(w) for w in words]
    return words


def to_engineering(raw: int | float, *, scale: float = 1.0, offset: float = 0.0) -> float:
    """Engineering value = raw * scale + offset."""
    return float(raw) * scale + offset


def from_engineering(value: float, *, scale: float = 1.0, offset: float = 0.0) -> float:
    """Inverse of :func:`to_engineering`, used by simulators to write registers."""
    if scale == 0:
        raise CodecError("scale must not be zero")
    return (value - offset) / scale
