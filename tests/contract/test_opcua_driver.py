"""The OPC UA driver against the asyncua simulator built from a site file.

One simulator serves the whole module (asyncua builds its standard address
space in seconds); each test opens its own driver and session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from device_drivers import DeviceUnavailable, Quality, Sample
from device_drivers.opcua import OpcUaDriver, OpcUaPlan
from edge.actuation import Interlock
from edge.config import AnyTag, LoadedSite, OpcUaBus, load_site
from edge.drivers import device_spec, make_driver, output_spec
from edge.polling import BusPoller
from simulators import OpcUaSimulator
from tests.support import async_wait_until, free_port, quiet_port

pytestmark = [pytest.mark.contract, pytest.mark.asyncio(loop_scope="module")]

SITE = """
site: {{id: opc-test}}
gateway: {{id: gw-opc}}
buffer: {{path: {buffer}}}
buses:
  - id: plc
    type: opcua
    endpoint: "opc.tcp://127.0.0.1:{port}/safewatch"
    namespace: "urn:safewatch:test"
    publishing_ms: 50
    timeout_ms: 500
devices:
  - id: gas-1
    bus: plc
    poll_ms: 200
    stale_after_ms: 2000
    tags:
      - {{name: CH4_A, profile: ch4, node: "ns=2;s=Panel.CH4_A",
          location: {{area: a, position: face}}}}
      - {{name: CO_A, profile: co, browse_path: "Panel/Gas/CO_A", mode: read,
          location: {{area: a, position: return}}}}
      - {{name: O2_A, profile: o2, node: "ns=2;s=Panel.O2_A", mode: read,
          location: {{area: a, position: face}}}}
      - {{name: CH4_B, profile: ch4, browse_path: "Panel/Gas/CH4_B", deadband: 0.5,
          location: {{area: a, position: return}}}}
      - {{name: CH4_RAW, profile: ch4, node: "ns=2;i=4711", scale: 0.01,
          location: {{area: a, position: face}}}}
  - id: breaker
    bus: plc
