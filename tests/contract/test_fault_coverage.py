"""Fault coverage per protocol, injected through scenario files.

One site with every protocol (an RTU line on a pty at 8E1, RTU over TCP, an
OPC UA server, a serial detector) is served by ``WholeSiteSimulator``; each test
writes a scenario file, loads it with ``load_scenario`` (checked against the
site, as ``sim run`` does) and plays it with ``ScenarioPlayer`` while real
``BusPoller``s read the buses with the gateway's own drivers. Nobody touches a
driver or a poller during a test: recovery is by the gateway alone.

Per fault: OPC UA and serial slow answers, CRC-bad RTU frames (line and TCP),
stuck / spike / drift / noise values, an OPC UA server restart (data again within
10 s), a pulled serial cable (back by itself), garbled serial lines (counted;
the loop never stops).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from device_drivers import DeviceDriver, Sample
from device_drivers.modbus import ModbusDriver
from device_drivers.opcua import OpcUaDriver
from device_drivers.serial import SerialLineDriver
from edge.actuation import Interlock
from edge.config import LoadedSite, load_site
from edge.drivers import make_driver
from edge.polling import BusPoller
from simulators import ScenarioPlayer, WholeSiteSimulator, load_scenario
from tests.support import async_wait_until, quiet_port

pytestmark = [pytest.mark.contract, pytest.mark.asyncio(loop_scope="module")]

SITE = """
site: {{id: fault-site}}
gateway: {{id: gw-faults}}
buffer: {{path: {tmp}/buffer.db}}
buses:
  - {{id: rtu-line, type: modbus_rtu, port: {tmp}/tty-rtu, baudrate: 19200, timeout_ms: 300}}
  - {{id: rtu-tcp, type: modbus_rtu_over_tcp, host: 127.0.0.1, port: {rtu_port},
      timeout_ms: 300}}
  - id: plc
    type: opcua
    endpoint: "opc.tcp://127.0.0.1:{opc_port}/faults"
    namespace: "urn:safewatch:faults"
    publishing_ms: 100
    timeout_ms: 500
  - {{id: det, type: serial, port: {tmp}/tty-det, format: kv_xor, max_age_ms: 600,
      timeout_ms: 300}}
