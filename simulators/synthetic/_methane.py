"""Methane at a longwall face: C = E / Q, mixing lag, mining cycles, build-ups.

The concentration the sensor sees is the emitted gas flow E (m3/min) over the
air flow Q (m3/min), in % volume, followed through a first-order mixing lag
(1-3 min) and read with sensor noise and 0.01 % resolution:

- **ventilation** Q: 900-1500 m3/min at the face with occasional step changes
  (doors, regulator or fan adjustments) of up to +-15 %;
- **mining cycles**: while the shearer cuts, freshly broken coal releases gas;
  E rises by 20-60 % for each cutting pass (a cycle of 50-90 min, cutting 50-70 %
  of it) and a maintenance break stops cutting for 30-60 min;
- **build-up** (``buildup=True``): gas accumulates over 15-45 min (goaf inflow,
  a gassy zone, a slowly failing auxiliary ventilation) with an accelerating
  ramp that takes the face past the 1.0 % alarm limit of SAFETY_REFERENCE.md
  (to 1.15-2.0 %), holds, then is diluted again;
- **near miss** (otherwise, half of the time): the same kind of ramp that
  stops at 0.75-0.95 %, so a forecaster has to tell the two apart.

A fan trip (a step of Q to a fraction) makes the face exceed within 1-3 min;
no forecaster can warn of that minutes ahead, so it is not part of the
build-ups here: the threshold rules and the fan-electric lockout own it.
"""

from __future__ import annotations

import numpy as np

from simulators.synthetic._history import History

__all__ = ["METHANE_ALARM", "methane"]

METHANE_ALARM = 1.0  # % CH4 at a working face (SAFETY_REFERENCE.md)


def _lag(x: np.ndarray, period_s: float, tau_s: float) -> np.ndarray:
    """First-order lag (exact discretisation), starting at x[0]."""
    a = float(np.exp(-period_s / tau_s))
    out = np.empty_like(x)
    acc = float(x[0])
    for i, v in enumerate(x):
        acc = a * acc + (1 - a) * float(v)
        out[i] = acc
    return out


def methane(
    seed: int,
    *,
    duration_s: float = 3 * 3600,
    period_s: float = 10.0,
    buildup: bool | None = None,
    tag: str = "CH4_SYN",
) -> History:
    """One seeded scenario at one face sensor; ``buildup=None`` lets the seed decide.

    ``labels`` are 1 while a build-up's extra gas is present, else 0.
    ``meta`` holds ``buildup`` (0/1) and ``buildup_start_s``.
    """
    rng = np.random.default_rng(seed)
    if buildup is None:
        buildup = bool(rng.random() < 0.5)
    n = int(duration_s // period_s)
    t = np.arange(n, dtype=np.float64) * period_s

    q_base = rng.uniform(900.0, 1500.0)
    q = np.full(n, q_base)
    for _ in range(rng.poisson(duration_s / 3600)):
        at = int(rng.integers(0, n))
        q[at:] *= rng.uniform(0.88, 1.12)
    q = np.clip(q, 0.85 * q_base, 1.2 * q_base)
    q = _lag(q, period_s, 30.0)  # a regulator change settles within a minute or two

    e_base = rng.uniform(0.0015, 0.004) * q_base  # background 0.15-0.4 %
    cycle_s = rng.uniform(50, 90) * 60
    cutting = ((t + rng.uniform(0, cycle_s)) % cycle_s) < rng.uniform(0.5, 0.7) * cycle_s
    if rng.random() < 0.4:
        start = rng.uniform(0, duration_s)
        cutting &= ~((t >= start) & (t < start + rng.uniform(30, 60) * 60))
    cut_gain = rng.uniform(0.2, 0.6)
    emission = e_base * (1 + cut_gain * _lag(cutting.astype(np.float64), period_s, 120.0))
    base = 100.0 * emission / q

    extra = np.zeros(n)
    start_s = -1.0
    if buildup or rng.random() < 0.5:
        start_s = rng.uniform(0.25, 0.65) * duration_s
        ramp_s = rng.uniform(15, 45) * 60
        hold_s = rng.uniform(5, 15) * 60
        decay_s = rng.uniform(5, 10) * 60
        power = rng.uniform(1.0, 2.5)
        u = np.clip((t - start_s) / ramp_s, 0.0, 1.0) ** power
        after = t - (start_s + ramp_s + hold_s)
        shape = np.where(after > 0, u * np.exp(-np.maximum(after, 0) / decay_s), u)
        window = (t >= start_s) & (t <= start_s + ramp_s)
        if buildup:
            peak = rng.uniform(1.15, 2.0)
            amplitude = peak - float(np.min(base[window]))
        else:
            peak = rng.uniform(0.75, 0.95)
            amplitude = max(0.0, peak - float(np.max(base)))
        extra = amplitude * shape
    mixed = _lag(base + extra, period_s, rng.uniform(60.0, 180.0))
    noisy = mixed + rng.normal(0.0, rng.uniform(0.005, 0.015), n)
    values = np.maximum(np.round(noisy, 2), 0.0)
    labels = ((extra > 0.01) & buildup).astype(np.int64)
    return History(
        tag=tag,
        kind="ch4",
        unit="%",
        t_s=t,
        values=values,
        labels=labels,
        seed=seed,
        meta={"buildup": float(buildup), "buildup_start_s": start_s},
    )
