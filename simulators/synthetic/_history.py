"""The one shape every history has, synthetic or loaded: times, values, optional labels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = ["History", "HistoryError", "data_sha256"]


class HistoryError(ValueError):
    """A history (file, query result, generator argument) cannot be used; the text names it."""


@dataclass(frozen=True)
class History:
    """The samples of one sensor, in time order.

    ``values`` is ``(n,)`` for a scalar sensor (methane %, separation mm, dust
    mg/m3) or ``(n, block)`` for a waveform sensor (vibration acceleration in
    m/s2, one block of ``block`` samples at ``sample_rate_hz`` per row).
    ``t_s`` are seconds (Unix seconds for loaded histories, seconds from the
    start for synthetic ones). ``labels`` are per-row ground truth that only a
    generator knows (wear stage, build-up flag); loaded histories carry them
    only when the file has a ``label`` column.
    """

    tag: str
    kind: str
    unit: str
    t_s: NDArray[np.float64]
    values: NDArray[np.float64]
    labels: NDArray[np.int64] | None = None
    sample_rate_hz: float | None = None
    seed: int | None = None
    meta: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.t_s)
        if self.t_s.ndim != 1:
            raise HistoryError(f"{self.tag}: t_s must be one-dimensional")
        if self.values.shape[:1] != (n,):
            raise HistoryError(f"{self.tag}: {len(self.values)} value row(s) for {n} timestamp(s)")
        if self.labels is not None and self.labels.shape != (n,):
            raise HistoryError(f"{self.tag}: {len(self.labels)} label(s) for {n} timestamp(s)")
        if n > 1 and not bool(np.all(np.diff(self.t_s) > 0)):
            raise HistoryError(f"{self.tag}: timestamps are not strictly increasing")

    def __len__(self) -> int:
        return len(self.t_s)

    @property
    def period_s(self) -> float:
        """The median sample spacing (0 for fewer than two samples)."""
        if len(self.t_s) < 2:
            return 0.0
        return float(np.median(np.diff(self.t_s)))


def data_sha256(histories: Iterable[History]) -> str:
    """A stable fingerprint of the data a model was trained on (values, times, labels)."""
    digest = hashlib.sha256()
    for h in histories:
        digest.update(h.tag.encode())
        digest.update(np.ascontiguousarray(h.t_s, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(h.values, dtype="<f8").tobytes())
        if h.labels is not None:
            digest.update(np.ascontiguousarray(h.labels, dtype="<i8").tobytes())
    return digest.hexdigest()
