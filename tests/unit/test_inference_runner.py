"""The edge inference runner: ring buffers, batching, pre-alarms, refusal and hot swap,
with the real shipped ONNX files and seeded synthetic histories."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ruamel.yaml import YAML

from device_drivers import Quality, Sample
from edge.config import LoadedSite, SensorProfile, SiteConfig
from edge.inference import ForecastRule, InferenceError, InferenceRunner, install
from edge.rules import Level
from models import MODELS_DIR, ModelRefused, load_model
from simulators.synthetic import methane, roof_separation, vibration_blocks
from tests.unit.test_polling import PROFILES

EXTRA_PROFILES = {
    "vibration": SensorProfile.model_validate(
        {"id": "vibration", "name": "bearing accelerometer", "kind": "vibration", "unit": "m/s2",
         "range": {"min": -500, "max": 500}, "nominal": 0,
         "thresholds": {"default": {"alarm": 400}}}
    ),
    "roof": SensorProfile.model_validate(
        {"id": "roof", "name": "roof extensometer", "kind": "roof_separation", "unit": "mm",
         "range": {"min": 0, "max": 200}, "nominal": 2,
         "thresholds": {"default": {"alarm": 20}}}
    ),
}  # fmt: skip
LOCATION = {"area": "1201 face", "position": "face"}


def make_site(
    assign: list[dict[str, Any]],
    *,
    ch4_tags: int = 1,
    models_dir: Path | None = None,
    max_batch: int = 256,
) -> LoadedSite:
    tags = [
        {"name": f"CH4_{i}", "profile": "ch4", "address": 2 * i, "location": LOCATION}
        for i in range(ch4_tags)
    ]
    tags += [
        {"name": "VIB_1", "profile": "vibration", "address": 500, "location": LOCATION},
        {"name": "ROOF_1", "profile": "roof", "address": 502, "location": LOCATION},
    ]
    raw = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [{"id": "dev", "bus": "net", "unit_id": 1, "tags": tags}],
        "inference": {
            "assign": assign,
            "max_batch": max_batch,
            **({"models_dir": str(models_dir)} if models_dir else {}),
        },
    }
    return LoadedSite(
        source="site.yaml",
        config=SiteConfig.model_validate(raw),
        profiles={**PROFILES, **EXTRA_PROFILES},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(tag: str, value: float | None, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(tag, "dev", value, quality, time.time_ns())


def play_methane(
    runner: InferenceRunner, clock: Clock, values: np.ndarray, tag: str = "CH4_0"
) -> tuple[list[float], list[tuple[float, Level]]]:
    """One sample every 10 s (and a duplicate poll 5 s later, which the runner must skip)."""
    outputs: list[float] = []
    changes: list[tuple[float, Level]] = []
    for v in values:
        runner.offer(sample(tag, float(v)), clock.now)
        clock.now += 5.0
        runner.offer(sample(tag, float(v) + 0.5), clock.now)  # faster poll: not kept
        clock.now += 5.0
        published, transitions = runner.step()
        outputs += [s.value for s in published if s.value is not None]
        changes += [(clock.now, t.level) for _, t in transitions]
    return outputs, changes


def test_methane_pre_alarm_comes_at_least_five_minutes_before_the_exceedance() -> None:
    clock = Clock()
    site = make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}])
    runner = InferenceRunner(site, clock=clock)
    history = methane(1_000_000_007, buildup=True)
    start = clock.now
    outputs, changes = play_methane(runner, clock, history.values)
    first_over = float(np.argmax(history.values >= 1.0)) * 10.0 + start
    alarms = [t for t, level in changes if level is Level.ALARM]
    assert alarms, "no pre-alarm for a build-up"
    assert first_over - alarms[0] >= 300
    assert all(0.0 <= p <= 1.0 for p in outputs)
    # the first window needs 60 samples at 10 s: no output before that
    assert len(outputs) == len(history.values) - 59
    assert runner.counters()["inference_windows"] == len(outputs)


def test_runner_outputs_equal_the_model_scored_offline() -> None:
    clock = Clock()
    site = make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}])
    runner = InferenceRunner(site, clock=clock)
    values = methane(5, buildup=True).values[:200]
    outputs, _ = play_methane(runner, clock, values)
    model = load_model(MODELS_DIR / "methane-forecast.card.yaml")
    windows = np.lib.stride_tricks.sliding_window_view(values, 60)
    offline = model.score(windows)["p_exceed_10m"]
    assert np.allclose(outputs, offline, atol=1e-6)


def test_a_quiet_shift_raises_no_pre_alarm() -> None:
    clock = Clock()
    runner = InferenceRunner(
        make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}]), clock=clock
    )
    quiet = next(
        h
        for s in range(50)
        if (h := methane(2_000_000 + s, buildup=False)).meta["buildup_start_s"] < 0
    )
    _, changes = play_methane(runner, clock, quiet.values)
    assert not [c for c in changes if c[1] is Level.ALARM]


def test_many_sensors_share_one_session_in_bounded_batches() -> None:
    clock = Clock()
    site = make_site(
        [{"model": "methane-forecast", "tags": [f"CH4_{i}" for i in range(70)]}],
        ch4_tags=70,
        max_batch=64,
    )
    runner = InferenceRunner(site, clock=clock)
    assert len(runner.slots) == 1
    for _ in range(60):
        for i in range(70):
            runner.offer(sample(f"CH4_{i}", 0.3 + 0.001 * i), clock.now)
        clock.now += 10.0
    first, _ = runner.step()
    second, _ = runner.step()
    assert len(first) == 64 and len(second) == 6  # the rest waits one tick, nothing is lost
    assert {s.tag for s in first + second} == {f"CH4_{i}.p_exceed_10m" for i in range(70)}
    assert runner.counters()["inference_deferred"] == 6


def test_a_gap_restarts_the_window_and_bad_samples_are_skipped() -> None:
    clock = Clock()
    runner = InferenceRunner(
        make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}]), clock=clock
    )
    for _ in range(59):
        runner.offer(sample("CH4_0", 0.3), clock.now)
        runner.offer(sample("CH4_0", None, Quality.BAD), clock.now)
        clock.now += 10.0
    clock.now += 60.0  # sensor silent for a minute: 6 periods
    runner.offer(sample("CH4_0", 0.3), clock.now)
    published, _ = runner.step()
    assert published == []  # 60 samples, but not 60 consecutive ones


def test_vibration_blocks_give_anomaly_and_stage_and_worn_bearings_pre_alarm() -> None:
    clock = Clock()
    runner = InferenceRunner(
        make_site([{"model": "vibration-wear", "tags": ["VIB_1"]}]), clock=clock
    )
    blocks = vibration_blocks(1_000_000_123, [0, 3])
    runner.offer_block("VIB_1", blocks.values[0], clock.now)
    healthy, changes = runner.step()
    out = {s.tag: s.value for s in healthy}
    assert out["VIB_1.anomaly"] is not None and out["VIB_1.anomaly"] < 0.5
    assert out["VIB_1.wear_stage"] == 0.0
    assert not changes
    runner.offer_block("VIB_1", blocks.values[1], clock.now)
    worn, changes = runner.step()
    out = {s.tag: s.value for s in worn}
    assert out["VIB_1.anomaly"] is not None and out["VIB_1.anomaly"] >= 0.5
    assert out["VIB_1.wear_stage"] == 3.0
    assert [t.level for _, t in changes] == [Level.ALARM]
    clock.now += 3600.0  # the next block comes in an hour: that is not a stale model
    assert runner.tick_rules() == []
    with pytest.raises(ValueError, match="VIB_1"):
        runner.offer_block("VIB_1", np.zeros(100), clock.now)


def test_roof_time_to_red_needs_a_week_of_hourly_readings() -> None:
    clock = Clock()
    runner = InferenceRunner(
        make_site([{"model": "roof-time-to-red", "tags": ["ROOF_1"]}]), clock=clock
    )
    history = roof_separation(1_000_000_001, failure=True)
    cross = int(np.argmax(history.values >= 20.0))
    hours: list[float] = []
    for i, v in enumerate(history.values[:cross]):
        runner.offer(sample("ROOF_1", float(v)), clock.now)
        clock.now += 3600.0
        published, _ = runner.step()
        assert (len(published) == 1) == (i >= 167)
        hours += [s.value for s in published if s.value is not None]
    assert hours[0] > 96  # a week in, far from red
    assert hours[-1] < 96  # the day before red: inside the pre-alarm band
    rule = runner.rules["forecast:roof-time-to-red:ROOF_1"]
    assert rule.condition is Level.ALARM


def test_pre_alarm_rule_never_trips_and_goes_fault_when_the_model_stops() -> None:
    clock = Clock()
    runner = InferenceRunner(
        make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}]), clock=clock
    )
    play_methane(runner, clock, methane(1_000_000_007, buildup=True).values[:400])
    rule = runner.rules["forecast:methane-forecast:CH4_0"]
    assert isinstance(rule, ForecastRule) and rule.known
    assert rule.trips is False and rule.fail_safe is False
    clock.now += 31.0  # 3 periods of 10 s without an output
    changes = runner.tick_rules()
    assert [(t.previous, t.level) for _, t in changes][-1][1] is Level.FAULT
    event = runner.alarm_event(*changes[-1])
    assert event.kind == "forecast" and event.actuators == [] and event.tag == "CH4_0"
    assert "advisory" in event.message


@pytest.fixture
def models_copy(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    for path in MODELS_DIR.glob("*.card.yaml"):
        shutil.copy(path, folder)
    for path in MODELS_DIR.glob("*.onnx"):
        shutil.copy(path, folder)
    yield folder


def test_unknown_model_wrong_kind_and_bad_file_are_refused_at_start(models_copy: Path) -> None:
    with pytest.raises(
        InferenceError,
        match=r"site\.yaml: inference: no model 'gas-trend'.*known: methane-forecast",
    ):
        InferenceRunner(make_site([{"model": "gas-trend", "tags": ["CH4_0"]}]))
    with pytest.raises(InferenceError, match="reads 'vibration' sensors; tag 'CH4_0' is 'ch4'"):
        InferenceRunner(make_site([{"model": "vibration-wear", "tags": ["CH4_0"]}]))
    onnx = models_copy / "methane-forecast.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    with pytest.raises(InferenceError, match=r"sha256 .* does not match"):
        InferenceRunner(
            make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}], models_dir=models_copy)
        )


def _retuned_card(src: Path, dest: Path, threshold: float) -> Path:
    yaml = YAML(typ="safe", pure=True)
    card = yaml.load(src.read_text(encoding="utf-8"))
    card["decision"]["threshold"] = threshold
    card["decision"]["clear"] = threshold - 0.1
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / src.name
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(card, handle)
    shutil.copy(src.parent / card["file"], dest / card["file"])
    return path


async def test_hot_swap_replaces_a_model_and_refuses_a_bad_one(
    models_copy: Path, tmp_path: Path
) -> None:
    clock = Clock()
    site = make_site([{"model": "methane-forecast", "tags": ["CH4_0"]}], models_dir=models_copy)
    runner = InferenceRunner(site, clock=clock)
    old = runner.slots["methane-forecast"].model
    new_card = _retuned_card(models_copy / "methane-forecast.card.yaml", tmp_path / "new", 0.6)
    install(new_card, models_copy)
    assert await runner.swap_changed() == []  # changed: wait until it stops changing
    assert await runner.swap_changed() == ["methane-forecast"]
    assert runner.slots["methane-forecast"].model is not old
    assert runner.rules["forecast:methane-forecast:CH4_0"].decision.threshold == 0.6
    play_methane(runner, clock, methane(3).values[:70])
    assert runner.counters()["inference_windows"] == 11

    # a broken file arrives: refused, the running model keeps scoring
    running = runner.slots["methane-forecast"].model
    (models_copy / "methane-forecast.onnx").write_bytes(b"garbage")
    await runner.swap_changed()
    await runner.swap_changed()
    assert runner.slots["methane-forecast"].model is running
    assert runner.counters()["inference_swaps_refused"] == 1
    play_methane(runner, clock, methane(3).values[:10])
    assert runner.counters()["inference_windows"] == 21
    with pytest.raises(ModelRefused):
        install(models_copy / "methane-forecast.card.yaml", tmp_path / "elsewhere")
