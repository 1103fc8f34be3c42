"""What a control-room wall shows, as plain data (no edge imports).

The cloud must not import ``edge``; the CLI turns a validated site file into a
:class:`WallSpec` (``safewatch/cmd_dashboards.py``) and the builders here only
see these frozen records: tags with their measurement (sensor kind), place and
effective thresholds, exactly as the gateway applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "GAS_KINDS",
    "HEALTH_MEASUREMENT",
    "TagSpec",
    "ThresholdSpec",
    "WallSpec",
]

# Measurements drawn on the gas wall; every other sensor kind (roof separation,
# convergence, vibration, ...) goes on the ground-and-machines wall with forecasts.
GAS_KINDS: frozenset[str] = frozenset(
    {"ch4", "co", "o2", "h2s", "co2", "no2", "so2", "nh3", "h2", "c2h4", "lel", "dust"}
)

# Gateway health rides the wire as telemetry points of this kind (see
# ``edge/health_report.py``): device = the device, bus or "uplink" it describes,
# area = that scope (device, bus, uplink), position = the metric name,
# tag = "<gateway>.<device>.<metric>" (unique per site).
HEALTH_MEASUREMENT = "gateway_health"


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    """A tag's effective thresholds (``direction`` high: danger when rising)."""

    direction: Literal["high", "low"]
    alarm: float
    cut: float | None = None
    restore: float | None = None


@dataclass(frozen=True, slots=True)
class TagSpec:
    name: str
    device: str
    bus: str
    kind: str  # the InfluxDB measurement
    unit: str
    area: str
    position: str
    thresholds: ThresholdSpec


@dataclass(frozen=True, slots=True)
class WallSpec:
    """One site as the walls see it."""

    site_id: str
    site_name: str
    gateway: str
    tags: tuple[TagSpec, ...]
    devices: tuple[str, ...] = field(default=())
    buses: tuple[str, ...] = field(default=())

    def areas(self) -> list[str]:
        """Areas in the order the site file first names them."""
        return list(dict.fromkeys(t.area for t in self.tags))

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(t.kind for t in self.tags))
