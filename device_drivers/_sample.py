"""The value type that flows from drivers to the rest of the gateway."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
