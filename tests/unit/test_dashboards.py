"""Dashboards as code: schema, thresholds against the profiles, export, push request shape."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

import wire
from cloud.dashboards import (
    DashboardSchemaError,
    GrafanaTarget,
    PushError,
    build_dashboards,
    export,
    push,
    threshold_steps,
    validate_dashboard,
)
from edge.config import LoadedSite, load_site
from edge.gateway import Gateway
from edge.health_report import HEALTH_KIND, HealthSnapshot, health_points
from safewatch.cli import app
from safewatch.cmd_dashboards import wall_spec
from tests.walls import DEMO_SITE, PROFILES, SITE, walls_site


@pytest.fixture(scope="module")
def site() -> LoadedSite:
    return walls_site()


@pytest.fixture(scope="module")
def boards(site: LoadedSite) -> dict[str, dict[str, Any]]:
    return build_dashboards(wall_spec(site))


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _steps(thresholds: dict[str, Any]) -> list[tuple[float | None, str]]:
    return [(s["value"], s["color"]) for s in thresholds["steps"]]


def _expected_steps(site: LoadedSite, tag_name: str) -> list[tuple[float | None, str]]:
    """Independent statement of the colour rule, from the gateway's own thresholds."""
    tag = next(t for _, t in site.tags() if t.name == tag_name)
    th = site.thresholds_of(tag)
    if th.direction.value == "high":
        steps: list[tuple[float | None, str]] = [(None, "green")]
        if th.cut != th.alarm:
            steps.append((th.alarm, "orange"))
        if th.cut is not None:
            steps.append((th.cut, "red"))
        return steps
    assert th.cut is not None
    return [(None, "red"), (th.cut, "orange"), (th.alarm, "green")]


def test_every_dashboard_validates_against_the_schema(boards: dict[str, dict[str, Any]]) -> None:
    demo = build_dashboards(wall_spec(load_site(DEMO_SITE)))
    for board in [*boards.values(), *demo.values()]:
        validate_dashboard(board)
    assert "sw-demo-mine-ground" not in demo  # no roof or vibration tags at the demo site


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        (lambda b: _panels(b)[0].pop("datasource"), "'datasource' is a required property"),
        (
            lambda b: _panels(b)[0]["targets"][0].update(rawQuery=False),
            "True was expected",
        ),
        (
            lambda b: _panels(b)[0]["fieldConfig"]["defaults"].update(
                thresholds={"mode": "absolute", "steps": [{"value": 1.0, "color": "red"}]}
            ),
            "is not of type 'null'",
        ),
        (lambda b: _panels(b)[1].update(id=_panels(b)[0]["id"]), "used twice"),
        (lambda b: _panels(b)[0]["gridPos"].update(x=20, w=12), "24-column grid"),
    ],
)
def test_schema_rejects_broken_dashboards(
    boards: dict[str, dict[str, Any]], breakage: Any, complaint: str
) -> None:
    board = copy.deepcopy(boards["sw-walls-mine-gas"])
    breakage(board)
    with pytest.raises(DashboardSchemaError, match=re.escape(complaint)) as err:
        validate_dashboard(board)
    assert "sw-walls-mine-gas" in str(err.value)


def test_trend_thresholds_match_each_tags_effective_thresholds(
    site: LoadedSite, boards: dict[str, dict[str, Any]]
) -> None:
    """Every trend panel draws exactly the thresholds the gateway applies to its tags."""
    seen: set[str] = set()
    for uid in ("sw-walls-mine-gas", "sw-walls-mine-ground"):
        for panel in _panels(boards[uid]):
            tags = re.findall(r"\"tag\" = '([^']+)'", panel["targets"][0]["query"])
            assert tags, panel["title"]
            drawn = _steps(panel["fieldConfig"]["defaults"]["thresholds"])
            for tag in tags:
                assert drawn == _expected_steps(site, tag), (panel["title"], tag)
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
            seen |= set(tags)
    assert seen == {t.name for _, t in site.tags()}


