"""Serial line detectors against pty-backed simulators built from a site file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_drivers import Quality, Sample
from device_drivers.serial import SerialLineDriver
from edge.actuation import Interlock
from edge.config import LoadedSite, load_site
from edge.drivers import device_spec, make_driver
from edge.polling import BusPoller
from simulators import SerialLineSimulator
from tests.support import async_wait_until

pytestmark = pytest.mark.contract

SITE = """
site: {{id: serial-test}}
gateway: {{id: gw-serial}}
buffer: {{path: {tmp}/buffer.db}}
buses:
  - {{id: det-1, type: serial, port: {tmp}/tty-det1, format: {fmt}, max_age_ms: 600,
      timeout_ms: 200}}
devices:
  - id: gas-det-1
    bus: det-1
    poll_ms: 100
    stale_after_ms: 1000
    tags:
      - {{name: CH4_D, profile: ch4, key: "{k1}", location: {{area: a, position: face}}}}
      - {{name: CO_D, profile: co, key: "{k2}", location: {{area: a, position: return}}}}
"""


def _site(tmp: Path, fmt: str) -> LoadedSite:
    keys = ("0", "1") if fmt == "csv" else ("CH4", "CO")
    path = tmp / "site.yaml"
    path.write_text(SITE.format(tmp=tmp, fmt=fmt, k1=keys[0], k2=keys[1]))
    return load_site(path)


class Poll:
    """A real BusPoller on the site's serial bus, collecting samples."""

    def __init__(self, site: LoadedSite) -> None:
        drv = make_driver(site.bus("det-1"))
        assert isinstance(drv, SerialLineDriver)
        self.driver = drv
        self.samples: list[Sample] = []
        self.poller = BusPoller(site, "det-1", drv, self.samples.append, Interlock(site))

    def latest(self, tag: str) -> Sample | None:
        return next((s for s in reversed(self.samples) if s.tag == tag), None)

    def good(self, tag: str, value: float) -> bool:
        s = self.latest(tag)
        return s is not None and s.is_good and s.value == pytest.approx(value)


@pytest.fixture
async def running(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[SerialLineSimulator, Poll]]:
    fmt = getattr(request, "param", "kv_xor")
    site = _site(tmp_path, fmt)
    sim = SerialLineSimulator(site, interval_s=0.05)
    await sim.start()
    poll = Poll(site)
    task = asyncio.create_task(poll.poller.run(), name="poll:det-1")
    try:
        yield sim, poll
    finally:
        poll.poller.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


@pytest.mark.parametrize("running", ["kv", "kv_xor", "csv"], indirect=True)
async def test_values_arrive_in_every_format(
    running: tuple[SerialLineSimulator, Poll],
) -> None:
    sim, poll = running
    sim.set_value("CH4_D", 0.85)
    sim.set_value("CO_D", 12.0)
    await async_wait_until(lambda: poll.good("CH4_D", 0.85), 5.0, "CH4 0.85 from the line")
    await async_wait_until(lambda: poll.good("CO_D", 12.0), 5.0, "CO 12 from the line")


async def test_garbled_lines_are_counted_and_never_stop_the_loop(
    running: tuple[SerialLineSimulator, Poll],
) -> None:
    sim, poll = running
    await async_wait_until(lambda: poll.good("CH4_D", 0.3), 5.0, "first good value")
    sim.set_garbled("det-1", 2)  # every second line has a bad checksum
    sim.set_value("CH4_D", 1.1)
    await async_wait_until(lambda: poll.driver.checksum_errors >= 5, 5.0, "checksum errors")
    assert poll.good("CH4_D", 1.1) or poll.latest("CH4_D") is not None
    await async_wait_until(lambda: poll.good("CH4_D", 1.1), 5.0, "good lines still used")
    sim.set_garbled("det-1", 1)  # every line damaged: the values age out with reason crc
    await async_wait_until(
        lambda: (s := poll.latest("CH4_D")) is not None and s.reason == "crc", 5.0, "crc reason"
    )
    assert poll.latest("CH4_D").quality is Quality.BAD  # type: ignore[union-attr]
    sim.set_garbled("det-1", 0)
    await async_wait_until(lambda: poll.good("CH4_D", 1.1), 5.0, "recovery after noise")
    assert poll.driver.garbled_lines >= poll.driver.checksum_errors >= 5


async def test_a_silent_detector_reads_timeout(
    running: tuple[SerialLineSimulator, Poll],
) -> None:
    sim, poll = running
    await async_wait_until(lambda: poll.good("CO_D", 2.0), 5.0, "first good value")
    sim.set_silent("det-1", True)
    await async_wait_until(
        lambda: (s := poll.latest("CO_D")) is not None and s.reason == "timeout", 5.0, "timeout"
    )
    sim.set_silent("det-1", False)
    await async_wait_until(lambda: poll.good("CO_D", 2.0), 5.0, "talking again")


async def test_a_pulled_cable_comes_back_by_itself(
    running: tuple[SerialLineSimulator, Poll],
) -> None:
    sim, poll = running
    await async_wait_until(lambda: poll.good("CH4_D", 0.3), 5.0, "first good value")
    sim.pull_cable("det-1")
    await async_wait_until(
        lambda: (s := poll.latest("CH4_D")) is not None and s.reason == "comms_lost",
        5.0,
        "comms_lost after the cable is pulled",
    )
    await asyncio.sleep(0.3)  # the gateway keeps polling a port that is not there
    sim.set_value("CH4_D", 0.64)
    sim.plug_cable("det-1")
    await async_wait_until(lambda: poll.good("CH4_D", 0.64), 8.0, "data after re-plugging")
    assert poll.driver.reopens >= 1


def test_plan_needs_serial_addresses(tmp_path: Path) -> None:
    site = _site(tmp_path, "kv")
    drv = make_driver(site.bus("det-1"))
    plan = drv.plan(device_spec(site, site.device("gas-det-1")))
    assert plan.requests == 0
