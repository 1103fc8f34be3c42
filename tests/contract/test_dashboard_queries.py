"""Every query of every wall panel, run against the real InfluxDB 1.6 with site data in it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

import wire
from cloud.dashboards import build_dashboards, expand_macros
from cloud.storage import to_lines
from safewatch.cmd_dashboards import wall_spec
from tests.walls import forecast_lines, health_lines, scenario_lines, walls_site

pytestmark = pytest.mark.contract


def _targets(boards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    out = []
    for uid, board in boards.items():
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            for target in panel["targets"]:
                out.append((uid, panel["title"], target["refId"], target["query"]))
    return out


def _has_values(result: dict[str, Any]) -> bool:
    return any(
        any(v is not None for v in row[1:])
        for series in result.get("series", [])
        for row in series["values"]
    )


def test_every_panel_query_returns_data(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    site = walls_site()
    lines = [
        *scenario_lines(site, faulty_device="env-1"),
        *forecast_lines(site),
        *health_lines(site),
    ]
    r = httpx.post(f"{url}/write", params={"db": db}, content="\n".join(lines))
    assert r.status_code == 204, r.text

    boards = build_dashboards(wall_spec(site))
    assert set(boards) == {
        "sw-walls-mine-wall",
        "sw-walls-mine-gas",
        "sw-walls-mine-ground",
        "sw-walls-mine-health",
        "sw-walls-mine-uplink",
    }
    targets = _targets(boards)
    assert len(targets) >= 25
    empty, failed = [], []
    for uid, title, ref, query in targets:
        q = expand_macros(query, time_range="now() - 1h", interval="10s")
        answer = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ms"})
        result = answer.json()["results"][0]
        if answer.status_code != 200 or "error" in result:
            failed.append(f"{uid} / {title} / {ref}: {result.get('error', answer.text)}\n  {q}")
        elif not _has_values(result):
            empty.append(f"{uid} / {title} / {ref}\n  {q}")
    assert not failed, "queries InfluxDB refused:\n" + "\n".join(failed)
    assert not empty, "queries that returned no data:\n" + "\n".join(empty)


def _alarm_table(url: str, db: str, wall: dict[str, Any]) -> set[str]:
    alarms = next(p for p in wall["panels"] if p["title"].startswith("Active alarms"))
    listed: set[str] = set()
    for target in alarms["targets"]:
        q = expand_macros(target["query"])
        answer = httpx.get(f"{url}/query", params={"db": db, "q": q}).json()["results"][0]
        assert "error" not in answer, answer
        listed |= {s["tags"]["tag"] for s in answer.get("series", [])}
    return listed


def test_active_alarm_table_lists_exactly_the_tags_at_or_past_alarm(
    influx_db: tuple[str, str],
) -> None:
    """The wall's alarm table applies each tag's own thresholds and direction."""
    url, db = influx_db
    site = walls_site()
    now = time.time_ns()
    r = httpx.post(
        f"{url}/write",
        params={"db": db},
        content="\n".join(scenario_lines(site, end_ns=now - 2_000_000_000)),
    )
    assert r.status_code == 204, r.text
    wall = build_dashboards(wall_spec(site))["sw-walls-mine-wall"]
    # scenario end: every tag is past its alarm level (CH4_T3 at 0.85 >= its 0.8 override)
    assert _alarm_table(url, db, wall) == {t.name for _, t in site.tags()}

    # Latest values on the boundaries: >= alarm counts for rising gases, only
    # below the alarm value for O2.
    latest = {
        "CH4_T1": 0.99,  # below 1.0
        "CH4_T2": 1.0,  # at 1.0: alarm
        "CH4_T3": 0.8,  # at the site override 0.8: alarm
        "CO_1": 23.9,
        "O2_1": 20.0,  # at 20.0: not below, no alarm
        "ROOF_1": 10.0,  # at 10 mm: alarm
        "VIB_FAN_1": 4.49,
    }
    points = [
        wire.Point(
            tag=tag.name,
            device=device.id,
            kind=site.profile_of(tag).kind,
            unit=site.unit_of(tag),
            area=tag.location.area,
            position=tag.location.position,
            value=latest[tag.name],
            quality="good",
            ts_ns=now,
        )
        for device, tag in site.tags()
    ]
    batch = wire.TelemetryBatch("gw-walls", "walls-mine", 99, now, points)
    r = httpx.post(f"{url}/write", params={"db": db}, content="\n".join(to_lines(batch)))
    assert r.status_code == 204, r.text
    assert _alarm_table(url, db, wall) == {"CH4_T2", "CH4_T3", "ROOF_1"}