def test_methane_lines_are_the_aq1029_values(boards: dict[str, dict[str, Any]]) -> None:
    """Face: alarm 1.0, cut 1.5; return: alarm and cut 1.0; site override at T3: 0.8 / 0.9."""
    by_tag = {}
    for panel in _panels(boards["sw-walls-mine-gas"]):
        for tag in re.findall(r"\"tag\" = '([^']+)'", panel["targets"][0]["query"]):
            by_tag[tag] = _steps(panel["fieldConfig"]["defaults"]["thresholds"])
    assert by_tag["CH4_T1"] == [(None, "green"), (1.0, "orange"), (1.5, "red")]
    assert by_tag["CH4_T2"] == [(None, "green"), (1.0, "red")]
    assert by_tag["CH4_T3"] == [(None, "green"), (0.8, "orange"), (0.9, "red")]
    assert by_tag["O2_1"] == [(None, "red"), (18.0, "orange"), (20.0, "green")]


def test_overview_colours_every_tag_by_its_thresholds(
    site: LoadedSite, boards: dict[str, dict[str, Any]]
) -> None:
    coloured = {}
    for panel in _panels(boards["sw-walls-mine-wall"]):
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "thresholds":
                    coloured[override["matcher"]["options"]] = _steps(prop["value"])
    assert coloured == {t.name: _expected_steps(site, t.name) for _, t in site.tags()}


def test_threshold_steps_for_alarm_only_profiles() -> None:
    from cloud.dashboards import ThresholdSpec

    assert threshold_steps(ThresholdSpec("high", 24.0)) == [(None, "green"), (24.0, "orange")]
    assert threshold_steps(ThresholdSpec("low", 20.0)) == [(None, "orange"), (20.0, "green")]


def test_ground_wall_overlays_the_model_outputs_of_its_tags(
    boards: dict[str, dict[str, Any]],
) -> None:
    panels = _panels(boards["sw-walls-mine-ground"])
    assert {p["title"].split(" · ")[0] for p in panels} == {"1201 roadway", "main fan"}
    for panel in panels:
        forecast = panel["targets"][1]
        assert 'FROM "forecast"' in forecast["query"]
        assert forecast["alias"].startswith("forecast ")
    roof = next(p for p in panels if "roof_separation" in p["title"])
    assert '"tag" =~ /^(ROOF_1)\\./' in roof["targets"][1]["query"]


def test_health_panels_query_the_metrics_the_gateway_reports(
    boards: dict[str, dict[str, Any]],
) -> None:
    queried = set()
    for uid in ("sw-walls-mine-health", "sw-walls-mine-uplink", "sw-walls-mine-wall"):
        for panel in _panels(boards[uid]):
            for target in panel["targets"]:
                if f'"{HEALTH_KIND}"' in target["query"]:
                    queried |= set(re.findall(r"\"position\" = '([^']+)'", target["query"]))
    gateway = Gateway(walls_site())
    for poller in gateway.pollers:
        for dev in poller.devices():
            dev.latency_s = 0.002  # as after one good read
    snap = gateway.health_snapshot()
    snap = HealthSnapshot(snap.devices, snap.buses, {"uplink_backlog": 1.0, "buffer_bytes": 1.0})
    snap.uplink["buffer_dropped"] = 0.0
    reported = {p.position for p in health_points("gw", snap, 1)}
    assert queried <= reported
    assert queried >= {"poll_latency_ms", "breaker_open", "uplink_backlog", "bus_read_errors"}
    # the reporter adds the uplink metrics from the buffer; see HealthReporter.report


def test_health_points_are_unique_per_site_and_name_their_scope() -> None:
    snap = HealthSnapshot(
        {"d1": {"breaker_open": 1.0}, "d2": {"breaker_open": 0.0}},
        {"b1": {"bus_reads": 4.0}},
        {"uplink_backlog": 7.0},
    )
    points = health_points("gw-9", snap, 42)
    assert [(p.tag, p.device, p.area, p.position, p.value) for p in points] == [
        ("gw-9.d1.breaker_open", "d1", "device", "breaker_open", 1.0),
        ("gw-9.d2.breaker_open", "d2", "device", "breaker_open", 0.0),
        ("gw-9.b1.bus_reads", "b1", "bus", "bus_reads", 4.0),
        ("gw-9.uplink.uplink_backlog", "uplink", "uplink", "uplink_backlog", 7.0),
    ]
    assert {p.kind for p in points} == {HEALTH_KIND}


def test_health_points_pass_the_wire_limits_even_with_long_ids() -> None:
    gateway, device = "g" * 64, "d" * 64
    snap = HealthSnapshot({device: {"poll_latency_ms": 2.5, "breaker_open": 0.0}}, {}, {})
    points = health_points(gateway, snap, 1_700_000_000_000_000_000)
    batch = wire.TelemetryBatch(gateway, "site-1", 1, 1_700_000_000_000_000_000, points)
    decoded = wire.decode(wire.encode(batch))  # validates every field against the schema
    assert isinstance(decoded, wire.TelemetryBatch)
    tags = [p.tag for p in decoded.points]
    assert len(set(tags)) == 2 and all(len(t) <= wire.ID_MAX_LEN for t in tags)
    assert [p.unit for p in decoded.points] == ["ms", ""]


