"""Grafana dashboards for a site's control-room walls, built with the foundation SDK.

One site gives up to five dashboards (uids ``sw-<site>-<wall>``):

- ``wall``: each area's latest values coloured by its thresholds, the tags at
  or past alarm level now, KPIs (tags reporting, sensor faults, bad values,
  points stored, uplink backlog);
- ``gas``: per area and gas, trends with the alarm and cut thresholds drawn as
  lines (one panel per group of tags sharing thresholds);
- ``ground``: the other sensor kinds (roof separation, vibration, ...) with the
  model outputs of the same tags (kind ``forecast``, tag ``<source tag>.<output>``
  as the gateway's inference runner publishes them) drawn dashed (only when the
  site has such tags);
- ``health``: device and bus health reported by the gateway (poll latency,
  failed reads, circuit-breaker state, poll lag, skipped polls) and bad
  values by device;
- ``uplink``: the gateway's store-and-forward backlog, buffer size, telemetry
  dropped for space, and points arriving per gateway.

Every query is raw InfluxQL over the measurements the cloud writes
(``cloud.storage.to_lines``: measurement = sensor kind; tags site, gateway,
area, position, device, tag, unit; fields value, quality, reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard

from cloud.dashboards._influxql import InfluxQLQuery, ident, literal, tag_in
from cloud.dashboards._spec import GAS_KINDS, HEALTH_MEASUREMENT, TagSpec, ThresholdSpec, WallSpec

__all__ = [
    "DATASOURCE_UID",
    "FORECAST_MEASUREMENT",
    "build_dashboards",
    "dashboard_uid",
    "threshold_steps",
]

DATASOURCE_UID = "safewatch-influx"
FORECAST_MEASUREMENT = "forecast"
_DS = dashboard.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
_REFRESH = "10s"

_KIND_TITLES = {"ch4": "CH4", "co": "CO", "o2": "O2", "h2s": "H2S", "co2": "CO2"}
_UNITS = {"%": "percent", "ppm": "ppm", "mm": "lengthmm", "mm/s": "velocityms", "°C": "celsius"}


def dashboard_uid(site_id: str, wall: str) -> str:
    """``sw-<site>-<wall>``, cut to Grafana's 40-character uid limit."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", site_id)
    return f"sw-{clean[: 40 - len(wall) - 4]}-{wall}"


def threshold_steps(t: ThresholdSpec) -> list[tuple[float | None, str]]:
    """Grafana threshold steps (value, colour) for one tag's effective thresholds.

    A step applies from its value upwards. Rising danger (``high``): green, then
    orange from ``alarm``, red from ``cut``. Falling danger (``low``, O2): red
    below ``cut``, orange below ``alarm``, green from ``alarm`` up. Where cut
    equals alarm (a return roadway cuts at 1.0 %), the cut colour wins.
    """
    if t.direction == "high":
        steps: list[tuple[float | None, str]] = [(None, "green")]
        if t.cut is None or t.cut != t.alarm:
            steps.append((t.alarm, "orange"))
        if t.cut is not None:
            steps.append((t.cut, "red"))
        return steps
    if t.cut is None:
        return [(None, "orange"), (t.alarm, "green")]
    if t.cut == t.alarm:
        return [(None, "red"), (t.alarm, "green")]
    return [(None, "red"), (t.cut, "orange"), (t.alarm, "green")]


def _thresholds(t: ThresholdSpec) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=v, color=c) for v, c in threshold_steps(t)])
    )


def _grafana_unit(unit: str) -> str:
    return _UNITS.get(unit, unit)


@dataclass(frozen=True, slots=True)
class _Group:
    """Tags of one area and kind that share thresholds: one trend panel."""

    area: str
    kind: str
    unit: str
    thresholds: ThresholdSpec
    tags: tuple[TagSpec, ...]

    @property
    def title(self) -> str:
        positions = ", ".join(dict.fromkeys(t.position for t in self.tags))
        t = self.thresholds
        limits = f"alarm {'<' if t.direction == 'low' else '>='} {t.alarm:g}"
        if t.cut is not None:
            limits += f", cut {'<' if t.direction == 'low' else '>='} {t.cut:g}"
        kind = _KIND_TITLES.get(self.kind, self.kind)
        return f"{self.area} · {kind} at {positions} ({limits} {self.unit})"


def _groups(tags: Iterable[TagSpec]) -> list[_Group]:
    grouped: dict[tuple[str, str, str, ThresholdSpec], list[TagSpec]] = {}
    for tag in tags:
        grouped.setdefault((tag.area, tag.kind, tag.unit, tag.thresholds), []).append(tag)
    return [_Group(a, k, u, t, tuple(v)) for (a, k, u, t), v in grouped.items()]


def _from(kinds: Iterable[str]) -> str:
    return ",".join(ident(k) for k in kinds)


