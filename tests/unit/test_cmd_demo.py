"""``safewatch demo``: child commands, display levels, rendering, supervision.

The supervision tests run the real ``demo`` function with fake child
processes (a TCP listener for the simulator, a tiny HTTP server for the cloud
API) so that start-up waits, SIGTERM handling and child failure are exercised
without the real simulator, gateway and cloud.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import typer
from rich.console import Console

from cloud.audit import AuditLog
from cloud.auth import Authenticator, AuthStore, LoginFailed, NotAuthenticated, Role
from cloud.storage import Store
from edge.config import MqttSettings, load_site
from edge.inference import TIMELAPSE_NOTE
from models import load_model
from safewatch import cmd_demo
from safewatch.cmd_demo import (
    DEMO_SCENARIO,
    DEMO_SITE,
    Child,
    DemoError,
    child_commands,
    prepare_models,
    render,
)
from simulators import load_scenario
from tests.support import free_port, wait_until


def test_packaged_demo_files_exist() -> None:
    assert DEMO_SITE.is_file()
    assert DEMO_SCENARIO.is_file()
    assert load_site(DEMO_SITE).config.site.id == "demo-mine"


def test_child_commands_use_the_agreed_cli() -> None:
    cmds = child_commands(
        site=Path("s.yaml"),
        scenario=Path("c.yaml"),
        speed=2.0,
        loop=False,
        api_port=8123,
        demo_dir=Path("var/demo"),
        python="py",
    )
    assert list(cmds) == ["sim", "cloud", "edge"]
    cli = ["py", "-m", "safewatch.cli"]
    assert cmds["sim"] == [
        *cli,
        *("sim", "run", "--config", "s.yaml", "--scenario", "c.yaml", "--speed", "2.0"),
        "--no-loop",
    ]
    assert cmds["cloud"] == [
        *cli,
        *("cloud", "run", "--port", "8123", "--db-url", "sqlite:///var/demo/cloud.db"),
        *("--influx-db", "safewatch_demo"),
    ]
    assert cmds["edge"] == [
        *cli,
        *("edge", "run", "--config", "s.yaml", "--buffer", "var/demo/buffer.db"),
    ]


def test_every_example_site_has_its_own_scenario_that_it_can_play() -> None:
    sites = [p for p in (DEMO_SITE.parent).glob("*.yaml") if not p.name.endswith(".risk.yaml")]
    assert len(sites) >= 4
    for site_file in sites:
        scenario = cmd_demo.default_scenario(site_file)
        assert scenario is not None, f"no scenario for {site_file.name}"
        played = load_scenario(scenario, load_site(site_file))  # refused if it cannot
        assert played.site in (None, load_site(site_file).config.site.id)
    assert cmd_demo.default_scenario(DEMO_SITE) == DEMO_SCENARIO
    assert cmd_demo.default_scenario(Path("/elsewhere/my-own-site.yaml")) is None


def test_the_cloud_ingests_from_the_sites_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = MqttSettings(host="10.1.2.3", port=1884)
    assert cmd_demo.broker_args(plain) == ["--mqtt-host", "10.1.2.3", "--mqtt-port", "1884"]
    monkeypatch.setenv("SITE_MQTT_USER", "gw-1302")
    secured = MqttSettings.model_validate(
        {
            "host": "broker.mine", "port": 8883, "username_env": "SITE_MQTT_USER",
            "password_env": "SITE_MQTT_PASSWORD",
            "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"},
        }
    )  # fmt: skip
    assert cmd_demo.broker_args(secured) == [
        *("--mqtt-host", "broker.mine", "--mqtt-port", "8883", "--mqtt-tls"),
        *("--mqtt-ca-file", "ca.pem", "--mqtt-cert-file", "c.pem", "--mqtt-key-file", "k.pem"),
        *("--mqtt-username", "gw-1302", "--mqtt-password-env", "SITE_MQTT_PASSWORD"),
    ]
    cmds = child_commands(
        site=Path("s.yaml"), scenario=None, speed=1.0, loop=True, api_port=8000, mqtt=plain
    )
    assert cmds["cloud"][-4:] == ["--mqtt-host", "10.1.2.3", "--mqtt-port", "1884"]
    assert "--scenario" not in cmds["sim"]  # no scenario: the simulator holds nominal values


def test_the_demo_refuses_a_scenario_of_another_site_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cmd_demo, "DEMO_DIR", tmp_path / "demo")
    tank_farm = DEMO_SITE.parent / "tank-farm.yaml"
    with pytest.raises(typer.Exit) as exc_info:
        cmd_demo.demo(speed=1.0, site=tank_farm, scenario=DEMO_SCENARIO, api_port=free_port())
    assert exc_info.value.exit_code == 2
    out = capsys.readouterr().out
    assert "methane-buildup.yaml:" in out and "tags.CH4_1201_T1: unknown tag" in out
    assert not (tmp_path / "demo").exists(), "nothing started"


def test_the_demo_says_when_the_sites_broker_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site, api_port, _ = _fake_demo(tmp_path, monkeypatch, "import time; time.sleep(60)")
    dead = free_port()
    text = site.read_text()
    mqtt_at = text.index("mqtt:")  # the site's broker moves to a port nobody listens on
    site.write_text(text[:mqtt_at] + re.sub(r"port: \d+", f"port: {dead}", text[mqtt_at:], count=1))
    with pytest.raises(typer.Exit) as exc_info:
        cmd_demo.demo(speed=1.0, site=site, scenario=DEMO_SCENARIO, api_port=api_port)
    assert exc_info.value.exit_code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"no MQTT broker answers on 127.0.0.1:{dead} (the site's mqtt section)" in out


def test_the_demo_site_brings_its_risk_map_to_the_cloud() -> None:
    risk = cmd_demo.risk_file_of(DEMO_SITE)
    assert risk is not None and risk.name == "demo-mine.risk.yaml"
    assert cmd_demo.risk_file_of(Path("/nonexistent/site.yaml")) is None
    cmds = child_commands(
        site=DEMO_SITE, scenario=DEMO_SCENARIO, speed=1.0, loop=True, api_port=8000,
        risk_file=risk,
    )  # fmt: skip
    assert cmds["cloud"][-2:] == ["--risk-file", str(risk)]


def _text(renderable: object) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_joins_api_values_with_site_tags() -> None:
    site = load_site(DEMO_SITE)
    latest = [
        # 1.2 % is below the cut limit, but the gateway holds the cut (above restore)
        {"tag": "CH4_1201_T1", "value": 1.2, "unit": "%", "quality": "good", "condition": "cut"},
        {"tag": "O2_1201", "value": 20.9, "quality": "uncertain", "condition": "normal"},
        {"tag": "CH4_1201_T2", "value": 0.3, "quality": "good"},  # an older cloud: no condition
    ]
    alarms = {
        "alarms": [
            {"tag": "CH4_1201_T1", "level": "cut", "value": 1.62, "message": "CH4 over cut"},
        ]
    }
    out = _text(render(site, latest, alarms, note="x: boom"))
    row_t1 = next(line for line in out.splitlines() if "CH4_1201_T1" in line and "face" in line)
    assert "1.2" in row_t1 and "cut" in row_t1
    row_t2 = next(line for line in out.splitlines() if "CH4_1201_T2" in line)
    assert "normal" not in row_t2 and " - " in row_t2  # never recomputed from the value
    row_o2 = next(line for line in out.splitlines() if "O2_1201" in line)
    assert "uncertain" in row_o2 and "normal" in row_o2
    row_co = next(line for line in out.splitlines() if "CO_1201" in line)
    assert "waiting" in row_co and "ppm" in row_co
    assert "CH4 over cut" in out
    assert "x: boom" in out


def test_child_commands_point_the_gateway_at_the_demo_models() -> None:
    cmds = child_commands(
        site=Path("s.yaml"),
        scenario=Path("c.yaml"),
        speed=1.0,
        loop=True,
        api_port=8000,
        demo_dir=Path("var/demo"),
        python="py",
        models_dir=Path("var/demo/models"),
    )
    assert cmds["edge"][-2:] == ["--models-dir", "var/demo/models"]


def test_prepare_models_installs_timelapse_copies_the_gateway_accepts(tmp_path: Path) -> None:
    site = load_site(DEMO_SITE)
    lines = prepare_models(site, tmp_path, 20.0)
    assert lines == [
        "methane-forecast: 20x time-lapse copy (one sample per 0.5 s instead of 10 s; "
        "a window of 60 samples fills in 30 s)"
    ]
    card = load_model(tmp_path / "models" / "methane-forecast.card.yaml").card  # verified
    assert card.features.period_s == 0.5 and card.limitations.startswith(TIMELAPSE_NOTE)
    # the demo polls the face sensors every 0.5 s: one sample per model period
    polls = {site.tag(t)[0].poll_ms for a in site.config.inference.assign for t in a.tags}
    assert polls == {500}


def test_prepare_models_names_a_missing_model(tmp_path: Path) -> None:
    site = load_site(DEMO_SITE)
    inference = site.config.inference.model_copy(update={"models_dir": str(tmp_path / "none")})
    site = site.model_copy(
        update={"config": site.config.model_copy(update={"inference": inference})}
    )
    with pytest.raises(DemoError, match="cannot prepare model 'methane-forecast'"):
        prepare_models(site, tmp_path / "demo", 20.0)


def test_render_shows_forecasts_and_the_gateways_pre_alarm() -> None:
    site = load_site(DEMO_SITE)
    latest = [
        {"tag": "CH4_1201_T1", "kind": "ch4", "value": 0.71, "quality": "good"},
        {"tag": "CH4_1201_T1.p_exceed_10m", "kind": "forecast", "value": 0.62, "quality": "good"},
        {"tag": "CH4_1201_T2.p_exceed_10m", "kind": "forecast", "value": 0.01, "quality": "good"},
    ]
    alarms = [  # newest first, as the API answers
        {"tag": "CH4_1201_T1", "kind": "forecast", "level": "alarm", "ts_ns": 2,
         "message": "CH4_1201_T1 in 1201 face: model methane-forecast: pre-alarm: ..."},
        {"tag": "CH4_1201_T1", "kind": "forecast", "level": "normal", "ts_ns": 1, "message": ""},
    ]  # fmt: skip
    out = _text(render(site, latest, alarms))
    assert "forecasts (models on the gateway; advisory, never a cut)" in out
    row_t1 = next(line for line in out.splitlines() if "CH4_1201_T1.p_exceed_10m" in line)
    assert "0.62" in row_t1 and "PRE-ALARM" in row_t1
    row_t2 = next(line for line in out.splitlines() if "CH4_1201_T2.p_exceed_10m" in line)
    assert "0.01" in row_t2 and "PRE-ALARM" not in row_t2
    assert "model methane-forecast: pre-alarm" in out  # in the recent alarms too
    assert "forecasts (" not in _text(render(site, latest[:1], []))  # none yet: no table


def test_render_survives_unexpected_payloads() -> None:
    site = load_site(DEMO_SITE)
    out = _text(render(site, None, "not json we know", note=""))
    assert out.count("waiting") == len(site.tags())


def test_child_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    child = Child("stubborn", [sys.executable, "-c", code], tmp_path / "stubborn.log")
    child.start()
    wait_until(ready.exists, 10, "child ready")
    child.stop(timeout=0.3)
    assert child.exit_code() == -signal.SIGKILL


FAKE_SIM = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("simulator ready", flush=True)
while True:
    conn, _ = s.accept(); conn.close()
"""

