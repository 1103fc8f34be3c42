"""Every shipped profile and example site validates, and the examples cover every bus type."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import PACKAGED_PROFILES, load_profiles, load_site

SITES = sorted((Path(__file__).resolve().parents[2] / "firmware_configs" / "sites").glob("*.yaml"))


def test_profiles_load_and_cite_their_source() -> None:
    profiles = load_profiles(PACKAGED_PROFILES)
    for kind in ("ch4", "ch4_ir", "ch4_high", "co", "o2", "h2s", "co2", "dust", "lel"):
        assert kind in profiles, kind
    for extra in ("roof_separation", "convergence", "vibration", "vibration_accel"):
        assert extra in profiles, extra
    for extra in ("air_velocity", "temperature", "fan_state", "toxic_h2s"):
        assert extra in profiles, extra
    for profile in profiles.values():
        assert profile.range.min <= profile.nominal <= profile.range.max, profile.id
        for position, thresholds in profile.thresholds.items():
            assert thresholds.source.strip(), f"{profile.id}.{position} cites no source"


@pytest.mark.parametrize("path", SITES, ids=[p.stem for p in SITES])
def test_example_site_validates(path: Path) -> None:
    site = load_site(path)
    assert site.tags(), path


def test_examples_use_every_bus_type() -> None:
    used = {bus.type for path in SITES for bus in load_site(path).config.buses}
    assert {"modbus_tcp", "modbus_rtu", "opcua", "serial"} <= used
