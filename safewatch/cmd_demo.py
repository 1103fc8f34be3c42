"""``safewatch demo``: simulator, edge gateway and cloud on one machine, for any site file.

Starts three child processes with the ordinary CLI (``safewatch sim run``,
``safewatch cloud run``, ``safewatch edge run``), waits until every simulated
bus (Modbus TCP, RTU lines, OPC UA servers, serial detectors) and the API
answer, then shows the latest values and alarms from the cloud API until
Ctrl-C or SIGTERM. The cloud ingests from the broker the site's ``mqtt``
section names (host, port, TLS, account), as the gateway publishes there. The
simulator plays the site's own scenario (:func:`default_scenario`) unless
``--scenario`` names another. Children are stopped in reverse start order; if
one dies, the demo stops the others and exits non-zero with its last output.
State lives under ``var/demo/`` in the current directory.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any
from urllib.parse import urlparse

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cloud import migrations
from cloud.audit import AuditLog
from cloud.auth import Authenticator, AuthStore, Role
from cloud.storage import Store, StoreError
from edge.config import (
    PACKAGED_PROFILES,
    ConfigError,
    LoadedSite,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTcpBus,
    MqttSettings,
    OpcUaBus,
    SerialLineBus,
    load_site,
)

FIRMWARE_CONFIGS = PACKAGED_PROFILES.parent
DEMO_SITE = FIRMWARE_CONFIGS / "sites" / "demo-mine.yaml"
SCENARIOS_DIR = FIRMWARE_CONFIGS / "scenarios"
DEMO_SCENARIO = SCENARIOS_DIR / "methane-buildup.yaml"
# the scenario a site plays unless --scenario says otherwise: scenarios/<site file stem>.yaml;
# the demo mine's is the build-up its forecast model needs
SITE_SCENARIOS: Mapping[str, Path] = {"demo-mine": DEMO_SCENARIO}
DEMO_DIR = Path("var/demo")
INFLUX_DB = "safewatch_demo"
DEMO_ADMIN = "admin"
DEMO_TOKEN_NAME = "demo-live-table"
MODEL_TIMELAPSE = 20.0  # the demo's trend models see time this much faster (10 s -> 0.5 s)
ALARMS_FETCHED = 50  # enough to find each forecast's newest pre-alarm event
ALARMS_SHOWN = 5

STARTUP_TIMEOUT_S = 60.0  # asyncua builds a server's address space in 6-10 s on a loaded VM
STOP_TIMEOUT_S = 10.0
REFRESH_S = 1.0
HTTP_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 20

LEVEL_STYLES: Mapping[str, str] = {
    "normal": "green",
    "alarm": "bold yellow",
    "cut": "bold white on red",
    "fault": "bold magenta",
}
PRE_ALARM_LABELS: Mapping[str, tuple[str, str]] = {
    "alarm": ("PRE-ALARM", "bold yellow"),
    "normal": ("normal", "green"),
    "fault": ("no input", "bold magenta"),
}
QUALITY_STYLES: Mapping[str, str] = {"good": "green", "uncertain": "yellow", "bad": "red"}


class DemoError(Exception):
    """The demo could not start or a child process failed."""


@dataclass
class Child:
    """One ``safewatch`` subprocess; its stdout and stderr go to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own process group: Ctrl-C reaches only the demo, which stops the
        # children in order (gateway first, simulator last).
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,
        )

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def default_scenario(site_file: Path) -> Path | None:
    """The scenario the demo plays on ``site_file``: ``scenarios/<stem>.yaml`` of the packaged
    firmware configs (the demo mine: its methane build-up), or None (tags hold nominal)."""
    known = SITE_SCENARIOS.get(site_file.stem)
    if known is not None:
        return known
    own = SCENARIOS_DIR / f"{site_file.stem}.yaml"
    return own if own.is_file() else None


