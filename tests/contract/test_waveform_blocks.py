"""Waveform blocks through a real Modbus TCP device: the simulator serves a vibration
sensor's 2048-sample block in registers, the gateway reads it with the ordinary Modbus
driver and the vibration-wear model scores it; worn bearings pre-alarm, a dead device or
a bad register never reaches the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.config import ConfigError, load_site
from edge.inference import InferenceError, InferenceRunner, WaveformReader
from simulators import SiteSimulator
from simulators.synthetic import vibration_blocks
from tests.support import free_port
from tests.waveforms import gateway_pre_alarms_on_wear

TAG, DEVICE = "VIB_P1", "pump-1"
RULE = f"forecast:vibration-wear:{TAG}"

SITE = """
site: {{id: plant}}
gateway: {{id: gw-plant}}
buses:
  - {{id: pump-net, type: modbus_tcp, host: 127.0.0.1, port: {port}, timeout_ms: 1000}}
devices:
  - id: pump-1
    bus: pump-net
    unit_id: 1
    poll_ms: 500
    tags:
      - {{name: VIB_P1, profile: vibration, address: 0, type: uint16, scale: 0.01,
         location: {{area: pumps, position: default}}}}
inference:
  tick_ms: 100
  assign:
    - {{model: vibration-wear, tags: [VIB_P1]}}
  waveforms:
    - {{tag: VIB_P1, table: {table}, address: 100, samples: {samples}, type: int16,
       scale: 0.002, every_s: {every_s}}}
"""


def write_site(
    tmp_path: Path, *, table: str = "holding", samples: int = 2048, every_s: float = 0.3
) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        SITE.format(port=free_port(), table=table, samples=samples, every_s=every_s),
        encoding="utf-8",
    )
    return path


def anomaly(runner: InferenceRunner) -> float:
    samples, _ = runner.step()
    values = [s.value for s in samples if s.tag == f"{TAG}.anomaly"]
    assert len(values) == 1, [s.tag for s in samples]
    assert values[0] is not None
    return values[0]


@pytest.mark.parametrize("table", ["holding", "input"])
async def test_blocks_read_over_modbus_are_scored_like_the_synthetic_ones(
    tmp_path: Path, table: str
) -> None:
    site = load_site(write_site(tmp_path, table=table))
    runner = InferenceRunner(site)
    reader = WaveformReader(site, runner)
    async with SiteSimulator(site) as sim:
        source = reader.sources[0]
        assert (
            source.plan is not None and source.plan.requests == 17
        )  # 2048 registers, 125 per request
        for stage in (0, 3):
            sim.set_wear(TAG, stage)
            assert await reader.read_once(source)
            got = anomaly(runner)
            # the block made it through int16 registers at 2 mm/s2 per count: same score
            block = vibration_blocks(7, [stage]).values[0]
            quantised = np.clip(np.round(block / 0.002), -32768, 32767) * 0.002
            want = runner.slots["vibration-wear"].model.score(quantised[None, :])["anomaly"][0]
            assert got == pytest.approx(want, abs=1e-6)
            assert (got >= 0.5) is (stage > 0), (stage, got)
        for driver in reader.drivers.values():
            await driver.close()
    assert reader.counters() == {"waveform_blocks": 2, "waveform_bad_blocks": 0}


async def test_a_dead_device_or_a_failing_read_gives_no_block(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path))
    runner = InferenceRunner(site)
    reader = WaveformReader(site, runner)
    async with SiteSimulator(site) as sim:
        source = reader.sources[0]
        sim.set_failing(DEVICE, True)
        assert not await reader.read_once(source)
        sim.set_failing(DEVICE, False)
        sim.set_offline(DEVICE, True)
        assert not await reader.read_once(source)
        assert runner.step()[0] == []  # nothing half-read reached the model
        sim.set_offline(DEVICE, False)
        assert await reader.read_once(source)
        assert 0.0 <= anomaly(runner) <= 1.0
        for driver in reader.drivers.values():
            await driver.close()
    assert reader.counters() == {"waveform_blocks": 1, "waveform_bad_blocks": 2}


async def test_the_gateway_reads_blocks_and_worn_bearings_pre_alarm(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path))
    async with SiteSimulator(site) as sim:
        counters = await gateway_pre_alarms_on_wear(site, sim.set_wear, TAG, tmp_path)
    # the scalar velocity readings are polled as before and never enter the block
    assert counters["inference_samples"] == 0


def test_a_block_size_other_than_the_models_is_refused(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path, samples=1024))
    with pytest.raises(InferenceError, match="1024 samples per block, the model wants 2048"):
        WaveformReader(site, InferenceRunner(site))


def test_a_waveform_for_a_tag_without_a_model_is_a_config_error(tmp_path: Path) -> None:
    path = write_site(tmp_path)
    text = (
        path.read_text(encoding="utf-8")
        .replace("    - {model: vibration-wear, tags: [VIB_P1]}\n", "")
        .replace("  assign:\n", "")
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = "\n".join(str(i) for i in info.value.issues)
    assert "inference.waveforms.0.tag" in message and "no model is assigned" in message