def test_export_writes_provisioning_and_dashboards(
    tmp_path: Path, boards: dict[str, dict[str, Any]]
) -> None:
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "sw-old-site-wall.json").write_text("{}")
    target = GrafanaTarget(influx_url="http://influx:8086", influx_db="mine", influx_user="grafana")
    export(boards, tmp_path, target)
    yaml = YAML(typ="safe")
    ds = yaml.load((tmp_path / "provisioning/datasources/safewatch.yaml").read_text())
    source = ds["datasources"][0]
    assert (source["type"], source["uid"], source["url"]) == (
        "influxdb",
        "safewatch-influx",
        "http://influx:8086",
    )
    assert source["jsonData"]["dbName"] == "mine"
    assert source["secureJsonData"] == {"password": "${SAFEWATCH_INFLUX_PASSWORD}"}
    prov = yaml.load((tmp_path / "provisioning/dashboards/safewatch.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
    assert prov["providers"][0]["options"]["path"] == target.dashboards_path
    files = sorted(p.stem for p in (tmp_path / "dashboards").glob("*.json"))
    assert files == sorted(boards)  # the stale board of a removed site is gone
    for name in files:
        validate_dashboard(json.loads((tmp_path / "dashboards" / f"{name}.json").read_text()))


def test_cli_export_and_config_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "walls"
    result = runner.invoke(
        app,
        ["dashboards", "export", str(out), "--config", str(SITE), "--profiles", str(PROFILES)],
    )
    # the test profiles directory lacks ch4/co/o2: the site is refused, naming the tag
    assert result.exit_code == 1
    assert "unknown profile 'ch4'" in result.output
    result = runner.invoke(app, ["dashboards", "export", str(out), "--config", str(DEMO_SITE)])
    assert result.exit_code == 0, result.output
    assert (out / "dashboards" / "sw-demo-mine-wall.json").exists()
    assert (out / "provisioning" / "datasources" / "safewatch.yaml").exists()


# -- push: a small fake of the few Grafana endpoints used, to prove the request shape --


class FakeGrafana:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, Any]] = []
        self.folders: dict[str, Any] = {}
        self.datasources: dict[str, Any] = {}
        self.dashboards: dict[str, Any] = {}
        self.fail_dashboards = False


