"""Modbus read planning and block decoding: pure, no I/O.

:func:`plan_reads` coalesces one device's points into as few register reads
as the protocol allows (contiguous blocks, small gaps read over, at most 125
registers a request). :func:`decode_block` turns the registers of one block
into engineering values and qualities in one pass: the big-endian points of
a block are unpacked by one precompiled :class:`struct.Struct` (gaps are pad
bytes), so the per-value cost is a multiply and two comparisons.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from device_drivers._driver import DeviceSpec, PointSpec
from device_drivers._sample import Quality, Reason, Sample
from device_drivers.modbus._codec import (
    CodecError,
    DataType,
    Order,
    decode,
    register_count,
)

__all__ = [
    "MAX_MERGE_GAP",
    "MAX_READ_REGISTERS",
    "ModbusCoil",
    "ModbusPlan",
    "ModbusPoint",
    "ReadBlock",
    "Table",
    "decode_block",
    "plan_reads",
]

MAX_READ_REGISTERS = 125  # Modbus limit for one read of holding/input registers
MAX_MERGE_GAP = 4  # read over a gap this small rather than send a second request

Table = Literal["holding", "input"]

_STRUCT_CODES: dict[DataType, str] = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
}


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """Where a value lives in a Modbus device and how its registers encode it."""

    table: Table
    address: int
    type: DataType = DataType.FLOAT32
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG

    @property
    def count(self) -> int:
        return register_count(self.type)

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ModbusCoil:
    """A coil output (relay). ``verify`` reads it back after a write."""

    coil: int


@dataclass(frozen=True, slots=True)
class _Slot:
    """One point inside a block, precomputed for decoding."""

    index: int  # position in the device's point order
    spec: PointSpec
    point: ModbusPoint
    first: int  # register offset inside the block
    fast: bool  # decoded by the block's struct


@dataclass(slots=True)
class ReadBlock:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    slots: list[_Slot] = field(default_factory=list)
    _fast: struct.Struct | None = None
    _fast_slots: tuple[_Slot, ...] = ()
    _slow_slots: tuple[_Slot, ...] = ()

    @property
    def points(self) -> tuple[str, ...]:
        return tuple(s.spec.name for s in self.slots)

    def compile(self) -> None:
        fmt = [">"]
        cursor = 0
        fast: list[_Slot] = []
        slow: list[_Slot] = []
        for slot in sorted(self.slots, key=lambda s: s.first):
            p = slot.point
            if (
                slot.fast
                and p.word_order is Order.BIG
                and p.byte_order is Order.BIG
                and slot.first >= cursor
            ):
                if slot.first > cursor:
                    fmt.append(f"{2 * (slot.first - cursor)}x")
                fmt.append(_STRUCT_CODES[p.type])
                cursor = slot.first + p.count
                fast.append(slot)
            else:
                slow.append(slot)
        self._fast = struct.Struct("".join(fmt)) if fast else None
        self._fast_slots = tuple(fast)
        self._slow_slots = tuple(slow)


@dataclass(frozen=True, slots=True)
class ModbusPlan:
    """How to read one device: its unit and its blocks."""

    device: DeviceSpec
    unit: int
    blocks: tuple[ReadBlock, ...]

    @property
    def requests(self) -> int:
        return len(self.blocks)


def plan_reads(
    device: DeviceSpec,
    *,
    max_count: int = MAX_READ_REGISTERS,
    max_gap: int = MAX_MERGE_GAP,
) -> ModbusPlan:
    """Group one device's points into as few register reads as the limits allow."""
    unit = device.address
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit <= 255:
        raise ValueError(f"device {device.id}: Modbus unit must be 0..255, not {unit!r}")
    entries: list[tuple[int, PointSpec, ModbusPoint]] = []
    for index, spec in enumerate(device.points):
        if not isinstance(spec.address, ModbusPoint):
            raise ValueError(f"device {device.id} point {spec.name}: not a Modbus address")
        if spec.address.end > 65536:
            raise ValueError(f"device {device.id} point {spec.name}: runs past register 65535")
        entries.append((index, spec, spec.address))
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        ordered = sorted((e for e in entries if e[2].table == table), key=lambda e: e[2].address)
        current: ReadBlock | None = None
        members: list[tuple[int, PointSpec, ModbusPoint]] = []
        end = -1
        for entry in ordered:
            point = entry[2]
            if (
                current is not None
                and point.address - end <= max_gap
                and max(end, point.end) - current.address <= max_count
            ):
                end = max(end, point.end)
                members.append(entry)
                continue
            if current is not None:
                blocks.append(_finish(current, end, members))
            current = ReadBlock(table, point.address, 0)
            members = [entry]
            end = point.end
        if current is not None:
            blocks.append(_finish(current, end, members))
    return ModbusPlan(device, unit, tuple(blocks))


def _finish(
    block: ReadBlock, end: int, members: list[tuple[int, PointSpec, ModbusPoint]]
) -> ReadBlock:
    block.count = end - block.address
    block.slots = [
        _Slot(index, spec, point, point.address - block.address, fast=True)
        for index, spec, point in members
    ]
    block.compile()
    return block


def _judge(name: str, device: str, raw: float, spec: PointSpec, ts_ns: int) -> Sample:
    value = raw * spec.scale + spec.offset
    if value != value or value in (math.inf, -math.inf):  # NaN / inf: no number at all
        return Sample(name, device, None, Quality.BAD, ts_ns, Reason.DECODE)
    if value < spec.low:
        return Sample(name, device, value, Quality.BAD, ts_ns, Reason.OUT_OF_RANGE)
    if value > spec.high:
        return Sample(name, device, value, Quality.BAD, ts_ns, Reason.OVER_RANGE)
    return Sample(name, device, value, Quality.GOOD, ts_ns)


def decode_block(
    block: ReadBlock, registers: Sequence[int], device: str, ts_ns: int, out: list[Sample | None]
) -> None:
    """Decode one block's registers into ``out[slot.index]`` for each of its points."""
    if block._fast is not None:
        try:
            buf = struct.pack(f">{len(registers)}H", *registers)
        except struct.error:
            buf = b""
        if len(buf) == 2 * block.count:
            good = Quality.GOOD
            for slot, raw in zip(block._fast_slots, block._fast.unpack_from(buf), strict=True):
                spec = slot.spec
                value = raw * spec.scale + spec.offset
                if spec.low <= value <= spec.high:  # False for NaN: judged below
                    out[slot.index] = Sample(spec.name, device, value, good, ts_ns)
                else:
                    out[slot.index] = _judge(spec.name, device, raw, spec, ts_ns)
        else:
            for slot in block._fast_slots:
                out[slot.index] = Sample(
                    slot.spec.name, device, None, Quality.BAD, ts_ns, Reason.DECODE
                )
    for slot in block._slow_slots:
        p = slot.point
        words = list(registers[slot.first : slot.first + p.count])
        try:
            raw = decode(words, p.type, word_order=p.word_order, byte_order=p.byte_order)
        except CodecError:
            out[slot.index] = Sample(
                slot.spec.name, device, None, Quality.BAD, ts_ns, Reason.DECODE
            )
            continue
        out[slot.index] = _judge(slot.spec.name, device, raw, slot.spec, ts_ns)
