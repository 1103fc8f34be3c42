"""Roof (immediate roof / bed) separation at one extensometer, hourly.

Separation s(t) in mm, read by a 0.1 mm resolution instrument:

- **primary creep** after installation: a decaying rise of 0.5-3 mm;
- **secondary creep**: a steady 0.01-0.08 mm/day (SAFETY_REFERENCE.md watches
  at 0.1 mm/day and warns at 0.3 mm/day);
- **the face passing** (abutment pressure): a logistic step of 1-4 mm over
  2-5 days at a random time, which must not look like a failure;
- **tertiary creep before a failure** (``failure=True``): the rate grows as
  1/(t_f - t) (the inverse-velocity law of slope and roof failures, Fukuzono
  1985), so separation passes the 20 mm red limit some hours before t_f.
  Onset is 4-12 days before t_f.

``labels`` are 1 during the accelerating phase. ``meta`` has ``failure`` and
``failure_s`` (t_f, -1 when none).
"""

from __future__ import annotations

import numpy as np

from simulators.synthetic._history import History

__all__ = ["ROOF_RED_MM", "ROOF_YELLOW_MM", "roof_separation"]

ROOF_YELLOW_MM = 10.0
ROOF_RED_MM = 20.0
HOUR = 3600.0
DAY = 86400.0


def roof_separation(
    seed: int,
    *,
    duration_s: float = 40 * DAY,
    period_s: float = HOUR,
    failure: bool | None = None,
    tag: str = "ROOF_SYN",
) -> History:
    """One seeded extensometer history; ``failure=None`` lets the seed decide."""
    rng = np.random.default_rng(seed)
    if failure is None:
        failure = bool(rng.random() < 0.5)
    n = int(duration_s // period_s)
    t = np.arange(n, dtype=np.float64) * period_s
    days = t / DAY

    s0 = rng.uniform(0.5, 6.0)
    primary = rng.uniform(0.5, 3.0) * (1 - np.exp(-days / rng.uniform(1.0, 4.0)))
    secondary = rng.uniform(0.01, 0.08) * days
    pass_at = rng.uniform(0.2, 0.8) * duration_s / DAY
    passing = rng.uniform(1.0, 4.0) / (1 + np.exp(-(days - pass_at) / rng.uniform(0.5, 1.2)))
    s = s0 + primary + secondary + passing

    labels = np.zeros(n, dtype=np.int64)
    failure_s = -1.0
    if failure:
        failure_s = rng.uniform(0.55, 0.9) * duration_s
        onset_s = failure_s - rng.uniform(4, 12) * DAY
        level_at_onset = float(np.interp(onset_s, t, s))
        # v(t) = v0 (tf - ta) / (tf - t)  =>  s = v0 (tf - ta) ln((tf - ta) / (tf - t))
        # choose v0 so that the red limit is reached 6-72 h before tf
        reach_before_s = rng.uniform(6, 72) * HOUR
        span = failure_s - onset_s
        needed = ROOF_RED_MM - level_at_onset + rng.uniform(0.5, 2.0)
        v0 = needed / (span * np.log(span / reach_before_s))
        active = t > onset_s
        left = np.maximum(failure_s - t, 0.05 * HOUR)
        tertiary = np.where(active, v0 * span * np.log(span / left), 0.0)
        s = s + tertiary
        labels = (active & (t < failure_s)).astype(np.int64)
        # after the failure the instrument reads the collapsed bed, then nothing useful
        broken = t >= failure_s
        s = np.where(broken, float(s[~broken][-1]) if (~broken).any() else s, s)
    noisy = s + rng.normal(0.0, 0.05, n)
    values = np.round(noisy, 1)
    return History(
        tag=tag,
        kind="roof_separation",
        unit="mm",
        t_s=t,
        values=values,
        labels=labels,
        seed=seed,
        meta={"failure": float(failure), "failure_s": failure_s},
    )
