"""`WholeSiteSimulator`: one site file served over Modbus TCP, RTU over TCP, OPC UA and serial;
the gateway's own drivers read every bus; scenario faults act on the real simulators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from device_drivers import DeviceDriver, DeviceUnavailable, DriverError, Quality
from edge.config import LoadedSite, SerialLineBus, load_site
from edge.drivers import device_spec, make_driver
from simulators import Scenario, ScenarioPlayer, WholeSiteSimulator
from tests.support import async_wait_until, quiet_port

pytestmark = pytest.mark.contract

LONGWALL = Path(__file__).resolve().parents[2] / "firmware_configs/sites/longwall-panel.yaml"


def _site(tmp: Path) -> LoadedSite:
    text = LONGWALL.read_text()
    for port in ("5031", "5032", "48431"):
        text = text.replace(port, str(quiet_port()))
    text = text.replace("var/sim/", f"{tmp}/").replace("var/gw-1302", f"{tmp}/gw")
    path = tmp / "longwall.yaml"
    path.write_text(text)
    return load_site(path)


async def _all_good(site: LoadedSite, drivers: dict[str, DeviceDriver]) -> dict[str, Quality]:
    """Read every device once with the gateway's drivers (kept open, as the pollers keep them)."""
    qualities: dict[str, Quality] = {}
    for bus in site.config.buses:
        drv = drivers.setdefault(bus.id, make_driver(bus))
        for device in site.config.devices:
            if device.bus != bus.id or not device.tags:
                continue
            plan = drv.plan(device_spec(site, device))
            try:
                for sample in await drv.read(plan):
                    qualities[sample.tag] = sample.quality
            except DriverError as exc:
                for tag in device.tags:
                    qualities[tag.name] = Quality.BAD
                assert exc.reason
    return qualities


async def test_every_protocol_of_the_site_is_served_and_faults_come_and_go(
    tmp_path: Path,
) -> None:
    site = _site(tmp_path)
    drivers: dict[str, DeviceDriver] = {}
    async with WholeSiteSimulator(site, serial_interval_s=0.1) as sim:
        assert {*sim.tags()} == {t.name for _, t in site.tags()}

        async def every_tag_good() -> bool:
            got = await _all_good(site, drivers)
            return len(got) == len(sim.tags()) and all(q is Quality.GOOD for q in got.values())

        await async_wait_until(every_tag_good, 15.0, "every tag of every bus GOOD")

        scenario = Scenario.model_validate(
            {
                "name": "faults",
                "duration_s": 1.5,
                "faults": [
                    {"kind": "cable_pulled", "bus": "shearer", "at_s": 0.0, "until_s": 1.0},
                    {"kind": "opcua_restart", "bus": "panel-plc", "at_s": 0.1, "down_s": 0.5},
                ],
            }
        )
        player = ScenarioPlayer(sim, scenario, tick_s=0.02)
        playing = asyncio.create_task(player.run(), name="scenario")
        shearer_bus = site.bus("shearer")
        assert isinstance(shearer_bus, SerialLineBus)
        tty = Path(shearer_bus.port)

        def pulled() -> bool:
            return not tty.exists()

        await async_wait_until(pulled, 3.0, "serial cable pulled")
        shearer = make_driver(site.bus("shearer"))
        with pytest.raises(DeviceUnavailable):
            await shearer.read(shearer.plan(device_spec(site, site.device("shearer-ch4"))))
        await playing
        assert [k for _, k, on in player.faults_applied if on] == ["cable_pulled", "opcua_restart"]
        assert sim.opcua.restarts == 1
        await async_wait_until(every_tag_good, 15.0, "every tag GOOD after the faults")
        for drv in drivers.values():
            await drv.close()
