"""The value type that flows from drivers to the rest of the gateway."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload


class Quality(enum.StrEnum):
    """OPC-style quality of one value."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reason(enum.StrEnum):
    """Why a value is not GOOD. Every BAD or UNCERTAIN sample carries one."""

    TIMEOUT = "timeout"  # the device did not answer in time
    CRC = "crc"  # a damaged frame (RTU checksum)
    EXCEPTION = "exception"  # the device refused the request (Modbus exception)
    DECODE = "decode"  # malformed answer, or registers that are no number (NaN, inf)
    OUT_OF_RANGE = "out_of_range"  # below the sensor's measuring range
    OVER_RANGE = "over_range"  # above the sensor's measuring range (saturated)
    STALE = "stale"  # no fresh reading for too long
    COMMS_LOST = "comms_lost"  # no connection to the device


@dataclass(slots=True)
class Sample:
    """One reading of one tag, stamped at the gateway. A value: never changed once made.

    Not ``frozen=True`` on purpose: a frozen dataclass sets every field through
    ``object.__setattr__`` and costs three times as much to build, and a gateway
    builds one per value (100,000 a second is the goal).

    ``value`` is ``None`` when the quality is ``BAD`` and no number could be
    obtained; ``reason`` then says why (one of :class:`Reason`).
    """

    tag: str
    device: str
    value: float | None
    quality: Quality
    ts_ns: int
    reason: str | None = None

    @property
    def is_good(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


_GOOD = Quality.GOOD


class SampleBlock(Sequence[Sample]):
    """One device's read as columns: ``values[i]`` of ``tags[i]`` read at ``stamps[i]``.

    A driver that decodes a whole register block at once returns this instead of
    one :class:`Sample` per value: a GOOD value is only a float in ``values``.
    A point that is not GOOD (or that the rule side marked) has its full
    :class:`Sample` in ``odd`` and NaN in ``values``. ``tags`` is the plan's own
    tuple (the same object on every read), so consumers can cache per-device
    lookups by it. Indexing and iterating build :class:`Sample` objects on
    demand, so every consumer of ``Sequence[Sample]`` works unchanged.
    """

    __slots__ = ("device", "odd", "stamps", "tags", "values")

    def __init__(
        self,
        tags: tuple[str, ...],
        device: str,
        values: list[float],
        stamps: list[int],
        odd: dict[int, Sample] | None = None,
    ) -> None:
        self.tags = tags
        self.device = device
        self.values = values
        self.stamps = stamps
        self.odd: dict[int, Sample] = {} if odd is None else odd

    def __len__(self) -> int:
        return len(self.tags)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.tags)))]
        if index < 0:
            index += len(self.tags)
        odd = self.odd.get(index)
        if odd is not None:
            return odd
        return Sample(self.tags[index], self.device, self.values[index], _GOOD, self.stamps[index])

    def __iter__(self) -> Iterator[Sample]:
        odd = self.odd
        device = self.device
        for i, (tag, value, ts) in enumerate(zip(self.tags, self.values, self.stamps, strict=True)):
            sample = odd.get(i) if odd else None
            yield sample if sample is not None else Sample(tag, device, value, _GOOD, ts)

    def __repr__(self) -> str:
        return f"SampleBlock({self.device!r}, {len(self.tags)} values, {len(self.odd)} odd)"