actuators:
  - {{id: power-a, kind: power_cut, device: breaker, node: "ns=2;s=Panel.Power"}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> LoadedSite:
    folder = tmp_path_factory.mktemp("opcua")
    path = folder / "site.yaml"
    path.write_text(SITE.format(port=quiet_port(), buffer=folder / "buffer.db"))
    return load_site(path)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim(site: LoadedSite) -> AsyncIterator[OpcUaSimulator]:
    simulator = OpcUaSimulator(site)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def nominal(site: LoadedSite, sim: OpcUaSimulator) -> None:
    """Every test starts with every tag GOOD at its profile's nominal value."""
    for tag in sim.tags():
        sim.set_value(tag, site.profile_of(_tag(site, tag)).nominal)
    await sim.flush()


@pytest_asyncio.fixture(loop_scope="module")
async def driver(site: LoadedSite) -> AsyncIterator[OpcUaDriver]:
    drv = make_driver(site.bus("plc"))
    assert isinstance(drv, OpcUaDriver)
    try:
        yield drv
    finally:
        await drv.close()


def _tag(site: LoadedSite, name: str) -> AnyTag:
    return next(t for _, t in site.tags() if t.name == name)


def _plan(site: LoadedSite, drv: OpcUaDriver, device: str = "gas-1") -> OpcUaPlan:
    return drv.plan(device_spec(site, site.device(device)))


def _by_tag(samples: Sequence[Sample]) -> dict[str, Sample]:
    return {s.tag: s for s in samples}


async def _until(
    drv: OpcUaDriver,
    plan: OpcUaPlan,
    tag: str,
    ok: Callable[[Sample], bool],
    within: float = 3.0,
) -> Sample:
    """Read like the poller does until ``ok(sample)`` holds."""

    async def check() -> Sample | None:
        sample = _by_tag(await drv.read(plan))[tag]
        return sample if ok(sample) else None

    found = await async_wait_until(check, within, f"{tag} to satisfy the condition")
    assert found is not None
    return found


async def test_read_mode_points_cost_one_request_and_subscribed_ones_none(
    site: LoadedSite, driver: OpcUaDriver
) -> None:
    plan = _plan(site, driver)
    assert plan.requests == 1  # CO_A and O2_A in one Read; the rest subscribed
    assert len(plan.polled) == 2 and len(plan.subscribed) == 3
    samples = _by_tag(await driver.read(plan))
    assert samples["CO_A"].value == pytest.approx(site.profiles["co"].nominal)
    assert samples["O2_A"].value == pytest.approx(site.profiles["o2"].nominal)
    assert all(s.quality is Quality.GOOD for s in samples.values()), samples


async def test_reads_split_into_batches_in_flight_together_keep_point_order(
    site: LoadedSite, sim: OpcUaSimulator
) -> None:
    base = make_driver(site.bus("plc"))
    assert isinstance(base, OpcUaDriver)
    endpoint = dataclasses.replace(base.endpoint, max_nodes_per_read=1, reads_in_flight=2)
    drv = OpcUaDriver("plc", endpoint, timeout_s=0.5)
    try:
        plan = _plan(site, drv)
        assert plan.requests == 2  # CO_A and O2_A: one node per Read
        sim.set_value("CO_A", 7.0)
        sim.set_value("O2_A", 20.1)
        await sim.flush()
        samples = _by_tag(await drv.read(plan))
        assert samples["CO_A"].value == pytest.approx(7.0)
        assert samples["O2_A"].value == pytest.approx(20.1)
        assert all(s.quality is Quality.GOOD for s in samples.values()), samples
    finally:
        await drv.close()


async def test_subscription_pushes_changes_and_scaling_applies(
    site: LoadedSite, sim: OpcUaSimulator, driver: OpcUaDriver
) -> None:
    plan = _plan(site, driver)
    await driver.read(plan)  # creates the monitored items
    sim.set_value("CH4_A", 1.25)
    sim.set_raw("CH4_RAW", 150)  # hundredths of a percent
    await _until(driver, plan, "CH4_A", lambda s: s.value == pytest.approx(1.25))
    got = await _until(driver, plan, "CH4_RAW", lambda s: s.value == pytest.approx(1.5))
    assert got.quality is Quality.GOOD
    assert driver.notifications >= 2


async def test_deadband_drops_small_changes(
    site: LoadedSite, sim: OpcUaSimulator, driver: OpcUaDriver
) -> None:
    plan = _plan(site, driver)
    first = _by_tag(await driver.read(plan))["CH4_B"].value
    assert first is not None
    sim.set_value("CH4_B", first + 0.2)  # inside the 0.5 deadband
    sim.set_value("CH4_A", 0.9)  # a change that is reported, to know a publish went by
    await _until(driver, plan, "CH4_A", lambda s: s.value == pytest.approx(0.9))
    await asyncio.sleep(0.2)  # a few more publishing intervals (50 ms)
    assert _by_tag(await driver.read(plan))["CH4_B"].value == pytest.approx(first)
    sim.set_value("CH4_B", first + 1.0)
    await _until(driver, plan, "CH4_B", lambda s: s.value == pytest.approx(first + 1.0))


@pytest.mark.parametrize(
    ("status", "quality", "reason"),
    [
        ("BadSensorFailure", Quality.BAD, "sensor_failure"),
        ("BadCommunicationError", Quality.BAD, "comms_lost"),
        ("UncertainLastUsableValue", Quality.UNCERTAIN, "stale"),
        ("BadOutOfService", Quality.BAD, "out_of_service"),
    ],
)
async def test_status_codes_become_quality_with_reason(
    site: LoadedSite,
    sim: OpcUaSimulator,
    driver: OpcUaDriver,
    status: str,
    quality: Quality,
    reason: str,
) -> None:
    plan = _plan(site, driver)
    await driver.read(plan)
    sim.set_status("CH4_A", status)  # subscribed
    sim.set_status("O2_A", status)  # read each poll
    got = await _until(driver, plan, "CH4_A", lambda s: s.quality is quality)
    assert got.reason == reason
    read = _by_tag(await driver.read(plan))["O2_A"]
    assert (read.quality, read.reason) == (quality, reason)
    assert _by_tag(await driver.read(plan))["CO_A"].quality is Quality.GOOD


async def test_unknown_node_is_bad_config_and_its_bus_mates_still_read(
    tmp_path: Path, site: LoadedSite, sim: OpcUaSimulator
) -> None:
    bus = site.bus("plc")
    assert isinstance(bus, OpcUaBus)
    text = SITE.format(port=bus.endpoint.split(":")[2].split("/")[0], buffer=tmp_path / "b.db")
    text = text.replace("Panel/Gas/CO_A", "Panel/Gas/NO_SUCH").replace(
        "ns=2;s=Panel.CH4_A", "ns=2;s=Panel.MISSING"
    )
    (tmp_path / "site.yaml").write_text(text)
    other = load_site(tmp_path / "site.yaml")
    drv = make_driver(other.bus("plc"))
    assert isinstance(drv, OpcUaDriver)
    try:
        samples = _by_tag(await drv.read(_plan(other, drv)))
    finally:
        await drv.close()
    assert (samples["CO_A"].quality, samples["CO_A"].reason) == (Quality.BAD, "config")
    assert (samples["CH4_A"].quality, samples["CH4_A"].reason) == (Quality.BAD, "config")
    assert samples["O2_A"].quality is Quality.GOOD
    assert samples["CH4_B"].quality is Quality.GOOD


async def test_output_write_is_verified(
    site: LoadedSite, sim: OpcUaSimulator, driver: OpcUaDriver
) -> None:
    breaker = device_spec(site, site.device("breaker"))
    output = output_spec(site.actuator("power-a"))
    assert await driver.write(breaker, output, True) is True
    assert sim.output("power-a") is True
    assert await driver.write(breaker, output, False) is True
    assert sim.output("power-a") is False
    assert [v for _, a, v in sim.output_log if a == "power-a"][-2:] == [True, False]


async def test_unreachable_server_is_comms_lost_not_a_hang(tmp_path: Path) -> None:
    text = SITE.format(port=free_port(), buffer=tmp_path / "b.db")
    (tmp_path / "site.yaml").write_text(text)
    other = load_site(tmp_path / "site.yaml")
    drv = make_driver(other.bus("plc"))
    assert isinstance(drv, OpcUaDriver)
    began = time.monotonic()
    with pytest.raises(DeviceUnavailable):
        await drv.read(_plan(other, drv))
    with pytest.raises(DeviceUnavailable, match="next reconnect attempt"):
        await drv.read(_plan(other, drv))  # backing off: refused at once
    assert time.monotonic() - began < 3.0
    await drv.close()


async def test_server_restart_resumes_data_within_10_s_with_no_action(
    site: LoadedSite, sim: OpcUaSimulator
) -> None:
    """The gateway's poller keeps running across a server restart; nobody touches it."""
    samples: list[Sample] = []
    drv = make_driver(site.bus("plc"))
    assert isinstance(drv, OpcUaDriver)
    poller = BusPoller(site, "plc", drv, samples.append, Interlock(site))
    task = asyncio.create_task(poller.run(), name="poll:plc")
    try:
        await async_wait_until(
            lambda: any(s.tag == "CH4_A" and s.is_good for s in samples), 5.0, "first sample"
        )
        await sim.restart(down_s=1.0)
        restarted = time.monotonic()
        sim.set_value("CH4_A", 0.77)  # only the new server can tell this value
        sim.set_value("CO_A", 7.0)
        mark = len(samples)

        def resumed() -> bool:
            fresh = samples[mark:]
            return any(s.tag == "CH4_A" and s.is_good and s.value == 0.77 for s in fresh) and any(
                s.tag == "CO_A" and s.is_good and s.value == 7.0 for s in fresh
            )

        await async_wait_until(resumed, 10.0, "data after the server restart")
        took = time.monotonic() - restarted
        assert took < 10.0
        assert drv.reconnects >= 1
        # while it was down the values were BAD with a reason, never silently old
        gap = [s for s in samples[mark:] if not s.is_good]
        assert all(s.reason for s in gap)
    finally:
        poller.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
