"""Waveform blocks over OPC UA (an array variable) and over a Modbus RTU line (the line's
poller reads the block's requests in its schedule's slack), against the simulators.

The same synthetic bearing block served by the simulator must score as the block itself
does; a bad status, a non-finite element, a server that is down or a silent slave gives no
block (counted), never a half-filled one; the RTU line's own polls keep their period; a
site that asks for a block the way its bus cannot speak is refused with the field named.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from bench._harness import EDGE_NICE, priority
from device_drivers import Quality, Sample
from edge.actuation import Interlock
from edge.config import ConfigError, LoadedSite, load_site
from edge.drivers import make_driver
from edge.inference import InferenceRunner, WaveformReader
from edge.polling import BusPoller
from simulators import OpcUaSimulator, SiteSimulator, WholeSiteSimulator
from simulators.synthetic import vibration_blocks
from tests.support import async_wait_until, free_port
from tests.waveforms import gateway_pre_alarms_on_wear

pytestmark = pytest.mark.contract

TAG = "VIB_P1"
RULE = f"forecast:vibration-wear:{TAG}"

OPCUA_SITE = """
site: {{id: plant}}
gateway: {{id: gw-plant}}
buses:
  - {{id: ua, type: opcua, endpoint: "opc.tcp://127.0.0.1:{port}/sw", timeout_ms: 1000}}
devices:
  - id: pump-1
    bus: ua
    poll_ms: 500
    tags:
      - {{name: VIB_P1, profile: vibration, node: "ns=2;s=pump-1.VIB_P1", mode: read,
         location: {{area: pumps, position: default}}}}
inference:
  tick_ms: 100
  assign:
    - {{model: vibration-wear, tags: [VIB_P1]}}
  waveforms:
    - {{tag: VIB_P1, {address}, samples: 2048, scale: 0.5, every_s: 0.3}}
"""

RTU_SITE = """
site: {{id: plant}}
gateway: {{id: gw-plant}}
buses:
  - {{id: line1, type: modbus_rtu, port: {line}, baudrate: 115200, parity: N, stopbits: 2,
     timeout_ms: 300}}
devices:
  - id: pump-1
    bus: line1
    unit_id: 1
    poll_ms: 200
    tags:
      - {{name: VIB_P1, profile: vibration, address: 0, type: uint16, scale: 0.01,
         location: {{area: pumps, position: default}}}}
  - id: roof-1
    bus: line1
    unit_id: 2
    poll_ms: 200
    tags:
      - {{name: ROOF_1, profile: roof_separation, address: 0,
         location: {{area: pumps, position: default}}}}
{extra}
inference:
  tick_ms: 100
  assign:
    - {{model: vibration-wear, tags: [VIB_P1]}}
  waveforms:
    - {{tag: VIB_P1, address: 100, samples: 2048, type: int16, scale: 0.002, every_s: 0.5}}
