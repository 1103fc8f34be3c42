"""The gateway with a model on a methane tag: the pre-alarm comes before the alarm, the
forecast reaches the uplink as telemetry, and a model never delays or lifts the cut."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

import wire
from device_drivers import Quality, Sample
from edge.config import InferenceSettings, LoadedSite, ModelAssignment
from edge.gateway import Gateway
from edge.inference import InferenceRunner
from edge.uplink.buffer import StoreAndForwardBuffer
from models import MODELS_DIR
from tests.support import async_wait_until
from tests.unit.test_polling import FakeBus, f32, make_site
from tests.unit.test_polling_gateway import start


def fast_models(folder: Path) -> Path:
    """The shipped methane model with a card that samples every 50 ms instead of 10 s
    (same ONNX file and sha256), so a 10-minute window fills in 3 s."""
    folder.mkdir()
    yaml = YAML(typ="safe", pure=True)
    src = MODELS_DIR / "methane-forecast.card.yaml"
    card = yaml.load(src.read_text(encoding="utf-8"))
    card["features"]["period_s"] = 0.05
    with (folder / src.name).open("w", encoding="utf-8") as handle:
        yaml.dump(card, handle)
    shutil.copy(MODELS_DIR / card["file"], folder / card["file"])
    return folder


def site_with_model(models_dir: Path) -> LoadedSite:
    site = make_site(poll_ms=50)
    inference = InferenceSettings(
        models_dir=str(models_dir),
        tick_ms=50,
        assign=(ModelAssignment(model="methane-forecast", tags=("CH4_A",)),),
    )
    return LoadedSite(
        source=site.source,
        config=site.config.model_copy(update={"inference": inference}),
        profiles=site.profiles,
    )


def _reads(bus: FakeBus) -> int:
    return sum(1 for op in bus.ops if op[0] == "read" and op[1] == 1)


async def _advanced(bus: FakeBus, gateway: Gateway, reads: int, windows: int) -> None:
    await async_wait_until(lambda: _reads(bus) > reads, 5, "a read of the step")
    await async_wait_until(
        lambda: gateway.counters()["inference_windows"] > windows, 5, "a model tick"
    )


async def ramp(
    bus: FakeBus, start: float, stop: float, step: float, gateway: Gateway | None = None
) -> None:
    """Raise the methane reading one step per model period (50 ms: the card's 10 s
    compressed 200 times). With ``gateway``, each step also waits until the gateway has
    read it and the model has scored a window since: a loaded machine slows the compressed
    plant with the gateway instead of outrunning it."""
    value = start
    while value < stop:
        bus.set(1, "holding", 0, f32(value))
        reads = _reads(bus)
        windows = gateway.counters()["inference_windows"] if gateway is not None else 0
        await asyncio.sleep(0.05)
        if gateway is not None:
            await _advanced(bus, gateway, reads, windows)
        value += step


def stored(path: Path) -> list[wire.Message]:
    buffer = StoreAndForwardBuffer(path, 10**7, site="s1", gateway="gw1")
    try:
        return [wire.decode(p.payload) for p in buffer.pending(100_000)]
    finally:
        buffer.close()


async def test_pre_alarm_precedes_the_alarm_and_the_cut_still_comes(tmp_path: Path) -> None:
    site = site_with_model(fast_models(tmp_path / "models"))
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    gateway, task = start(site, bus, tmp_path)
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power released")
        # a full window of quiet readings scored (60 samples at 50 ms: 3 s on an idle box)
        await async_wait_until(
            lambda: gateway.counters()["inference_windows"] >= 5, 30, "quiet windows scored"
        )
        await ramp(bus, 0.3, 1.6, 0.02, gateway)
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 5, "power cut")
        assert gateway.inference is not None
        assert gateway.counters()["inference_windows"] > 0
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 10)

    messages = stored(tmp_path / "buf.db")
    alarms = [m for m in messages if isinstance(m, wire.AlarmEvent)]
    forecast = [a for a in alarms if a.kind == "forecast" and a.level == "alarm"]
    threshold = [a for a in alarms if a.kind == "ch4" and a.tag == "CH4_A"]
    assert forecast, [(a.kind, a.level) for a in alarms]
    assert forecast[0].actuators == [] and forecast[0].tag == "CH4_A"
    # the fail-safe start holds the first readings as if cut; the ramp then alarms and cuts
    rising = [a for a in threshold if a.reason in ("above_alarm", "above_cut")]
    assert rising and forecast[0].ts_ns < rising[0].ts_ns
    assert rising[-1].level == "cut" and rising[-1].actuators == ["power"]
    assert forecast[0].reason == "forecast_over" and "rule forecast:" in forecast[0].message
    points = [p for m in messages if isinstance(m, wire.TelemetryBatch) for p in m.points]
    predicted = [p for p in points if p.tag == "CH4_A.p_exceed_10m"]
    assert predicted and all(p.kind == "forecast" and p.area == "1201 face" for p in predicted)
    assert all(p.value is not None and 0 <= p.value <= 1 for p in predicted)


async def test_a_crashing_model_neither_delays_nor_lifts_a_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(batches: object) -> object:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(InferenceRunner, "score", staticmethod(broken))
    site = site_with_model(fast_models(tmp_path / "models"))
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])
    gateway, task = start(site, bus, tmp_path)
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power released")
        await async_wait_until(lambda: gateway.task_failures > 0, 10, "the model task crashed")
        bus.set(1, "holding", 0, f32(1.8))
        await async_wait_until(lambda: bus.coils.get((10, 0)) is True, 2, "power cut")
        bus.set(1, "holding", 0, f32(0.3))
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 5, "power restored")
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 10)


def test_calibration_readings_stay_out_of_the_model_windows(tmp_path: Path) -> None:
    site = site_with_model(fast_models(tmp_path / "models"))
    gateway, _ = start_without_running(site, tmp_path)
    runner = gateway.inference
    assert runner is not None
    good = Sample("CH4_A", "ch4-a", 0.4, Quality.GOOD, time.time_ns())
    gateway._decide_then_infer(good)
    assert runner.samples_offered == 1
    gateway.engine.calibrate("CH4_A", time.time_ns() + 60 * 10**9, by="test")
    gateway._decide_then_infer(Sample("CH4_A", "ch4-a", 2.0, Quality.GOOD, time.time_ns()))
    assert runner.samples_offered == 1  # test gas is not fed to the forecaster


def start_without_running(site: LoadedSite, tmp_path: Path) -> tuple[Gateway, FakeBus]:
    bus = FakeBus()
    gateway = Gateway(
        site,
        buffer_path=tmp_path / "buf.db",
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        driver_factory=lambda _: bus,
    )
    return gateway, bus
