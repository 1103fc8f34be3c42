"""The value type that flows from drivers to the rest of the gateway."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quality(enum.StrEnum):
    """OPC-style quality of one value."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one tag, stamped at the gateway.

    ``value`` is ``None`` when the quality is ``BAD`` and no number could be
    obtained; ``reason`` then says why (``timeout``, ``unavailable``,
    ``out_of_range``, ``stale``...).
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