def _gw(spec: WallSpec) -> str:
    return f"{ident('gateway')} = {literal(spec.gateway)}"


def _site(spec: WallSpec) -> str:
    return f"{ident('site')} = {literal(spec.site_id)}"


class _Panels:
    """Hands out unique panel ids within one dashboard."""

    def __init__(self) -> None:
        self._next = 0

    def id(self) -> int:
        self._next += 1
        return self._next


def _dashboard(spec: WallSpec, wall: str, title: str) -> dash_b.Dashboard:
    return (
        dash_b.Dashboard(f"{spec.site_name} - {title}")
        .uid(dashboard_uid(spec.site_id, wall))
        .tags(["safewatch", spec.site_id, wall])
        .refresh(_REFRESH)
        .time("now-1h", "now")
        .timezone("browser")
        .readonly()
    )


def _trend(ids: _Panels, title: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(ids.id())
        .title(title)
        .datasource(_DS)
        .unit(_grafana_unit(unit))
        .height(8)
        .span(12)
        .line_width(2)
        .span_nulls(False)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )


def _wall(spec: WallSpec) -> dashboard.Dashboard:
    ids = _Panels()
    board = _dashboard(spec, "wall", "wall overview")
    kinds = spec.kinds()

    board = board.with_row(
        dash_b.Row("Areas: latest values, coloured by their thresholds").id(ids.id())
    )
    for area in spec.areas():
        area_tags = [t for t in spec.tags if t.area == area]
        panel = (
            stat.Panel()
            .id(ids.id())
            .title(area)
            .datasource(_DS)
            .height(6)
            .span(8)
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
            .no_value("no data")
        )
        for n, kind in enumerate(dict.fromkeys(t.kind for t in area_tags)):
            panel = panel.with_target(
                InfluxQLQuery(
                    _ref(n),
                    f"SELECT last({ident('value')}) FROM {ident(kind)} WHERE {_site(spec)} "
                    f"AND {ident('area')} = {literal(area)} AND $timeFilter "
                    f"GROUP BY time($__interval), {ident('tag')} fill(none)",
                    _DS,
                ).alias("$tag_tag")
            )
        for tag in area_tags:
            panel = panel.override_by_name(
                tag.name,
                [
                    dashboard.DynamicConfigValue(
                        id_val="thresholds", value=_thresholds(tag.thresholds).build()
                    ),
                    dashboard.DynamicConfigValue(id_val="unit", value=_grafana_unit(tag.unit)),
                ],
            )
        board = board.with_panel(panel)

    board = board.with_row(dash_b.Row("Alarms and KPIs").id(ids.id()))
    alarms = (
        table.Panel()
        .id(ids.id())
        .title("Active alarms: tags whose latest value is at or past alarm level")
        .description(
            "Computed from the latest stored values and each tag's effective thresholds "
            "(sensor profile or site override). The gateway decides alarms; see the alarm "
            "list of the SafeWatch API for acknowledgement state."
        )
        .datasource(_DS)
        .height(8)
        .span(12)
        .show_header(True)
        .no_value("no tag in alarm")
        .with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
    )
    for n, group in enumerate(_groups(spec.tags)):
        t = group.thresholds
        op = "<" if t.direction == "low" else ">="
        alarms = alarms.with_target(
            InfluxQLQuery(
                _ref(n),
                f"SELECT {ident('last')} AS {ident(group.kind)} FROM ("
                f"SELECT last({ident('value')}) FROM {ident(group.kind)} WHERE {_site(spec)} "
                f"AND {tag_in('tag', [x.name for x in group.tags])} AND $timeFilter "
                f"GROUP BY {ident('tag')}, {ident('area')}) "
                f"WHERE {ident('last')} {op} {t.alarm!r} GROUP BY {ident('tag')}, {ident('area')}",
                _DS,
            ).table()
        )
    board = board.with_panel(alarms)

    def kpi(title: str, query: str, *, alias: str = "", unit: str = "none") -> stat.Panel:
        target = InfluxQLQuery("A", query, _DS)
        if alias:
            target = target.alias(alias)
        return (
            stat.Panel()
            .id(ids.id())
            .title(title)
            .datasource(_DS)
            .height(4)
            .span(4)
            .unit(unit)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
            .with_target(target)
        )

    every = _from(kinds)
    board = board.with_panel(
        kpi(
            "Tags reporting (last 5 min)",
            f"SELECT count({ident('last')}) FROM (SELECT last({ident('quality')}) FROM {every} "
            f"WHERE {_site(spec)} AND time > now() - 5m GROUP BY {ident('tag')})",
        )
    )
    board = board.with_panel(
        kpi(
            "Sensor faults now (latest value not good)",
            f"SELECT count({ident('last')}) FROM (SELECT last({ident('quality')}) FROM {every} "
            f"WHERE {_site(spec)} AND $timeFilter GROUP BY {ident('tag')}) "
            f"WHERE {ident('last')} != 'good'",
        )
    )
    board = board.with_panel(
        kpi(
            "Bad or uncertain values (time range)",
            f"SELECT count({ident('quality')}) FROM {every} WHERE {_site(spec)} "
            f"AND {ident('quality')} != 'good' AND $timeFilter",
        )
    )
    board = board.with_panel(
        kpi(
            "Points stored by kind (time range)",
            f"SELECT count({ident('quality')}) FROM {every} WHERE {_site(spec)} AND $timeFilter",
        )
    )
    board = board.with_panel(
        kpi(
            "Uplink backlog (messages)",
            f"SELECT last({ident('value')}) FROM {ident(HEALTH_MEASUREMENT)} WHERE {_gw(spec)} "
            f"AND {ident('position')} = 'uplink_backlog' AND $timeFilter",
        )
    )
    return board.build()