"""


def opcua_site(tmp_path: Path, address: str = 'node: "ns=2;s=pump-1.VIB_BLOCK"') -> LoadedSite:
    path = tmp_path / "plant.yaml"
    path.write_text(OPCUA_SITE.format(port=free_port(), address=address), encoding="utf-8")
    return load_site(path)


def rtu_site(tmp_path: Path, extra: str = "") -> LoadedSite:
    path = tmp_path / "plant.yaml"
    text = RTU_SITE.format(line=tmp_path / "ttyRS485", extra=extra)
    path.write_text(text, encoding="utf-8")
    return load_site(path)


def anomaly(runner: InferenceRunner) -> float:
    samples, _ = runner.step()
    values = [s.value for s in samples if s.tag == f"{TAG}.anomaly"]
    assert len(values) == 1 and values[0] is not None, [s.tag for s in samples]
    return values[0]


def expected(runner: InferenceRunner, block: np.ndarray) -> float:
    model = runner.slots["vibration-wear"].model
    return float(model.score(block[None, :])["anomaly"][0])


# -- OPC UA ------------------------------------------------------------------------------


async def test_opcua_array_blocks_are_scored_like_the_block_itself(tmp_path: Path) -> None:
    site = opcua_site(tmp_path)
    runner = InferenceRunner(site)
    reader = WaveformReader(site, runner)
    source = reader.sources[0]
    try:
        async with OpcUaSimulator(site) as sim:
            for stage in (0, 3):
                block = vibration_blocks(11, [stage]).values[0]
                sim.set_waveform(TAG, block.tolist())
                await sim.flush()
                assert await reader.read_once(source)
                got = anomaly(runner)
                # the server holds raw = value / 0.5; the reader scales back: the same block
                assert got == pytest.approx(expected(runner, block), abs=1e-6)
                assert (got >= 0.5) is (stage > 0), (stage, got)
    finally:
        for driver in reader.drivers.values():
            await driver.close()
    assert reader.counters() == {"waveform_blocks": 2, "waveform_bad_blocks": 0}


async def test_opcua_bad_status_nan_or_a_server_down_gives_no_block(tmp_path: Path) -> None:
    site = opcua_site(tmp_path)
    runner = InferenceRunner(site)
    reader = WaveformReader(site, runner)
    source = reader.sources[0]
    try:
        async with OpcUaSimulator(site) as sim:
            block = vibration_blocks(3, [0]).values[0].tolist()
            block[100] = float("nan")  # a transmitter's garbage element
            sim.set_waveform(TAG, block)
            await sim.flush()
            assert not await reader.read_once(source)
            await sim.set_offline("ua", True)  # server gone
            assert not await reader.read_once(source)
            assert runner.step()[0] == []  # nothing half-read reached the model
            await sim.set_offline("ua", False)
            block[100] = 0.0
            sim.set_waveform(TAG, block)
            await sim.flush()

            async def read_again() -> bool:
                return await reader.read_once(source)

            # the driver reconnects by itself (its backoff), then the block is whole again
            deadline = time.monotonic() + 15
            while not await read_again():
                assert time.monotonic() < deadline, "no block after the server came back"
                await asyncio.sleep(0.2)
            assert 0.0 <= anomaly(runner) <= 1.0
    finally:
        for driver in reader.drivers.values():
            await driver.close()
    counters = reader.counters()
    assert counters["waveform_blocks"] == 1 and counters["waveform_bad_blocks"] >= 2


async def test_the_gateway_reads_opcua_blocks_and_worn_bearings_pre_alarm(tmp_path: Path) -> None:
    site = opcua_site(tmp_path)
    async with WholeSiteSimulator(site) as sim:
        await gateway_pre_alarms_on_wear(site, sim.set_wear, TAG, tmp_path)


# -- Modbus RTU: a shared line -------------------------------------------------------------


async def test_rtu_blocks_go_through_the_lines_poller_and_keep_its_period(
    tmp_path: Path,
) -> None:
    site = rtu_site(tmp_path)
    seen: list[float] = []

    def sink(sample: Sample) -> None:
        if sample.tag == "ROOF_1" and sample.quality is Quality.GOOD:
            seen.append(time.monotonic())

    # the poller runs as the shipped unit runs the gateway (Nice=-10): the period is timed
    with priority(EDGE_NICE):
        async with SiteSimulator(site) as sim:
            poller = BusPoller(
                site, "line1", make_driver(site.config.buses[0]), sink, Interlock(site)
            )
            runner = InferenceRunner(site)
            reader = WaveformReader(site, runner, lines={"line1": poller})
            source = reader.sources[0]
            assert len(source.chunks) == 17 and source.plan is None  # 125 registers a request
            task = asyncio.create_task(poller.run())
            try:
                await async_wait_until(lambda: len(seen) >= 11, 20, "10 polls of roof-1")
                baseline = (seen[-1] - seen[0]) / (len(seen) - 1)
                for stage in (0, 3):
                    sim.set_wear(TAG, stage)
                    seen.clear()
                    began = time.monotonic()
                    assert await reader.read_once(source)
                    took = time.monotonic() - began
                    # several requests fit in one period's slack: not one request per period
                    assert took < 17 * 0.2, took
                    got = anomaly(runner)
                    block = vibration_blocks(7, [stage]).values[0]
                    quantised = np.clip(np.round(block / 0.002), -32768, 32767) * 0.002
                    assert got == pytest.approx(expected(runner, quantised), abs=1e-6)
                    assert (got >= 0.5) is (stage > 0), (stage, got)
                    # the line's own polls kept their period while the block was read
                    during = (seen[-1] - seen[0]) / (len(seen) - 1)
                    assert during <= baseline * 1.1, (baseline, during)
                assert poller.side_reads == 34
                # a silent slave: the block fails (counted), the line keeps polling roof-1
                sim.set_offline("pump-1", True)
                assert not await reader.read_once(source)
                seen.clear()
                await async_wait_until(lambda: len(seen) >= 3, 10, "roof-1 still polled")
            finally:
                poller.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    assert reader.counters() == {"waveform_blocks": 2, "waveform_bad_blocks": 1}


async def test_the_gateway_reads_rtu_blocks_and_worn_bearings_pre_alarm(tmp_path: Path) -> None:
    site = rtu_site(tmp_path)
    async with SiteSimulator(site) as sim:
        await gateway_pre_alarms_on_wear(site, sim.set_wear, TAG, tmp_path)


# -- configuration ---------------------------------------------------------------------------


def _issues(info: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(str(i) for i in info.value.issues)


def test_a_register_address_on_an_opcua_bus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        opcua_site(tmp_path, address="address: 100")
    message = _issues(info)
    assert "inference.waveforms.0.address" in message and "OPC UA" in message, message


def test_a_node_on_a_modbus_bus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    text = RTU_SITE.format(line=tmp_path / "tty", extra="").replace(
        "address: 100,", 'node: "ns=2;s=x",'
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = _issues(info)
    assert "inference.waveforms.0.address" in message and "first register" in message, message


def test_both_a_node_and_an_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        opcua_site(tmp_path, address='address: 1, node: "ns=2;s=x"')
    assert "inference.waveforms.0" in _issues(info) and "not both" in _issues(info)


def test_a_block_on_an_rtu_line_that_protects_people_is_refused(tmp_path: Path) -> None:
    methane = """  - id: gas-1
    bus: line1
    unit_id: 3
    poll_ms: 200
    tags:
      - {name: CH4_1, profile: ch4, address: 0, location: {area: pumps, position: face}}"""
    with pytest.raises(ConfigError) as info:
        rtu_site(tmp_path, extra=methane)
    message = _issues(info)
    assert "inference.waveforms.0.tag" in message and "CH4_1" in message, message
    assert "line of its own" in message
