"""The feature pipelines: raw windows -> model inputs. Used by training AND the gateway.

One implementation for both sides, so a model never sees features computed
differently from the ones it was trained on. A model card names its pipeline
and :data:`PIPELINE_VERSION`; the runner refuses a card written for another
version. Everything is batched: ``(batch, window)`` in, ``(batch, features)``
float32 out, no Python loop over sensors.

``trend`` (slow scalar sensors: methane %, roof separation mm)::

    last, mean, std, min, max, last - mean,
    slope over each span (units per ``rate_unit_s``), last-span slope minus the
    slope of the span before it (acceleration), for each span

``vibration`` (acceleration waveform blocks, m/s2)::

    velocity RMS 10-1000 Hz (mm/s, ISO 10816), acceleration RMS, kurtosis,
    crest factor, log10 Welch band energies (10-200, 200-1000, 1000-2000,
    2000-fs/2 Hz), high-band share of the energy
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PIPELINE_VERSION",
    "FeatureError",
    "trend_feature_names",
    "trend_features",
    "vibration_feature_names",
    "vibration_features",
]

PIPELINE_VERSION = 1

Floats = NDArray[np.float64]


class FeatureError(ValueError):
    """Windows that a pipeline cannot turn into features (wrong shape, non-finite)."""


def trend_feature_names(spans: Sequence[int]) -> list[str]:
    names = ["last", "mean", "std", "min", "max", "last_minus_mean"]
    names += [f"slope_{k}" for k in spans]
    names += [f"accel_{k}" for k in spans]
    return names


@lru_cache(maxsize=64)
def _slope_weights(k: int) -> Floats:
    """w with y[-k:] @ w == least-squares slope per sample of the last k values."""
    x = np.arange(k, dtype=np.float64)
    x -= x.mean()
    return x / float(np.sum(x * x))


def _as_batch(windows: NDArray[np.floating] | Sequence[Sequence[float]], need: int) -> Floats:
    arr = np.asarray(windows, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < need:
        raise FeatureError(f"windows of shape {arr.shape}; need (batch, >= {need})")
    if not math.isfinite(float(arr.sum())):  # any NaN/inf (or an absurd magnitude) shows here
        raise FeatureError("windows contain NaN or infinite values")
    return arr


@lru_cache(maxsize=64)
def _trend_matrix(
    window: int, spans: tuple[int, ...], period_s: float, rate_unit_s: float
) -> Floats:
    """Every linear trend feature as one column: last, mean, last - mean, slopes, accels."""
    m = np.zeros((window, 3 + 2 * len(spans)), dtype=np.float64)
    m[-1, 0] = 1.0
    m[:, 1] = 1.0 / window
    m[:, 2] = m[:, 0] - m[:, 1]
    scale = rate_unit_s / period_s
    for i, k in enumerate(spans):
        slope = np.zeros(window)
        slope[window - k :] = _slope_weights(k) * scale
        before = np.zeros(window)
        if window >= 2 * k:
            before[window - 2 * k : window - k] = _slope_weights(k) * scale
        else:
            half = max(2, k // 2)
            before[window - k : window - k + half] = _slope_weights(half) * scale
        m[:, 3 + i] = slope
        m[:, 3 + len(spans) + i] = slope - before
    m.flags.writeable = False
    return m


def trend_features(
    windows: NDArray[np.floating] | Sequence[Sequence[float]],
    *,
    period_s: float,
    spans: Sequence[int],
    rate_unit_s: float,
) -> NDArray[np.float32]:
    """Level and slope features of ``(batch, window)`` evenly spaced samples.

    All linear features come from one matrix product; std, min and max are the
    only other passes over the data (the runner calls this on every tick).
    """
    longest = max(spans)
    w = _as_batch(windows, longest)
    n = w.shape[1]
    linear = w @ _trend_matrix(n, tuple(spans), float(period_s), float(rate_unit_s))
    out = np.empty((w.shape[0], 6 + 2 * len(spans)), dtype=np.float32)
    out[:, 0] = linear[:, 0]
    out[:, 1] = linear[:, 1]
    mean_sq = np.einsum("ij,ij->i", w, w) / n
    out[:, 2] = np.sqrt(np.maximum(mean_sq - linear[:, 1] ** 2, 0.0))
    out[:, 3] = w.min(axis=1)
    out[:, 4] = w.max(axis=1)
    out[:, 5:] = linear[:, 2:]
    return out


VIBRATION_BANDS: tuple[tuple[float, float | None], ...] = (
    (10.0, 200.0),
    (200.0, 1000.0),
    (1000.0, 2000.0),
    (2000.0, None),
)


def vibration_feature_names() -> list[str]:
    names = ["velocity_rms_mm_s", "accel_rms", "kurtosis", "crest_factor"]
    names += [
        f"log_band_{int(lo)}_{'nyq' if hi is None else int(hi)}" for lo, hi in VIBRATION_BANDS
    ]
    names.append("high_band_share")
    return names


def vibration_features(
    blocks: NDArray[np.floating] | Sequence[Sequence[float]], *, sample_rate_hz: float
) -> NDArray[np.float32]:
    """Condition-monitoring features of ``(batch, n)`` acceleration blocks (m/s2)."""
    a = _as_batch(blocks, 256)
    a = a - a.mean(axis=1, keepdims=True)
    n = a.shape[1]
    fs = sample_rate_hz
    spectrum = np.fft.rfft(a, axis=1)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    band = (freqs >= 10.0) & (freqs <= 1000.0)
    # velocity = acceleration / (j 2 pi f); Parseval for the one-sided spectrum
    vel = np.abs(spectrum[:, band]) / (2 * np.pi * freqs[band])
    velocity_rms = np.sqrt(2 * np.sum(vel * vel, axis=1)) / n * 1000.0
    accel_rms = np.sqrt(np.mean(a * a, axis=1))
    safe_rms = np.maximum(accel_rms, 1e-12)
    kurtosis = np.mean(a**4, axis=1) / safe_rms**4
    crest = np.max(np.abs(a), axis=1) / safe_rms
    from scipy import signal  # a heavy import: only gateways with a vibration model pay it

    f_w, pxx = signal.welch(a, fs=fs, nperseg=min(256, n), axis=1)
    df = float(f_w[1] - f_w[0])
    energies = []
    for lo, hi in VIBRATION_BANDS:
        sel = (f_w >= lo) & (f_w < (fs / 2 + 1 if hi is None else hi))
        energies.append(np.sum(pxx[:, sel], axis=1) * df)
    energy = np.stack(energies, axis=1)
    share = (energy[:, 2] + energy[:, 3]) / np.maximum(energy.sum(axis=1), 1e-24)
    out = np.column_stack(
        [velocity_rms, accel_rms, kurtosis, crest, np.log10(energy + 1e-12), share]
    )
    return out.astype(np.float32)