def _ref(n: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[n] if n < len(letters) else f"Q{n}"


def _trend_walls(spec: WallSpec, tags: list[TagSpec], wall: str, title: str) -> dashboard.Dashboard:
    ids = _Panels()
    board = _dashboard(spec, wall, title)
    forecasts = wall == "ground"
    for area in dict.fromkeys(t.area for t in tags):
        board = board.with_row(dash_b.Row(area).id(ids.id()))
        for group in _groups(t for t in tags if t.area == area):
            panel = _trend(ids, group.title, group.unit).thresholds(_thresholds(group.thresholds))
            panel = panel.thresholds_style(
                common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
            ).with_target(
                InfluxQLQuery(
                    "A",
                    f"SELECT mean({ident('value')}) FROM {ident(group.kind)} WHERE {_site(spec)} "
                    f"AND {tag_in('tag', [t.name for t in group.tags])} AND $timeFilter "
                    f"GROUP BY time($__interval), {ident('tag')} fill(none)",
                    _DS,
                ).alias("$tag_tag")
            )
            if forecasts:
                panel = panel.with_target(
                    InfluxQLQuery(
                        "B",
                        f"SELECT mean({ident('value')}) FROM {ident(FORECAST_MEASUREMENT)} "
                        f"WHERE {_site(spec)} AND {_forecast_of([t.name for t in group.tags])} "
                        f"AND $timeFilter GROUP BY time($__interval), {ident('tag')} fill(none)",
                        _DS,
                    ).alias("forecast $tag_tag")
                ).override_by_regexp(
                    "^forecast ",
                    [
                        dashboard.DynamicConfigValue(
                            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                        )
                    ],
                )
            board = board.with_panel(panel)
    return board.build()


def _forecast_of(tags: list[str]) -> str:
    """Model outputs of these tags: the gateway publishes ``<source tag>.<output>``."""
    alternatives = "|".join(re.escape(t).replace("/", r"\/") for t in tags)
    return f"{ident('tag')} =~ /^({alternatives})\\./"


def _health_query(spec: WallSpec, metric: str, *, select: str = "last") -> str:
    return (
        f"SELECT {select}({ident('value')}) FROM {ident(HEALTH_MEASUREMENT)} WHERE {_gw(spec)} "
        f"AND {ident('position')} = {literal(metric)} AND $timeFilter "
        f"GROUP BY time($__interval), {ident('device')} fill(none)"
    )


def _health(spec: WallSpec) -> dashboard.Dashboard:
    ids = _Panels()
    board = _dashboard(spec, "health", "devices and buses")
    every = _from(spec.kinds())
    board = board.with_row(dash_b.Row("Devices").id(ids.id()))
    board = board.with_panel(
        _trend(ids, "Poll latency by device (ms)", "ms").with_target(
            InfluxQLQuery("A", _health_query(spec, "poll_latency_ms", select="mean"), _DS).alias(
                "$tag_device"
            )
        )
    )
    board = board.with_panel(
        _trend(ids, "Bad or uncertain values by device (per interval)", "none").with_target(
            InfluxQLQuery(
                "A",
                f"SELECT count({ident('quality')}) FROM {every} WHERE {_site(spec)} "
                f"AND {ident('quality')} != 'good' AND $timeFilter "
                f"GROUP BY time($__interval), {ident('device')} fill(none)",
                _DS,
            ).alias("$tag_device")
        )
    )
    board = board.with_panel(
        _trend(ids, "Failed reads by device (cumulative since gateway start)", "none").with_target(
            InfluxQLQuery("A", _health_query(spec, "read_errors"), _DS).alias("$tag_device")
        )
    )
    breaker = (
        statetimeline.Panel()
        .id(ids.id())
        .title("Circuit breaker by device (open: polled every few seconds only)")
        .datasource(_DS)
        .height(8)
        .span(12)
        .merge_values(True)
        .row_height(0.8)
        .mappings(
            [
                dashboard.ValueMap(
                    options={
                        "0": dashboard.ValueMappingResult(text="closed", color="green"),
                        "1": dashboard.ValueMappingResult(text="open", color="red"),
                    }
                )
            ]
        )
        .with_target(
            InfluxQLQuery("A", _health_query(spec, "breaker_open"), _DS).alias("$tag_device")
        )
    )
    board = board.with_panel(breaker)
    board = board.with_panel(
        table.Panel()
        .id(ids.id())
        .title("Bad or uncertain values by device (time range)")
        .datasource(_DS)
        .show_header(True)
        .no_value("all values good")
        .height(8)
        .span(12)
        .with_target(
            InfluxQLQuery(
                "A",
                f"SELECT count({ident('quality')}) AS {ident('bad values')}, "
                f"last({ident('reason')}) AS {ident('last reason')} FROM {every} "
                f"WHERE {_site(spec)} AND {ident('quality')} != 'good' AND $timeFilter "
                f"GROUP BY {ident('device')}",
                _DS,
            ).table()
        )
    )
    board = board.with_row(dash_b.Row("Buses").id(ids.id()))
    board = board.with_panel(
        _trend(ids, "Reads per bus (cumulative)", "none").with_target(
            InfluxQLQuery("A", _health_query(spec, "bus_reads"), _DS).alias("$tag_device")
        )
    )
    board = board.with_panel(
        _trend(ids, "Failed reads per bus (cumulative)", "none").with_target(
            InfluxQLQuery("A", _health_query(spec, "bus_read_errors"), _DS).alias("$tag_device")
        )
    )
    board = board.with_panel(
        _trend(ids, "Poll lag per bus (how late the last due poll started)", "ms").with_target(
            InfluxQLQuery("A", _health_query(spec, "bus_lag_ms", select="max"), _DS).alias(
                "$tag_device"
            )
        )
    )
    board = board.with_panel(
        _trend(ids, "Skipped polls per bus (cumulative)", "none").with_target(
            InfluxQLQuery("A", _health_query(spec, "bus_skipped_polls"), _DS).alias("$tag_device")
        )
    )
    return board.build()


def _uplink(spec: WallSpec) -> dashboard.Dashboard:
    ids = _Panels()
    board = _dashboard(spec, "uplink", "uplink")
    every = _from(spec.kinds())

    def gateway_metric(metric: str) -> str:
        return (
            f"SELECT last({ident('value')}) FROM {ident(HEALTH_MEASUREMENT)} "
            f"WHERE {_site(spec)} AND {ident('position')} = {literal(metric)} AND $timeFilter "
            f"GROUP BY time($__interval), {ident('gateway')} fill(none)"
        )

    board = board.with_panel(
        _trend(
            ids, "Uplink backlog per gateway (messages waiting in its buffer)", "none"
        ).with_target(
            InfluxQLQuery("A", gateway_metric("uplink_backlog"), _DS).alias("$tag_gateway")
        )
    )
    board = board.with_panel(
        _trend(ids, "Gateway buffer size", "bytes").with_target(
            InfluxQLQuery("A", gateway_metric("buffer_bytes"), _DS).alias("$tag_gateway")
        )
    )
    board = board.with_panel(
        _trend(ids, "Telemetry messages dropped for space (cumulative)", "none").with_target(
            InfluxQLQuery("A", gateway_metric("buffer_dropped"), _DS).alias("$tag_gateway")
        )
    )
    board = board.with_panel(
        _trend(ids, "Points arriving per gateway", "none").with_target(
            InfluxQLQuery(
                "A",
                f"SELECT count({ident('quality')}) FROM {every} WHERE {_site(spec)} "
                f"AND $timeFilter GROUP BY time($__interval), {ident('gateway')} fill(0)",
                _DS,
            ).alias("$tag_gateway")
        )
    )
    return board.build()


def build_dashboards(spec: WallSpec) -> dict[str, dict[str, Any]]:
    """Every wall of one site as Grafana dashboard JSON, keyed by uid."""
    if not spec.tags:
        raise ValueError(f"site {spec.site_id!r} has no tags to put on a wall")
    gas = [t for t in spec.tags if t.kind in GAS_KINDS]
    ground = [t for t in spec.tags if t.kind not in GAS_KINDS]
    boards = [_wall(spec)]
    if gas:
        boards.append(_trend_walls(spec, gas, "gas", "gas trends"))
    if ground:
        boards.append(_trend_walls(spec, ground, "ground", "roof, vibration and forecasts"))
    boards += [_health(spec), _uplink(spec)]
    out: dict[str, dict[str, Any]] = {}
    for board in boards:
        data: dict[str, Any] = json.loads(json.dumps(board, cls=JSONEncoder))
        out[str(data["uid"])] = data
    return out
