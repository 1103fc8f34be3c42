"""Shared by the dashboard tests: the walls test site and data shaped like the cloud's."""

from __future__ import annotations

import time
from pathlib import Path

import wire
from cloud.storage import to_lines
from edge.config import PACKAGED_PROFILES, LoadedSite, load_profiles, load_site
from edge.gateway import Gateway
from edge.health_report import HealthSnapshot, health_points
from simulators import load_scenario

FIXTURES = Path(__file__).parent / "fixtures" / "walls"
SITE = FIXTURES / "site.yaml"
PROFILES = FIXTURES / "profiles"
SCENARIO = FIXTURES / "scenario.yaml"
DEMO_SITE = Path(__file__).parent.parent / "firmware_configs" / "sites" / "demo-mine.yaml"


def walls_site() -> LoadedSite:
    profiles = {**load_profiles(PACKAGED_PROFILES), **load_profiles(PROFILES)}
    return load_site(SITE, profiles)


def scenario_lines(
    site: LoadedSite, *, end_ns: int | None = None, step_s: float = 5.0, faulty_device: str = ""
) -> list[str]:
    """Line protocol for the scenario's ten minutes, ending at ``end_ns``.

    Values come from the scenario file as the simulator plays it; each sample
    becomes a wire point with the tag's kind, unit and location (as the
    gateway's batcher makes it) and then line protocol through the cloud's own
    ``to_lines``. ``faulty_device`` reports bad quality (timeout) for its last
    minute.
    """
    scenario = load_scenario(SCENARIO, site)
    end = time.time_ns() if end_ns is None else end_ns
    start = end - int(scenario.duration_s * 1e9)
    cfg = site.config
    lines: list[str] = []
    steps = int(scenario.duration_s / step_s)
    for seq, i in enumerate(range(steps + 1), start=1):
        t = i * step_s
        ts = start + int(t * 1e9)
        points = []
        for device, tag in site.tags():
            value = scenario.value_at(tag.name, t)
            bad = device.id == faulty_device and t > scenario.duration_s - 60
            points.append(
                wire.Point(
                    tag=tag.name,
                    device=device.id,
                    kind=site.profile_of(tag).kind,
                    unit=site.unit_of(tag),
                    area=tag.location.area,
                    position=tag.location.position,
                    value=None if bad else value,
                    quality="bad" if bad else "good",
                    ts_ns=ts,
                    reason="timeout" if bad else None,
                )
            )
        batch = wire.TelemetryBatch(cfg.gateway.id, cfg.site.id, seq, ts, points)
        lines += to_lines(batch)
    return lines


def forecast_lines(site: LoadedSite, *, end_ns: int | None = None) -> list[str]:
    """Model outputs as the inference work sends them: telemetry of kind ``forecast``.

    The inference runner names an output ``<source tag>.<output>`` (the walls
    match on that prefix); the unit is the output's own, not the sensor's.
    """
    end = time.time_ns() if end_ns is None else end_ns
    cfg = site.config
    points = []
    for device, tag in site.tags():
        kind = site.profile_of(tag).kind
        if kind not in ("roof_separation", "vibration"):
            continue
        for k in range(12):
            points.append(
                wire.Point(
                    tag=f"{tag.name}.hours_to_threshold",
                    device=device.id,
                    kind="forecast",
                    unit="h",
                    area=tag.location.area,
                    position=tag.location.position,
                    value=1.0 + k,
                    quality="good",
                    ts_ns=end - (11 - k) * 30_000_000_000,
                )
            )
    return to_lines(wire.TelemetryBatch(cfg.gateway.id, cfg.site.id, 10_000, end, points))


def health_lines(site: LoadedSite, *, end_ns: int | None = None) -> list[str]:
    """What the gateway's health reporter sends, from a real Gateway's snapshot."""
    end = time.time_ns() if end_ns is None else end_ns
    cfg = site.config
    gateway = Gateway(site)
    for poller in gateway.pollers:  # as after a few reads: one good, one timed out
        for dev in poller.devices():
            dev.latency_s = 0.004
            dev.errors["timeout"] += 1
    snap = gateway.health_snapshot()
    lines: list[str] = []
    for k in range(6):
        uplink = {"uplink_backlog": float(40 - k), "buffer_bytes": 8192.0, "buffer_dropped": 0.0}
        points = health_points(
            cfg.gateway.id,
            HealthSnapshot(snap.devices, snap.buses, uplink),
            end - (5 - k) * 10_000_000_000,
        )
        lines += to_lines(wire.TelemetryBatch(cfg.gateway.id, cfg.site.id, 20_000 + k, end, points))
    return lines
