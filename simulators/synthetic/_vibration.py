"""Rolling-bearing vibration through its wear stages, as acceleration waveforms.

Each row is one block of an accelerometer on a medium machine (ISO 10816-3
group 2, 15-300 kW, rigid foundation: zone boundaries 1.4 / 2.8 / 4.5 mm/s
velocity RMS) at ``sample_rate_hz``:

- shaft 1x and 2x (24-25 Hz at 1450-1490 rpm) with machine-to-machine spread,
  broadband noise;
- an outer-race defect: impacts at BPFO (3.58 x shaft speed) that ring a
  structural resonance at 1.8-3.2 kHz.

Wear stages (``labels``)::

    0 healthy      no defect; velocity RMS ~0.7-2 mm/s (zones A/B)
    1 early        small sharp impacts: kurtosis and the high band rise, RMS does not
    2 developed    larger impacts, 1x grows: RMS into zone C (2.8-4.5 mm/s)
    3 severe       broadband damage, impacts smeared (kurtosis falls back): zone D (> 4.5)

:func:`vibration` gives one machine's run to failure (blocks at ``every_s``);
:func:`vibration_blocks` gives blocks of chosen stages for training sets.
"""

from __future__ import annotations

import numpy as np

from simulators.synthetic._history import History

__all__ = ["VIBRATION_BLOCK", "VIBRATION_RATE_HZ", "vibration", "vibration_blocks"]

VIBRATION_RATE_HZ = 5120.0
VIBRATION_BLOCK = 2048


def _block(
    rng: np.random.Generator, stage: int, machine: dict[str, float], n: int, fs: float
) -> np.ndarray:
    t = np.arange(n) / fs
    f_r = machine["f_r"] * rng.uniform(0.995, 1.005)
    # 1x/2x acceleration amplitudes, m/s2 (velocity = a / (2 pi f))
    one_x = machine["one_x"] * (1.0, 1.1, 3.5, 6.5)[stage] * rng.uniform(0.9, 1.1)
    a = one_x * np.sin(2 * np.pi * f_r * t + rng.uniform(0, 2 * np.pi))
    a += 0.4 * one_x * np.sin(2 * np.pi * 2 * f_r * t + rng.uniform(0, 2 * np.pi))
    noise = machine["noise"] * (1.0, 1.05, 1.6, 4.5)[stage] * rng.uniform(0.9, 1.1)
    a += rng.normal(0.0, noise, n)
    if stage > 0:
        bpfo = 3.58 * f_r
        impact = machine["impact"] * (0.0, 0.3, 1.5, 1.5)[stage] * rng.uniform(0.8, 1.25)
        decay = (900.0, 900.0, 700.0, 250.0)[stage]  # 1/s; severe damage rings shorter
        ring = np.exp(-decay * t[: int(fs * 0.01)]) * np.sin(
            2 * np.pi * machine["f_res"] * t[: int(fs * 0.01)]
        )
        pulses = np.zeros(n)
        first = rng.uniform(0, 1 / bpfo)
        k = np.arange(first, t[-1], 1 / bpfo)
        jitter = rng.normal(0.0, 0.01 / bpfo, len(k))  # slip of the rolling elements
        idx = np.clip(((k + jitter) * fs).astype(int), 0, n - 1)
        pulses[idx] = impact * rng.uniform(0.6, 1.4, len(idx))
        if stage == 3:
            pulses += rng.normal(0.0, 0.25 * impact, n) * (rng.random(n) < 0.02)
        a += np.convolve(pulses, ring)[:n]
    return a


def _machine(rng: np.random.Generator) -> dict[str, float]:
    f_r = rng.uniform(1450, 1490) / 60
    velocity_mm_s = rng.uniform(0.6, 1.6)  # healthy 1x velocity amplitude
    return {
        "f_r": f_r,
        "one_x": velocity_mm_s / 1000 * 2 * np.pi * f_r,
        "noise": rng.uniform(0.15, 0.4),
        "impact": rng.uniform(6.0, 14.0),
        "f_res": rng.uniform(1800, 3200),
    }


def vibration_blocks(
    seed: int,
    stages: list[int],
    *,
    sample_rate_hz: float = VIBRATION_RATE_HZ,
    block: int = VIBRATION_BLOCK,
    machines: int = 8,
    tag: str = "VIB_SYN",
) -> History:
    """One block per entry of ``stages`` (0-3), drawn from ``machines`` seeded machines."""
    rng = np.random.default_rng(seed)
    fleet = [_machine(rng) for _ in range(machines)]
    rows = [
        _block(rng, stage, fleet[int(rng.integers(0, machines))], block, sample_rate_hz)
        for stage in stages
    ]
    return History(
        tag=tag,
        kind="vibration",
        unit="m/s2",
        t_s=np.arange(len(stages), dtype=np.float64),
        values=np.asarray(rows, dtype=np.float64).reshape(len(stages), block),
        labels=np.asarray(stages, dtype=np.int64),
        sample_rate_hz=sample_rate_hz,
        seed=seed,
    )


def vibration(
    seed: int,
    *,
    blocks: int = 200,
    every_s: float = 3600.0,
    sample_rate_hz: float = VIBRATION_RATE_HZ,
    block: int = VIBRATION_BLOCK,
    tag: str = "VIB_SYN",
) -> History:
    """One machine's run to failure: healthy, then each wear stage in turn."""
    rng = np.random.default_rng(seed)
    machine = _machine(rng)
    bounds = np.sort(rng.uniform(0.3, 0.95, 3)) * blocks
    stages = np.searchsorted(bounds, np.arange(blocks), side="right").astype(np.int64)
    rows = [_block(rng, int(s), machine, block, sample_rate_hz) for s in stages]
    return History(
        tag=tag,
        kind="vibration",
        unit="m/s2",
        t_s=np.arange(blocks, dtype=np.float64) * every_s,
        values=np.asarray(rows, dtype=np.float64),
        labels=stages,
        sample_rate_hz=sample_rate_hz,
        seed=seed,
    )
