"""The shared feature pipeline: known answers on signals whose features are known."""

from __future__ import annotations

import numpy as np
import pytest

from models.features import (
    FeatureError,
    trend_feature_names,
    trend_features,
    vibration_feature_names,
    vibration_features,
)


def test_trend_slopes_of_a_ramp_are_its_rate_and_acceleration_is_zero() -> None:
    ramp = 0.3 + 0.002 * np.arange(60)  # +0.002 % per 10 s sample = 0.012 %/min
    f = trend_features(ramp[None, :], period_s=10.0, spans=(6, 18, 60), rate_unit_s=60.0)
    names = trend_feature_names((6, 18, 60))
    row = dict(zip(names, f[0].tolist(), strict=True))
    assert row["last"] == pytest.approx(ramp[-1], rel=1e-6)
    for k in (6, 18, 60):
        assert row[f"slope_{k}"] == pytest.approx(0.012, rel=1e-4)
        assert row[f"accel_{k}"] == pytest.approx(0.0, abs=1e-6)
    assert f.dtype == np.float32 and f.shape == (1, len(names))


def test_trend_acceleration_sees_a_bend() -> None:
    w = np.concatenate([np.zeros(40), 0.01 * np.arange(20)])
    f = trend_features(w[None, :], period_s=10.0, spans=(6, 20), rate_unit_s=10.0)
    names = trend_feature_names((6, 20))
    assert f[0, names.index("accel_20")] == pytest.approx(0.01, rel=1e-3)


def test_trend_is_batched_row_by_row() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 60))
    batch = trend_features(w, period_s=1, spans=(6, 60), rate_unit_s=1)
    one = trend_features(w[3:4], period_s=1, spans=(6, 60), rate_unit_s=1)
    assert np.allclose(batch[3], one[0])


def test_velocity_rms_of_a_sine_matches_iso_definition() -> None:
    fs, n, f0 = 5120.0, 2048, 80.0  # 80 Hz falls on an FFT bin (resolution 2.5 Hz)
    t = np.arange(n) / fs
    v_peak = 5.0 / 1000  # m/s
    a = v_peak * 2 * np.pi * f0 * np.cos(2 * np.pi * f0 * t)
    f = vibration_features(a[None, :], sample_rate_hz=fs)
    names = vibration_feature_names()
    row = dict(zip(names, f[0].tolist(), strict=True))
    assert row["velocity_rms_mm_s"] == pytest.approx(5.0 / np.sqrt(2), rel=1e-3)
    assert row["kurtosis"] == pytest.approx(1.5, rel=1e-2)
    assert row["crest_factor"] == pytest.approx(np.sqrt(2), rel=1e-2)


def test_impacts_raise_kurtosis_and_the_high_band() -> None:
    fs, n = 5120.0, 2048
    rng = np.random.default_rng(2)
    calm = rng.normal(0, 0.2, n)
    hits = calm.copy()
    hits[::60] += 5.0
    f = vibration_features(np.stack([calm, hits]), sample_rate_hz=fs)
    assert f[1, 2] > 3 * f[0, 2]


@pytest.mark.parametrize("bad", [np.full((1, 60), np.nan), np.zeros((1, 3)), np.zeros((2, 2, 60))])
def test_bad_windows_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(FeatureError):
        trend_features(bad, period_s=10, spans=(6, 60), rate_unit_s=60)
