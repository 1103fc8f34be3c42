"""Every shipped profile and example site validates, and the examples cover every bus type."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.risk import load_risk_file
from edge.config import PACKAGED_PROFILES, load_profiles, load_site

SITES_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "sites"
# <site>.risk.yaml beside a site file is its risk model (cloud.risk), not a site
SITES = sorted(p for p in SITES_DIR.glob("*.yaml") if not p.name.endswith(".risk.yaml"))
RISK_FILES = sorted(SITES_DIR.glob("*.risk.yaml"))


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


@pytest.mark.parametrize("path", RISK_FILES, ids=[p.stem for p in RISK_FILES])
def test_example_risk_file_matches_its_site(path: Path) -> None:
    """Each shipped risk model loads, names its site and covers the site's sensor areas."""
    model = load_risk_file(path)
    site = load_site(path.with_name(path.name.removesuffix(".risk.yaml") + ".yaml"))
    assert model.site == site.config.site.id
    areas = {a.id for a in model.areas}
    sensed = {tag.location.area for _, tag in site.tags()}
    assert sensed <= areas, f"{path.name}: no polygon for {sorted(sensed - areas)}"
    assert all(len(a.polygon) >= 3 for a in model.areas), path.name