FAKE_CLOUD = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
log = open(sys.argv[2], "a")
first_latest = []  # the real API answers 404 until a site's first telemetry
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(self.path + " " + self.headers.get("Authorization", "-") + "\\n"); log.flush()
        if self.path == "/health":
            body = {"status": "ok"}
        elif self.path.startswith("/api/v1/latest") and not first_latest:
            first_latest.append(1)
            self.send_response(404); self.end_headers(); return
        elif self.path.startswith("/api/v1/latest"):
            body = [{"tag": "CH4_1201_T1", "value": 1.23, "unit": "%", "quality": "good"}]
        elif self.path.startswith("/api/v1/alarms"):
            body = []
        else:
            self.send_response(404); self.end_headers(); return
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


_LISTENERS: list[socket.socket] = []  # open until the test process ends


def _fake_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edge_code: str
) -> tuple[Path, int, Path]:
    """A site on a free port and fake children; returns (site, api_port, request log)."""
    sim_port, api_port = free_port(), free_port()
    site = tmp_path / "site.yaml"
    broker = socket.create_server(("127.0.0.1", 0))  # the site's broker: it only must answer
    _LISTENERS.append(broker)
    text = DEMO_SITE.read_text().replace("port: 5020", f"port: {sim_port}")
    site.write_text(text.replace("port: 1883", f"port: {broker.getsockname()[1]}"))
    (tmp_path / "sim.py").write_text(FAKE_SIM)
    (tmp_path / "cloud.py").write_text(FAKE_CLOUD)
    requests = tmp_path / "requests.log"
    py = sys.executable
    fakes = {
        "sim": [py, str(tmp_path / "sim.py"), str(sim_port)],
        "cloud": [py, str(tmp_path / "cloud.py"), str(api_port), str(requests)],
        "edge": [py, "-c", textwrap.dedent(edge_code)],
    }
    monkeypatch.setattr(cmd_demo, "child_commands", lambda **_: fakes)
    monkeypatch.setattr(cmd_demo, "DEMO_DIR", tmp_path / "demo")
    monkeypatch.setattr(cmd_demo, "REFRESH_S", 0.1)
    return site, api_port, requests