def broker_args(mqtt: MqttSettings) -> list[str]:
    """``cloud run`` options for the broker the site's gateway publishes to: host, port, TLS
    and, where the site names them, the same account (user from ``username_env``, password
    from ``password_file`` or ``password_env``)."""
    args = ["--mqtt-host", mqtt.host, "--mqtt-port", str(mqtt.port)]
    tls = mqtt.tls
    if tls is not None:
        args.append("--mqtt-tls")
        if tls.ca_file is not None:
            args += ["--mqtt-ca-file", tls.ca_file]
        if tls.cert_file is not None and tls.key_file is not None:
            args += ["--mqtt-cert-file", tls.cert_file, "--mqtt-key-file", tls.key_file]
    username = os.environ.get(mqtt.username_env) if mqtt.username_env else None
    if username:
        args += ["--mqtt-username", username]
    if mqtt.password_file is not None:
        args += ["--mqtt-password-file", mqtt.password_file]
    elif mqtt.password_env is not None:
        args += ["--mqtt-password-env", mqtt.password_env]
    return args


def child_commands(
    *,
    site: Path,
    scenario: Path | None,
    speed: float,
    loop: bool,
    api_port: int,
    demo_dir: Path = DEMO_DIR,
    python: str = sys.executable,
    risk_file: Path | None = None,
    models_dir: Path | None = None,
    mqtt: MqttSettings | None = None,
) -> dict[str, list[str]]:
    """The argv of each child, in start order: sim, cloud, edge (``models_dir``: the
    gateway reads its models there, see :func:`prepare_models`; ``mqtt``: the site's broker,
    which the cloud then ingests from; None: the cloud's default, 127.0.0.1:1883)."""
    cli = [python, "-m", "safewatch.cli"]
    risk = [] if risk_file is None else ["--risk-file", str(risk_file)]
    played = [] if scenario is None else ["--scenario", str(scenario)]
    return {
        "sim": [
            *cli,
            "sim",
            "run",
            "--config",
            str(site),
            *played,
            "--speed",
            repr(speed),
            "--loop" if loop else "--no-loop",
        ],
        "cloud": [
            *cli,
            "cloud",
            "run",
            "--port",
            str(api_port),
            "--db-url",
            f"sqlite:///{demo_dir / 'cloud.db'}",
            "--influx-db",
            INFLUX_DB,
            *([] if mqtt is None else broker_args(mqtt)),
            *risk,
        ],
        "edge": [
            *cli,
            "edge",
            "run",
            "--config",
            str(site),
            "--buffer",
            str(demo_dir / "buffer.db"),
            *(["--models-dir", str(models_dir)] if models_dir is not None else []),
        ],
    }


def risk_file_of(site: Path) -> Path | None:
    """``<site>.risk.yaml`` beside the site file (the wall's map and grades), if there is one."""
    risk = site.with_name(f"{site.stem}.risk.yaml")
    return risk if risk.is_file() else None


def prepare_models(site: LoadedSite, demo_dir: Path, timelapse: float) -> list[str]:
    """Copy the site's models into ``demo_dir/models`` for the gateway: trend models as
    time-lapse copies (``features.period_s`` divided by ``timelapse``, same ONNX file and
    sha256), so a 10-minute methane window fills in 30 s. Returns one line per model."""
    assign = site.config.inference.assign
    if not assign:
        return []
    # onnxruntime is imported only when the site runs models
    from edge.inference import install, install_timelapse
    from models import MODELS_DIR, CardError, read_card

    source = Path(site.config.inference.models_dir or MODELS_DIR)
    dest = demo_dir / "models"
    lines = []
    for name in dict.fromkeys(a.model for a in assign):
        try:
            card = read_card(source / f"{name}.card.yaml")
            period = card.features.period_s
            if period is None:  # waveform blocks: nothing to lapse
                install(source / f"{name}.card.yaml", dest)
                lines.append(f"{name}: as shipped")
                continue
            install_timelapse(name, dest, period / timelapse, source=source)
        except (CardError, ValueError, OSError) as exc:
            raise DemoError(f"cannot prepare model {name!r} for the demo: {exc}") from exc
        lines.append(
            f"{name}: {timelapse:g}x time-lapse copy (one sample per {period / timelapse:g} s "
            f"instead of {period:g} s; a window of {card.features.window} samples fills in "
            f"{card.features.window * period / timelapse:g} s)"
        )
    return lines


