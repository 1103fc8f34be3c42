"""Synthetic histories: seeded, reproducible, and physically what their docstrings say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.features import vibration_features
from simulators.synthetic import (
    METHANE_ALARM,
    ROOF_RED_MM,
    History,
    HistoryError,
    data_sha256,
    dust,
    load_csv,
    load_parquet,
    methane,
    roof_separation,
    vibration,
    vibration_blocks,
)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: methane(s),
        lambda s: roof_separation(s),
        lambda s: vibration(s, blocks=12),
        lambda s: dust(s),
    ],
    ids=["methane", "roof", "vibration", "dust"],
)
def test_same_seed_same_history_other_seed_other_history(make: object) -> None:
    a, b, c = make(7), make(7), make(8)  # type: ignore[operator]
    assert np.array_equal(a.values, b.values) and np.array_equal(a.t_s, b.t_s)
    assert data_sha256([a]) == data_sha256([b])
    assert data_sha256([a]) != data_sha256([c])


def test_methane_buildups_cross_the_alarm_limit_and_quiet_shifts_do_not() -> None:
    for seed in range(30):
        up = methane(seed, buildup=True)
        quiet = methane(seed, buildup=False)
        first = int(np.argmax(up.values >= METHANE_ALARM))
        assert up.values.max() >= 1.15 - 0.1, seed
        # a build-up, not a step: it starts at least 5 min before the first exceedance
        assert up.t_s[first] - up.meta["buildup_start_s"] >= 300, seed
        assert up.labels is not None and up.labels[first] == 1
        assert quiet.values.max() < METHANE_ALARM, seed
        assert quiet.values.min() >= 0.0
    # mining cycles make a quiet shift vary, not sit flat
    assert np.std(methane(3, buildup=False).values) > 0.02


def test_roof_failures_accelerate_past_red_and_stable_roofs_stay_below() -> None:
    for seed in range(20):
        fail = roof_separation(seed, failure=True)
        ok = roof_separation(seed, failure=False)
        assert ok.values.max() < ROOF_RED_MM, seed
        cross = int(np.argmax(fail.values >= ROOF_RED_MM))
        assert cross > 0, seed
        rate_last_day = (fail.values[cross] - fail.values[cross - 24]) / 1.0  # mm/day
        rate_early = (fail.values[48] - fail.values[24]) / 1.0
        assert rate_last_day > 0.3 > rate_early or rate_last_day > 3 * rate_early, seed


def test_vibration_stages_move_through_iso_zones_and_kurtosis_rises_early() -> None:
    h = vibration_blocks(11, [0] * 60 + [1] * 60 + [2] * 60 + [3] * 60, machines=12)
    assert h.sample_rate_hz is not None and h.labels is not None
    f = vibration_features(h.values, sample_rate_hz=h.sample_rate_hz)
    velocity = [float(np.median(f[h.labels == s, 0])) for s in range(4)]
    kurt = [float(np.median(f[h.labels == s, 2])) for s in range(4)]
    assert velocity[0] < 1.4  # zone A, group 2 rigid
    assert velocity[3] > 2.8  # beyond zone B
    assert velocity[0] <= velocity[1] < velocity[2] < velocity[3]
    assert kurt[1] > kurt[0] + 1.0  # early impacts show in kurtosis before RMS
    assert kurt[3] < kurt[2]  # severe damage smears the impacts


def test_vibration_run_to_failure_never_heals() -> None:
    h = vibration(4, blocks=40)
    assert h.labels is not None
    assert np.all(np.diff(h.labels) >= 0)
    assert h.values.shape == (40, 2048)


def test_dust_rises_while_cutting() -> None:
    h = dust(5)
    assert h.labels is not None
    assert np.median(h.values[h.labels == 1]) > 2 * np.median(h.values[h.labels == 0])


def test_csv_loader_gives_the_generator_shape(tmp_path: Path) -> None:
    path = tmp_path / "CH4_1201.csv"
    path.write_text(
        "time,value,label\n"
        "2026-01-01T00:00:10Z,0.31,0\n"
        "2026-01-01T00:00:00Z,0.30,0\n"
        "1767225620,,0\n"  # a gap: skipped, not an error
        "1767225630,0.33,1\n",
        encoding="utf-8",
    )
    h = load_csv(path, tag="CH4_1201", kind="ch4", unit="%")
    assert isinstance(h, History)
    assert h.values.tolist() == [0.30, 0.31, 0.33]
    assert h.t_s.tolist() == [1767225600.0, 1767225610.0, 1767225630.0]
    assert h.labels is not None and h.labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,value\n1,2\n", "no 'time' column"),
        ("time,value\n1,abc\n", ":2: value 'abc' is not a number"),
        ("time,value\nyesterday,1\n", ":2: time 'yesterday'"),
        ("time,value\n1,1\n1,2\n", "two samples at time 1.0"),
        ("time,value\n1,nan\n", "not finite"),
        ("time,value\n", "no samples"),
    ],
)
def test_csv_loader_errors_name_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HistoryError, match=r"bad\.csv") as info:
        load_csv(path, tag="X", kind="ch4")
    assert message in str(info.value)


def test_parquet_loader_round_trips_or_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "h.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(HistoryError, match=r"h\.parquet: reading Parquet needs pyarrow"):
            load_parquet(path, tag="X", kind="ch4")
        return
    pq.write_table(pa.table({"time": [1.0, 2.0], "value": [0.5, 0.6]}), path)
    h = load_parquet(path, tag="X", kind="ch4")
    assert h.values.tolist() == [0.5, 0.6]


def test_history_rejects_inconsistent_shapes() -> None:
    with pytest.raises(HistoryError, match="2 value row"):
        History("X", "ch4", "%", np.arange(3.0), np.zeros(2))
    with pytest.raises(HistoryError, match="not strictly increasing"):
        History("X", "ch4", "%", np.array([0.0, 0.0]), np.zeros(2))