def test_demo_polls_the_api_and_stops_children_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site, api_port, requests = _fake_demo(tmp_path, monkeypatch, "import time; time.sleep(60)")
    children: list[Child] = []
    original_start = Child.start

    def recording_start(self: Child) -> None:
        children.append(self)
        original_start(self)

    monkeypatch.setattr(Child, "start", recording_start)

    def terminate_once_polled() -> None:
        # The first poll gets a 404 (no data yet); once a third poll arrives the
        # second one's answer has been rendered.
        wait_until(
            lambda: (
                requests.exists()
                and requests.read_text().count("/api/v1/latest?site=demo-mine") >= 3
            ),
            20,
            "the demo to poll /api/v1/latest three times",
        )
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_polled, daemon=True)
    killer.start()
    cmd_demo.demo(speed=1.0, site=site, scenario=DEMO_SCENARIO, api_port=api_port, loop=True)
    killer.join(timeout=5)

    assert [c.name for c in children] == ["sim", "cloud", "edge"]
    assert all(c.exit_code() is not None for c in children), "every child stopped"
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{api_port}/docs" in out
    assert "mosquitto_sub -h 127.0.0.1 -p " in out and " -v -t 'safewatch/v1/#'" in out
    assert "1.23" in out
    # httpx's status error text (a bare "404" matches the tmp dir .../pytest-404/)
    assert "404 Not Found" not in out, "a site without data yet is not an error"
    assert "/api/v1/alarms?site=demo-mine&limit=50" in requests.read_text()
    assert "model methane-forecast: 20x time-lapse copy (one sample per 0.5 s" in out
    assert (tmp_path / "demo" / "models" / "methane-forecast.card.yaml").is_file()
    api_calls = [line for line in requests.read_text().splitlines() if "/api/v1/" in line]
    assert api_calls and all(" Bearer swt." in line for line in api_calls), api_calls[:3]
    assert "API admin:       admin / " in out
    token_line = next(line for line in out.splitlines() if "API token:" in line)
    assert token_line.split()[2].startswith("swt.") and token_line.endswith("(viewer)")
    wall_line = next(line for line in out.splitlines() if "wall page:" in line)
    assert wall_line.split()[2] == f"http://127.0.0.1:{api_port}/wall#token={token_line.split()[2]}"