def _items(payload: Any) -> list[Mapping[str, Any]]:
    """The list of objects in an API answer: a bare list or the first list value."""
    if isinstance(payload, Mapping):
        payload = next((v for v in payload.values() if isinstance(v, list)), [])
    if not isinstance(payload, list):
        return []
    return [item for item in payload if isinstance(item, Mapping)]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _when(item: Mapping[str, Any]) -> str:
    ts_ns = item.get("ts_ns")
    if isinstance(ts_ns, int):
        return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%H:%M:%S")
    ts = item.get("ts") or item.get("time")
    return str(ts) if ts is not None else "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _forecast_table(latest: Any, alarms: Any) -> Table | None:
    """Model outputs (kind ``forecast``) and, from the newest pre-alarm event of their
    sensor, whether the gateway holds a pre-alarm; None when there are none yet."""
    rows = sorted(
        (item for item in _items(latest) if item.get("kind") == "forecast"),
        key=lambda item: str(item.get("tag")),
    )
    if not rows:
        return None
    newest: dict[str, str] = {}  # sensor tag -> level of its newest forecast event
    for event in sorted(_items(alarms), key=lambda a: _number(a.get("ts_ns")) or 0):
        if event.get("kind") == "forecast":
            newest[str(event.get("tag"))] = str(event.get("level", "-"))
    table = Table(title="forecasts (models on the gateway; advisory, never a cut)", expand=False)
    for column in ("forecast tag", "value", "pre-alarm", "at (UTC)"):
        table.add_column(column)
    for item in rows:
        tag = str(item.get("tag"))
        level = newest.get(tag.rsplit(".", 1)[0], "")
        label, style = PRE_ALARM_LABELS.get(level, (level or "-", ""))
        table.add_row(tag, _fmt(_number(item.get("value"))), Text(label, style=style), _when(item))
    return table


def render(site: LoadedSite, latest: Any, alarms: Any, note: str = "") -> Group:
    """Tables for the latest value of every site tag, the model forecasts and the recent
    alarms (pure)."""
    by_tag = {str(item.get("tag")): item for item in _items(latest)}
    values = Table(title=f"{site.config.site.id} - latest values", expand=False)
    for column in ("tag", "area / position", "value", "unit", "quality", "condition", "at (UTC)"):
        values.add_column(column)
    for _device, tag in site.tags():
        item = by_tag.get(tag.name)
        where = f"{tag.location.area} / {tag.location.position}"
        if item is None:
            values.add_row(tag.name, where, "-", site.unit_of(tag), "-", Text("waiting"), "-")
            continue
        value = _number(item.get("value"))
        quality = str(item.get("quality", "-"))
        # the gateway owns conditions (hysteresis, restore hold, latches): show its decision
        api_condition = item.get("condition")
        level = api_condition if isinstance(api_condition, str) else "-"
        values.add_row(
            tag.name,
            where,
            _fmt(value),
            str(item.get("unit") or site.unit_of(tag)),
            Text(quality, style=QUALITY_STYLES.get(quality, "")),
            Text(level, style=LEVEL_STYLES.get(level, "")),
            _when(item),
        )
    recent = Table(title="recent alarms", expand=False)
    for column in ("at (UTC)", "tag", "level", "value", "message"):
        recent.add_column(column)
    for item in _items(alarms)[:ALARMS_SHOWN]:
        level = str(item.get("level", "-"))
        recent.add_row(
            _when(item),
            str(item.get("tag", "-")),
            Text(level, style=LEVEL_STYLES.get(level, "")),
            _fmt(_number(item.get("value"))),
            str(item.get("message", "")),
        )
    forecasts = _forecast_table(latest, alarms)
    parts: list[Table | Text] = [values] if forecasts is None else [values, forecasts]
    parts.append(recent)
    if note:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _health_ok(client: httpx.Client, base: str) -> bool:
    try:
        return client.get(f"{base}/health").status_code == 200
    except httpx.HTTPError:
        return False


