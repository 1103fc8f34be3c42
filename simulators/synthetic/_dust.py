"""Respirable dust at a face with cutting cycles (mg/m3, one reading a minute).

Background 0.3-1.2 mg/m3; while the shearer cuts, dust rises to 3-12 mg/m3
(sprays working) with a lag of a few minutes and log-normal bursts; the
limits of SAFETY_REFERENCE.md (2.5 / 1 / 0.7 mg/m3 by silica content) are
exceeded during cutting at many faces, which is what a dust rule must see.
``labels`` are 1 while cutting.
"""

from __future__ import annotations

import numpy as np

from simulators.synthetic._history import History

__all__ = ["dust"]


def dust(
    seed: int,
    *,
    duration_s: float = 8 * 3600,
    period_s: float = 60.0,
    tag: str = "DUST_SYN",
) -> History:
    rng = np.random.default_rng(seed)
    n = int(duration_s // period_s)
    t = np.arange(n, dtype=np.float64) * period_s
    cycle_s = rng.uniform(50, 90) * 60
    cutting = ((t + rng.uniform(0, cycle_s)) % cycle_s) < rng.uniform(0.5, 0.7) * cycle_s
    background = rng.uniform(0.3, 1.2)
    cutting_level = rng.uniform(3.0, 12.0)
    a = float(np.exp(-period_s / rng.uniform(120.0, 300.0)))
    level = np.empty(n)
    acc = background
    for i, c in enumerate(cutting):
        acc = a * acc + (1 - a) * (cutting_level if c else background)
        level[i] = acc
    bursts = rng.lognormal(0.0, 0.35, n)
    values = np.asarray(np.round(np.maximum(level * bursts, 0.0), 2), dtype=np.float64)
    return History(
        tag=tag,
        kind="dust",
        unit="mg/m3",
        t_s=t,
        values=values,
        labels=cutting.astype(np.int64),
        seed=seed,
    )