def test_demo_exits_nonzero_with_the_dead_childs_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site, api_port, _ = _fake_demo(
        tmp_path, monkeypatch, "print('edge: cannot reach broker', flush=True); raise SystemExit(4)"
    )
    with pytest.raises(typer.Exit) as exc_info:
        cmd_demo.demo(speed=1.0, site=site, scenario=DEMO_SCENARIO, api_port=api_port, loop=True)
    assert exc_info.value.exit_code == 1
    out = capsys.readouterr().out
    assert "edge exited with status 4" in out
    assert "edge: cannot reach broker" in out


def test_demo_credentials_are_fresh_each_run_and_work(tmp_path: Path) -> None:
    first = cmd_demo.demo_credentials(tmp_path)
    second = cmd_demo.demo_credentials(tmp_path)
    assert first.password != second.password and first.token != second.token
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        auth = Authenticator(AuthStore(store.engine), AuditLog(store.engine))
        with pytest.raises(NotAuthenticated):
            auth.authenticate(first.token)  # the earlier run's token is revoked
        assert auth.authenticate(second.token).role == Role.VIEWER
        with pytest.raises(LoginFailed):
            auth.login("admin", first.password, "127.0.0.1")
        token = auth.login("admin", second.password, "127.0.0.1")
        assert auth.authenticate(token.access_token).role == Role.ADMIN
    finally:
        store.close()