class StopFlag:
    """Set from a signal handler; polled by the main loop (no locks in handlers)."""

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def sleep(self, seconds: float, step: float = 0.1) -> None:
        """Sleep up to ``seconds``; return early once a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step, left))


class _Supervisor:
    """Owns the children: starts them, watches them, stops them in reverse order."""

    def __init__(self, stop: StopFlag) -> None:
        self.children: list[Child] = []
        self.stop = stop

    def start(self, child: Child) -> None:
        self.children.append(child)
        child.start()

    def check(self) -> None:
        """Raise :class:`DemoError` with the child's last output if one has exited."""
        for child in self.children:
            code = child.exit_code()
            if code is not None:
                raise DemoError(
                    f"{child.name} exited with status {code}; last output "
                    f"({child.log_path}):\n{child.tail()}"
                )

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not condition():
            self.check()
            if self.stop.requested:
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c.name} ({c.log_path}):\n{c.tail()}" for c in self.children)
                raise DemoError(f"{what} did not answer within {STARTUP_TIMEOUT_S:.0f}s\n{logs}")
            self.stop.sleep(0.2)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()


@dataclass(frozen=True)
class DemoCredentials:
    admin: str
    password: str
    token: str


def demo_credentials(demo_dir: Path) -> DemoCredentials:
    """A fresh password for the demo admin and a fresh viewer token for the live table.

    Written straight into the demo's cloud database before the cloud starts; the
    tokens of earlier runs are revoked. Raises :class:`DemoError` on DB failure.
    """
    demo_dir.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{demo_dir / 'cloud.db'}")
    try:
        migrations.upgrade(store.engine)
        audit = AuditLog(store.engine)
        auth_store = AuthStore(store.engine)
        auth = Authenticator(auth_store, audit)
        password = secrets.token_urlsafe(12)
        if auth_store.find_user(DEMO_ADMIN) is None:
            auth.add_user(DEMO_ADMIN, password, Role.ADMIN, actor="demo")
        else:
            auth.set_password(DEMO_ADMIN, password, actor="demo")
            auth.set_disabled(DEMO_ADMIN, False, actor="demo")
        for old in auth_store.tokens():
            if old.name == DEMO_TOKEN_NAME and old.revoked_at is None:
                auth.revoke_token(old.token_id, actor="demo")
        token, _ = auth.create_token(DEMO_TOKEN_NAME, Role.VIEWER, actor="demo")
    except StoreError as exc:
        raise DemoError(f"cannot prepare the demo's API credentials: {exc}") from exc
    finally:
        store.close()
    return DemoCredentials(DEMO_ADMIN, password, token)


def _print_urls(
    console: Console, site: LoadedSite, api_port: int, demo_dir: Path, creds: DemoCredentials
) -> None:
    api = f"http://127.0.0.1:{api_port}"
    site_id = site.config.site.id
    console.print(f"[bold green]SafeWatch demo running[/] - site {site_id}")
    console.print(f"  API docs:        {api}/docs  (Authorize: user and password below)")
    # soft_wrap: long secrets stay on one line, whole, for copying
    console.print(
        f"  API admin:       {creds.admin} / {creds.password}", markup=False, soft_wrap=True
    )
    console.print(f"  API token:       {creds.token}  (viewer)", markup=False, soft_wrap=True)
    console.print(
        f"  try:             curl -H 'Authorization: Bearer {creds.token}' "
        f"'{api}/api/v1/latest?site={site_id}'",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"  wall page:       {api}/wall#token={creds.token}", markup=False, soft_wrap=True
    )
    console.print(f"  latest values:   {api}/api/v1/latest?site={site_id}")
    console.print(f"  alarms:          {api}/api/v1/alarms?site={site_id}")
    kind = next((site.profile_of(tag).kind for _, tag in site.tags()), "ch4")
    console.print(
        f"  InfluxDB:        curl -G http://127.0.0.1:8086/query --data-urlencode db={INFLUX_DB} "
        f'--data-urlencode "q=SELECT * FROM {kind} ORDER BY time DESC LIMIT 5"',
        markup=False,
    )
    if site.config.inference.assign:
        console.print(
            f"  forecasts:       curl -G http://127.0.0.1:8086/query --data-urlencode "
            f'db={INFLUX_DB} --data-urlencode "q=SELECT * FROM forecast ORDER BY time DESC '
            'LIMIT 5"',
            markup=False,
        )
    mqtt = site.config.mqtt
    console.print(
        f"  MQTT:            mosquitto_sub -h {mqtt.host} -p {mqtt.port} -v -t 'safewatch/v1/#'",
        markup=False,
    )
    console.print(f"  logs:            {demo_dir}/{{sim,cloud,edge}}.log")
    console.print("Press Ctrl-C to stop.", style="dim")


