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
    "decode_columns",
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
    _registers: struct.Struct | None = None  # packs the block's registers as read
    _fast_index: tuple[int, ...] = ()  # device positions of the struct's values, in order
    _fast_run: tuple[int, int] | None = None  # those positions as one range, if they are
    _fast_plain: bool = False  # every struct value has scale 1 and offset 0
    _fast_scales: tuple[tuple[float, float], ...] = ()
    _fast_bounds: tuple[float, float] | None = None  # (low, high) shared by all, if so

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
        self._registers = struct.Struct(f">{self.count}H")
        self._fast_index = tuple(s.index for s in fast)
        first = self._fast_index[0] if fast else 0
        self._fast_run = (
            (first, first + len(fast))
            if self._fast_index == tuple(range(first, first + len(fast)))
            else None
        )
        self._fast_scales = tuple((s.spec.scale, s.spec.offset) for s in fast)
        self._fast_plain = all(sc == (1.0, 0.0) for sc in self._fast_scales)
        bounds = {(s.spec.low, s.spec.high) for s in fast}
        self._fast_bounds = bounds.pop() if len(bounds) == 1 else None


@dataclass(frozen=True, slots=True)
class ModbusPlan:
    """How to read one device: its unit and its blocks."""

    device: DeviceSpec
    unit: int
    blocks: tuple[ReadBlock, ...]
    # the device's point names in order: one tuple for every read (a stable cache key)
    tags: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.tags:
            object.__setattr__(self, "tags", tuple(p.name for p in self.device.points))

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


def decode_columns(
    block: ReadBlock,
    registers: Sequence[int] | bytes,
    device: str,
    ts_ns: int,
    values: list[float],
    stamps: list[int],
    odd: dict[int, Sample],
) -> None:
    """Decode one block's registers into columns: no object per GOOD value.

    Every point's engineering value goes to ``values[index]`` and its stamp to
    ``stamps[index]``; a point that is not GOOD (decode error, out of or over
    range) gets NaN there and its full :class:`Sample` in ``odd[index]``, judged
    exactly as :func:`decode_block` judges it. ``registers`` is the block's registers
    as ints, or as the bytes of the answer (big-endian words, as they came off the
    wire: the driver's read path, nothing repacked). The big-endian points are unpacked
    by the block's one struct and range-checked together (``min``/``max``/``sum``
    in C when the block's points share a range, which is the usual case); a value
    outside is judged on its own.

    Measured against numpy (frombuffer, gather, vectorised scale and compare) on
    blocks of 50 floats: numpy's fixed cost per call is larger than the whole
    struct path at Modbus block sizes (at most 125 registers), see
    docs/benchmarks.md.
    """
    run = block._fast_run
    if run is not None and not block._slow_slots:
        stamps[run[0] : run[1]] = [ts_ns] * (run[1] - run[0])
    else:
        for slot in block.slots:
            stamps[slot.index] = ts_ns
    try:
        if isinstance(registers, bytes | bytearray | memoryview):
            buf = bytes(registers)
            if len(buf) != 2 * block.count:
                raise struct.error(f"{len(buf)} bytes for {block.count} registers")
        else:
            assert block._registers is not None
            buf = block._registers.pack(*registers)
    except struct.error:  # wrong count, or a register that is no 16-bit word
        for slot in block.slots:
            values[slot.index] = math.nan
            odd[slot.index] = Sample(
                slot.spec.name, device, None, Quality.BAD, ts_ns, Reason.DECODE
            )
        return
    fast = block._fast
    if fast is not None:
        raw = fast.unpack_from(buf)
        scaled: Sequence[float] = (
            raw
            if block._fast_plain
            else [r * sc[0] + sc[1] for r, sc in zip(raw, block._fast_scales, strict=True)]
        )
        if run is not None:
            values[run[0] : run[1]] = scaled
        else:
            for index, value in zip(block._fast_index, scaled, strict=True):
                values[index] = value
        bounds = block._fast_bounds
        total = sum(scaled)
        if not (
            bounds is not None
            and total == total  # no NaN (a NaN or inf - inf makes the sum NaN)
            and bounds[0] <= min(scaled)
            and max(scaled) <= bounds[1]
        ):
            for slot, r, value in zip(block._fast_slots, raw, scaled, strict=True):
                spec = slot.spec
                if not spec.low <= value <= spec.high:  # True for NaN
                    values[slot.index] = math.nan
                    odd[slot.index] = _judge(spec.name, device, r, spec, ts_ns)
    for slot in block._slow_slots:
        p = slot.point
        words = list(struct.unpack_from(f">{p.count}H", buf, 2 * slot.first))
        try:
            r = decode(words, p.type, word_order=p.word_order, byte_order=p.byte_order)
        except CodecError:
            values[slot.index] = math.nan
            odd[slot.index] = Sample(
                slot.spec.name, device, None, Quality.BAD, ts_ns, Reason.DECODE
            )
            continue
        sample = _judge(slot.spec.name, device, r, slot.spec, ts_ns)
        if sample.quality is Quality.GOOD and sample.value is not None:
            values[slot.index] = sample.value
        else:
            values[slot.index] = math.nan
            odd[slot.index] = sample