devices:
  - id: line-gas
    bus: rtu-line
    unit_id: 1
    poll_ms: 100
    stale_after_ms: 3000
    tags:
      - {{name: CH4_L, profile: ch4, address: 0, type: float32,
          location: {{area: a, position: face}}}}
  - id: tcp-env
    bus: rtu-tcp
    unit_id: 2
    poll_ms: 100
    stale_after_ms: 3000
    tags:
      - {{name: CO_T, profile: co, address: 0, type: uint16, scale: 0.1,
          location: {{area: a, position: return}}}}
  - id: plc-gas
    bus: plc
    poll_ms: 100
    stale_after_ms: 3000
    tags:
      - {{name: CH4_P, profile: ch4, node: "ns=2;s=Faults.CH4",
          location: {{area: a, position: face}}}}
      - {{name: O2_P, profile: o2, browse_path: "Faults/O2", mode: read,
          location: {{area: a, position: face}}}}
  - id: det-1
    bus: det
    poll_ms: 100
    stale_after_ms: 3000
    tags:
      - {{name: CH4_S, profile: ch4, key: CH4, location: {{area: a, position: face}}}}
      - {{name: CO_S, profile: co, key: CO, location: {{area: a, position: return}}}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> LoadedSite:
    tmp = tmp_path_factory.mktemp("faults")
    path = tmp / "site.yaml"
    path.write_text(SITE.format(tmp=tmp, rtu_port=quiet_port(), opc_port=quiet_port()))
    loaded = load_site(path)
    line = loaded.bus("rtu-line")
    assert getattr(line, "parity", None) == "E"  # Modbus's default: the pty must still open
    return loaded


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim(site: LoadedSite) -> AsyncIterator[WholeSiteSimulator]:
    # one simulator for the module: asyncua builds a server's address space in seconds
    simulator = WholeSiteSimulator(site, serial_interval_s=0.05)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class Recorder:
    """Every sample a real poller delivered, with the scenario time it arrived at."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, Sample]] = []  # (monotonic, scenario t, sample)
        self.player: ScenarioPlayer | None = None

    def __call__(self, sample: Sample) -> None:
        t = self.player.scenario_time if self.player is not None else -1.0
        self.samples.append((time.monotonic(), t, sample))

    def of(self, tag: str, since: float = 0.0) -> list[tuple[float, Sample]]:
        return [(t, s) for mono, t, s in self.samples if s.tag == tag and mono >= since]

    def values(self, tag: str, t_from: float, t_to: float = float("inf")) -> list[float]:
        """GOOD values of ``tag`` that arrived between scenario times ``t_from`` and ``t_to``."""
        return [
            s.value
            for t, s in self.of(tag)
            if t_from <= t <= t_to and s.is_good and s.value is not None
        ]

    def latest(self, tag: str) -> Sample | None:
        found = self.of(tag)
        return found[-1][1] if found else None

    def good(self, tag: str, value: float | None = None, since: float = 0.0) -> bool:
        for _, sample in reversed(self.of(tag, since)):
            if value is None:
                return sample.is_good
            return sample.is_good and sample.value == pytest.approx(value, abs=1e-6)
        return False


@asynccontextmanager
async def polling(
    site: LoadedSite, *bus_ids: str
) -> AsyncIterator[tuple[Recorder, dict[str, DeviceDriver]]]:
    """Real pollers on ``bus_ids`` with the gateway's drivers, stopped afterwards."""
    recorder = Recorder()
    drivers = {bus: make_driver(site.bus(bus)) for bus in bus_ids}
    pollers = [BusPoller(site, bus, drv, recorder, Interlock(site)) for bus, drv in drivers.items()]
    tasks = [asyncio.create_task(p.run(), name=f"poll:{p.bus_id}") for p in pollers]
    try:
        yield recorder, drivers
    finally:
        for poller in pollers:
            poller.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for drv in drivers.values():
            await drv.close()


def _scenario_file(tmp: Path, text: str) -> Path:
    path = tmp / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def playing(
    sim: WholeSiteSimulator, site: LoadedSite, path: Path, recorder: Recorder
) -> AsyncIterator[ScenarioPlayer]:
    player = ScenarioPlayer(sim, load_scenario(path, site), tick_s=0.02)
    recorder.player = player
    task = asyncio.create_task(player.run(), name="scenario")
    try:
        yield player
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _all_good(recorder: Recorder, tags: Iterator[str] | list[str], within: float) -> None:
    names = list(tags)
    await async_wait_until(
        lambda: all(recorder.good(t) for t in names), within, f"{names} GOOD again"
    )


# -- slow answers --------------------------------------------------------------------


async def test_a_slow_opcua_server_times_out_reads_and_recovers_by_itself(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: slow-plc\nduration_s: 3.5\n"
        "faults:\n  - {kind: slow, device: plc-gas, at_s: 0.5, until_s: 3.0, delay_s: 1.5}\n",
    )
    async with polling(site, "plc") as (rec, drivers):
        await _all_good(rec, ["CH4_P", "O2_P"], 15)
        async with playing(sim, site, path, rec):
            await async_wait_until(
                lambda: any(not s.is_good and s.reason == "timeout" for _, s in rec.of("O2_P")),
                10,
                "a read of the slow server to time out",
            )
            during = len(rec.samples)
        assert len(rec.samples) > during, "the poller kept polling through the slow answers"
        ended = time.monotonic()
        await async_wait_until(
            lambda: rec.good("O2_P", since=ended) and rec.good("CH4_P", since=ended),
            10,
            "O2_P and CH4_P GOOD after the slow answers, with no action",
        )
        assert isinstance(drivers["plc"], OpcUaDriver)


async def test_a_slow_serial_detector_ages_to_timeout_and_recovers_by_itself(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: slow-detector\nduration_s: 3.5\n"
        "faults:\n  - {kind: slow, device: det-1, at_s: 0.3, until_s: 3.0, delay_s: 2.0}\n",
    )
    async with polling(site, "det") as (rec, drivers):
        await _all_good(rec, ["CH4_S", "CO_S"], 10)
        async with playing(sim, site, path, rec):
            await async_wait_until(
                lambda: any(not s.is_good and s.reason == "timeout" for _, s in rec.of("CH4_S")),
                10,
                "a line older than max_age: BAD timeout",
            )
        ended = time.monotonic()
        await async_wait_until(
            lambda: rec.good("CH4_S", since=ended), 10, "CH4_S GOOD once the detector keeps up"
        )
        drv = drivers["det"]
        assert isinstance(drv, SerialLineDriver) and drv.garbled_lines == 0


# -- damaged frames and lines ----------------------------------------------------------


async def test_crc_bad_rtu_frames_are_counted_and_never_stop_the_loop(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: noisy-lines\nduration_s: 3\n"
        "faults:\n"
        "  - {kind: garbled, bus: rtu-line, at_s: 0, until_s: 2.5, every: 2}\n"
        "  - {kind: garbled, bus: rtu-tcp, at_s: 0, until_s: 2.5, every: 3}\n",
    )
    before = {bus: sim.modbus.crc_bad_sent(bus) for bus in ("rtu-line", "rtu-tcp")}
    async with polling(site, "rtu-line", "rtu-tcp") as (rec, drivers):
        await _all_good(rec, ["CH4_L", "CO_T"], 10)
        start = time.monotonic()
        async with playing(sim, site, path, rec):
            pass
        for tag, bus in (("CH4_L", "rtu-line"), ("CO_T", "rtu-tcp")):
            during = [s for _, s in rec.of(tag, start)]
            crc = [s for s in during if s.reason == "crc"]
            assert crc, f"{tag}: no sample failed its CRC"
            # the loop went on: good reads between the damaged ones, from the same poller
            assert sum(s.is_good for s in during) >= len(crc) // 2, (tag, len(crc), len(during))
            drv = drivers[bus]
            assert isinstance(drv, ModbusDriver)
            sent = sim.modbus.crc_bad_sent(bus) - before[bus]
            assert drv.crc_errors >= 1 and sent >= drv.crc_errors >= len(crc)
        ended = time.monotonic()
        await async_wait_until(
            lambda: rec.good("CH4_L", since=ended) and rec.good("CO_T", since=ended),
            5,
            "clean frames again",
        )


async def test_garbled_serial_lines_are_counted_and_never_stop_the_loop(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: garbled-lines\nduration_s: 2\n"
        "faults:\n  - {kind: garbled, bus: det, at_s: 0, until_s: 1.5, every: 2}\n",
    )
    async with polling(site, "det") as (rec, drivers):
        await _all_good(rec, ["CH4_S"], 10)
        drv = drivers["det"]
        assert isinstance(drv, SerialLineDriver)
        sent_before = sim.serial.garbled_sent("det")
        start = time.monotonic()
        async with playing(sim, site, path, rec):
            pass
        garbled = sim.serial.garbled_sent("det") - sent_before
        assert garbled >= 3 and drv.checksum_errors >= 1 and drv.garbled_lines >= 1
        during = [s for _, s in rec.of("CH4_S", start)]
        assert len(during) >= 10 and all(s.is_good for s in during), "every other line is fine"


# -- values --------------------------------------------------------------------------


async def test_stuck_spike_drift_and_noise_reach_the_gateway_as_played(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: value-faults\nduration_s: 4\n"
        "tags:\n"
        "  CO_T: [[0, 10], [4, 50]]\n"  # rises 10 ppm/s
        "  CH4_S: [[0, 0.3], [4, 0.3]]\n"
        "  O2_P: [[0, 20.9], [4, 20.9]]\n"
        "faults:\n"
        "  - {kind: stuck, tag: CO_T, at_s: 1.0, until_s: 2.5}\n"
        "  - {kind: spike, tag: CH4_S, at_s: 1.5, until_s: 2.5, magnitude: 1.0}\n"
        "  - {kind: drift, tag: O2_P, at_s: 0.5, rate_per_s: -0.5}\n"
        "  - {kind: noise, tag: CH4_L, at_s: 0, amplitude: 0.05}\n",
    )
    async with polling(site, "rtu-line", "rtu-tcp", "plc", "det") as (rec, _):
        await _all_good(rec, ["CH4_L", "CO_T", "CH4_P", "O2_P", "CH4_S"], 15)
        async with playing(sim, site, path, rec):
            pass
        # stuck: one value the whole time it was held (margins for poll and pty latency)
        held = set(rec.values("CO_T", 1.4, 2.3))
        assert len(held) == 1, held
        moving = rec.values("CO_T", 2.8)
        assert moving and max(moving) > max(held)  # released: follows its path again
        # spike: +1.0 on top of 0.3 while it lasts, 0.3 outside
        spiked = rec.values("CH4_S", 1.8, 2.3)
        calm = rec.values("CH4_S", 0, 1.2)
        assert spiked and all(v == pytest.approx(1.3, abs=0.01) for v in spiked), spiked
        assert calm and all(v == pytest.approx(0.3, abs=0.01) for v in calm), calm
        # drift: O2 falls 0.5 %/s from 0.5 s (pushed by the OPC UA subscription)
        late = rec.values("O2_P", 3.5)
        assert late and min(late) == pytest.approx(20.9 - 0.5 * 3.5, abs=0.3), late
        # noise: Gaussian around the nominal, never a constant
        noisy = rec.values("CH4_L", 0.2)
        assert len(set(noisy)) >= 5 and statistics.pstdev(noisy) > 0.01
        assert statistics.fmean(noisy) == pytest.approx(0.3, abs=0.05)  # ch4 nominal


# -- connections lost ------------------------------------------------------------------


async def test_opcua_server_restart_from_a_scenario_resumes_within_10_s_with_no_action(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: plc-restart\nduration_s: 2\n"
        "tags:\n  CH4_P: [[0, 0.3], [0.5, 0.3], [0.6, 0.77], [2, 0.77]]\n"
        "faults:\n  - {kind: opcua_restart, bus: plc, at_s: 0.2, down_s: 1.0}\n",
    )
    async with polling(site, "plc") as (rec, drivers):
        await _all_good(rec, ["CH4_P", "O2_P"], 15)
        restarts = sim.opcua.restarts
        async with playing(sim, site, path, rec) as player:
            await async_wait_until(
                lambda: sim.opcua.restarts > restarts, 10, "the scenario restarted the server"
            )
            restarted = time.monotonic() - 1.0  # the server was down 1.0 s before this
            assert [k for _, k, on in player.faults_applied if on] == ["opcua_restart"]
        await async_wait_until(
            lambda: rec.good("CH4_P", 0.77, since=restarted) and rec.good("O2_P", since=restarted),
            10,
            "data from the restarted server",
        )
        assert time.monotonic() - restarted < 10.0
        drv = drivers["plc"]
        assert isinstance(drv, OpcUaDriver) and drv.reconnects >= 1
        gap = [s for _, s in rec.of("CH4_P", restarted) if not s.is_good]
        assert all(s.reason for s in gap), "BAD with a reason while down, never silently old"


async def test_a_pulled_serial_cable_from_a_scenario_comes_back_by_itself(
    site: LoadedSite, sim: WholeSiteSimulator, tmp_path: Path
) -> None:
    path = _scenario_file(
        tmp_path,
        "name: cable\nduration_s: 2\n"
        "tags:\n  CH4_S: [[0, 0.3], [1.0, 0.3], [1.1, 0.55], [2, 0.55]]\n"
        "faults:\n  - {kind: cable_pulled, bus: det, at_s: 0.2, until_s: 1.5}\n",
    )
    async with polling(site, "det") as (rec, drivers):
        await _all_good(rec, ["CH4_S"], 10)
        async with playing(sim, site, path, rec):
            await async_wait_until(
                lambda: any(s.reason == "comms_lost" for _, s in rec.of("CH4_S")),
                10,
                "the pulled cable seen as comms_lost",
            )
        await async_wait_until(
            lambda: rec.good("CH4_S", 0.55), 10, "values again on the plugged cable"
        )
        drv = drivers["det"]
        assert isinstance(drv, SerialLineDriver) and drv.reopens >= 1