def _handler(fake: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body: Any = json.loads(self.rfile.read(length)) if length else None
            auth = self.headers.get("Authorization", "")
            fake.requests.append((self.command, self.path, auth, body))
            if auth != "Bearer glsa_test":
                return self._reply(401, {"message": "Unauthorized"})
            method, path = self.command, self.path
            if method == "GET" and path.startswith("/api/folders/"):
                uid = path.rsplit("/", 1)[1]
                if uid in fake.folders:
                    return self._reply(200, fake.folders[uid])
                return self._reply(404, {"message": "folder not found"})
            if method == "POST" and path == "/api/folders":
                fake.folders[body["uid"]] = body
                return self._reply(200, {"uid": body["uid"], "title": body["title"]})
            if method == "GET" and path.startswith("/api/datasources/uid/"):
                uid = path.rsplit("/", 1)[1]
                if uid in fake.datasources:
                    return self._reply(200, fake.datasources[uid])
                return self._reply(404, {"message": "Data source not found"})
            if method == "POST" and path == "/api/datasources":
                fake.datasources[body["uid"]] = body
                return self._reply(200, {"message": "Datasource added", "id": 1})
            if method == "PUT" and path.startswith("/api/datasources/uid/"):
                fake.datasources[path.rsplit("/", 1)[1]] = body
                return self._reply(200, {"message": "Datasource updated"})
            if method == "POST" and path == "/api/dashboards/db":
                if fake.fail_dashboards:
                    return self._reply(500, {"message": "database is locked"})
                fake.dashboards[body["dashboard"]["uid"]] = body
                return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"]})
            return self._reply(404, {"message": f"no route {method} {path}"})

        do_GET = do_POST = do_PUT = _handle

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, name="fake-grafana", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_push_creates_folder_datasource_and_dashboards(
    grafana: tuple[str, FakeGrafana], boards: dict[str, dict[str, Any]]
) -> None:
    url, fake = grafana
    target = GrafanaTarget(influx_url="http://influx:8086", influx_db="mine")
    result = push(boards, url=url, token="glsa_test", target=target)
    assert result.folder_created and result.datasource == "created"
    assert sorted(result.dashboards) == sorted(boards)
    assert [(m, p) for m, p, _, _ in fake.requests[:4]] == [
        ("GET", "/api/folders/safewatch"),
        ("POST", "/api/folders"),
        ("GET", "/api/datasources/uid/safewatch-influx"),
        ("POST", "/api/datasources"),
    ]
    assert all(auth == "Bearer glsa_test" for _, _, auth, _ in fake.requests)
    source = fake.datasources["safewatch-influx"]
    assert (source["type"], source["url"], source["jsonData"]["dbName"]) == (
        "influxdb",
        "http://influx:8086",
        "mine",
    )
    saved = fake.dashboards["sw-walls-mine-gas"]
    assert saved["folderUid"] == "safewatch" and saved["overwrite"] is True
    assert saved["dashboard"]["id"] is None
    assert saved["dashboard"]["panels"] == boards["sw-walls-mine-gas"]["panels"]

    # Second push: folder kept, data source updated in place, dashboards overwritten.
    fake.requests.clear()
    again = push(boards, url=url, token="glsa_test", target=target)
    assert not again.folder_created and again.datasource == "updated"
    assert ("PUT", "/api/datasources/uid/safewatch-influx") in [
        (m, p) for m, p, _, _ in fake.requests
    ]


def test_push_failure_names_the_step(
    grafana: tuple[str, FakeGrafana], boards: dict[str, dict[str, Any]]
) -> None:
    url, fake = grafana
    fake.fail_dashboards = True
    with pytest.raises(PushError, match="dashboard sw-walls-mine-gas"):
        push(boards, url=url, token="glsa_test", target=GrafanaTarget())
    with pytest.raises(PushError, match="folder"):
        push(boards, url=url, token="wrong", target=GrafanaTarget())


def test_push_refuses_without_url_or_token(
    grafana: tuple[str, FakeGrafana], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, fake = grafana
    monkeypatch.delenv("SAFEWATCH_GRAFANA_URL", raising=False)
    monkeypatch.delenv("SAFEWATCH_GRAFANA_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["dashboards", "push", "--config", str(DEMO_SITE), "--url", url])
    assert result.exit_code == 2
    assert "SAFEWATCH_GRAFANA_TOKEN" in result.output and "nothing pushed" in result.output
    assert fake.requests == []
    monkeypatch.setenv("SAFEWATCH_GRAFANA_TOKEN", "glsa_test")
    result = runner.invoke(app, ["dashboards", "push", "--config", str(DEMO_SITE), "--url", url])
    assert result.exit_code == 0, result.output
    assert "pushed 4 dashboard(s)" in result.output
    assert set(fake.dashboards) == {
        "sw-demo-mine-wall",
        "sw-demo-mine-gas",
        "sw-demo-mine-health",
        "sw-demo-mine-uplink",
    }


async def test_health_reporter_stores_uplink_backlog_from_the_real_buffer(tmp_path: Path) -> None:
    from edge.health_report import HealthReporter
    from edge.uplink.buffer import StoreAndForwardBuffer

    buffer = StoreAndForwardBuffer(tmp_path / "buf.db", 10**7, site="s1", gateway="gw1")
    try:
        buffer.append_telemetry([])  # one message waiting for the broker
        snap = HealthSnapshot({"dev1": {"breaker_open": 1.0}}, {"bus1": {"bus_reads": 3.0}})
        stored: list[int] = []
        reporter = HealthReporter("gw1", buffer, lambda: snap, on_stored=lambda: stored.append(1))
        await reporter.report()
        assert reporter.reports == 1 and stored == [1]
        batches = [wire.decode(m.payload) for m in buffer.pending(100)]
        health = [b for b in batches if isinstance(b, wire.TelemetryBatch) and b.points]
        values = {p.position: p.value for p in health[-1].points}
        assert values["uplink_backlog"] == 1.0  # the empty batch stored before the report
        assert values["breaker_open"] == 1.0 and values["bus_reads"] == 3.0
        assert (values["buffer_bytes"] or 0) > 0 and values["buffer_dropped"] == 0.0
    finally:
        buffer.close()