def _fetch(
    client: httpx.Client, url: str, params: Mapping[str, str | int], missing_ok: bool = False
) -> tuple[Any, str]:
    """(decoded JSON or None, error text or ""); ``missing_ok``: a 404 means "no data yet"."""
    try:
        response = client.get(url, params=params)
        if missing_ok and response.status_code == 404:
            return None, ""
        response.raise_for_status()
        return response.json(), ""
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"{url}: {exc}"


SiteOpt = Annotated[Path, typer.Option("--site", help="Site YAML the simulator and gateway use.")]
ScenarioOpt = Annotated[
    Path | None,
    typer.Option(
        "--scenario",
        help="Scenario YAML the simulator plays (default: the site's own, "
        "firmware_configs/scenarios/<site file name>).",
    ),
]
SpeedOpt = Annotated[float, typer.Option("--speed", min=0.01, help="Scenario time multiplier.")]
PortOpt = Annotated[int, typer.Option("--api-port", min=1, max=65535, help="Cloud API port.")]
LoopOpt = Annotated[bool, typer.Option("--loop/--no-loop", help="Repeat the scenario.")]
TimelapseOpt = Annotated[
    float,
    typer.Option(
        "--model-timelapse",
        min=1.0,
        help="Trend models see time this much faster (a demo cannot wait 10 minutes).",
    ),
]


def demo(
    speed: SpeedOpt = 1.0,
    site: SiteOpt = DEMO_SITE,
    scenario: ScenarioOpt = None,
    api_port: PortOpt = 8000,
    loop: LoopOpt = True,
    model_timelapse: TimelapseOpt = MODEL_TIMELAPSE,
) -> None:
    """Start simulator, gateway and cloud locally for any site file (every bus simulated) and
    play the site's scenario; the gateway runs the site's models (time-lapse copies) and the
    table shows forecasts.

    Needs the site's MQTT broker (its `mqtt` section; 127.0.0.1:1883 by default) and
    InfluxDB on 127.0.0.1:8086 (`make demo` starts both on this machine).
    """
    # the simulator's scenario model, imported here: the CLI starts without it
    from simulators import load_scenario

    console = Console()
    if scenario is None:
        scenario = default_scenario(site)
    try:
        loaded = load_site(site)
        if scenario is not None:
            load_scenario(scenario, loaded)  # refused here, not by a dying child
    except ConfigError as exc:
        for issue in exc.issues:
            console.print(str(issue), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc

    stop = StopFlag()
    previous = {s: signal.signal(s, stop.request) for s in (signal.SIGINT, signal.SIGTERM)}
    supervisor = _Supervisor(stop)
    api = f"http://127.0.0.1:{api_port}"
    try:
        model_lines = prepare_models(loaded, DEMO_DIR, model_timelapse)
        commands = child_commands(
            site=site,
            scenario=scenario,
            speed=speed,
            loop=loop,
            api_port=api_port,
            demo_dir=DEMO_DIR,
            risk_file=risk_file_of(site),
            models_dir=DEMO_DIR / "models" if model_lines else None,
            mqtt=loaded.config.mqtt,
        )
        if scenario is None:
            console.print("no scenario for this site: tags hold their nominal values", style="dim")
        for line in model_lines:
            console.print(f"model {line}", style="dim", markup=False)
        creds = demo_credentials(DEMO_DIR)
        headers = {"Authorization": f"Bearer {creds.token}"}
        with httpx.Client(timeout=HTTP_TIMEOUT_S, headers=headers) as client:
            _run(console, loaded, supervisor, commands, client, api, api_port, creds)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        pass
    finally:
        if not console.is_terminal:
            console.line()  # a non-terminal Live leaves the cursor after the table
        console.print("stopping demo processes ...", style="dim")
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _other_endpoints(site: LoadedSite) -> list[tuple[str, int | None, str]]:
    """OPC UA servers (host, port) and serial/RTU ports (path, None) the simulator serves."""
    out: list[tuple[str, int | None, str]] = []
    for bus in site.config.buses:
        if isinstance(bus, OpcUaBus):
            url = urlparse(bus.endpoint)
            port = url.port or 4840
            out.append((url.hostname or "127.0.0.1", port, f"OPC UA server {bus.endpoint}"))
        elif isinstance(bus, SerialLineBus | ModbusRtuBus):
            out.append((bus.port, None, f"simulated serial port {bus.port} (bus {bus.id})"))
    return out


def _run(
    console: Console,
    site: LoadedSite,
    supervisor: _Supervisor,
    commands: Mapping[str, Sequence[str]],
    client: httpx.Client,
    api: str,
    api_port: int,
    creds: DemoCredentials,
) -> None:
    if _port_open("127.0.0.1", api_port):
        raise DemoError(f"port {api_port} is already in use; pass --api-port")
    mqtt = site.config.mqtt
    if not _port_open(mqtt.host, mqtt.port):
        raise DemoError(
            f"no MQTT broker answers on {mqtt.host}:{mqtt.port} (the site's mqtt section); "
            "start it (`make demo` starts Mosquitto on 127.0.0.1:1883)"
        )
    tcp_buses = [b for b in site.config.buses if isinstance(b, ModbusTcpBus | ModbusRtuOverTcpBus)]
    for bus in tcp_buses:
        if _port_open(bus.host, bus.port):
            raise DemoError(f"{bus.host}:{bus.port} (bus {bus.id}) is already in use")

    def start(name: str) -> None:
        console.print(f"starting {name}: {' '.join(commands[name])}", style="dim", markup=False)
        supervisor.start(Child(name, list(commands[name]), DEMO_DIR / f"{name}.log"))

    start("sim")
    start("cloud")
    for bus in tcp_buses:
        supervisor.wait_for(
            f"simulator bus {bus.id} on {bus.host}:{bus.port}",
            partial(_port_open, bus.host, bus.port),
        )
    for host, port, what in _other_endpoints(site):
        if port is None:  # a serial port: the simulator links its pty there
            supervisor.wait_for(what, partial(os.path.exists, host))
        else:
            supervisor.wait_for(what, partial(_port_open, host, port))
    supervisor.wait_for(f"cloud API {api}/health", lambda: _health_ok(client, api))
    # The gateway starts last: a methane sensor it cannot reach is a fault and
    # would trip the power-cut lockout before the simulator serves.
    start("edge")
    _print_urls(console, site, api_port, DEMO_DIR, creds)

    site_id = site.config.site.id
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not supervisor.stop.requested:
            supervisor.check()
            # The API answers 404 for a site until its first telemetry arrives.
            latest, err1 = _fetch(client, f"{api}/api/v1/latest", {"site": site_id}, True)
            alarms, err2 = _fetch(
                client, f"{api}/api/v1/alarms", {"site": site_id, "limit": ALARMS_FETCHED}
            )
            note = "; ".join(e for e in (err1, err2) if e)
            live.update(render(site, latest, alarms, note))
            supervisor.stop.sleep(REFRESH_S)
