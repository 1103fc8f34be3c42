"""The Ansible roles applied for real, into throwaway directory trees, then the result checked.

What is real here: ``ansible-playbook site.yml`` (connection local) runs every task
of the ``cloud`` and ``edge_gateway`` roles that writes files, renders templates,
builds the buffer filesystem image, runs ``safewatch broker`` and ``safewatch
dashboards export`` from the venv, validates the site file and creates the
InfluxDB database, retention policies and continuous query on the real InfluxDB
(a fresh database). Then: Mosquitto starts on a free port from the rendered
configuration and a gateway started with the rendered unit's command line and
environment connects over TLS with its Vault password; the ingest account reads
its status; ``systemd-analyze verify`` accepts the units; ``logrotate -d`` the
rotation files; the backup script makes a consistent copy of a real SQLite file.

What is not exercised (``safewatch_manage_system: false``, so this shared machine
is not touched): apt, the system user, enabling and starting units, mounting
the buffer image, reloading Mosquitto; the wheel install is replaced by this
checkout's venv (``safewatch_install_package: false``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from ruamel.yaml import YAML

from cloud.dashboards import validate_dashboard
from tests.support import INFLUX_URL, free_port, port_open, wait_until

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
GATEWAY_PASSWORD = "vault-secret-of-gw-a-0123456789"


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is required (dev extra / Debian package)")
    return path


@dataclass
class Applied:
    tmp: Path
    cloud: Path  # the cloud host's root
    gw: Path  # the gateway's root
    mqtt_port: int
    influx_db: str
    cert: Path
    output: str


def _site_file(tmp: Path, gw_root: Path, mqtt_port: int) -> Path:
    yaml = YAML()
    site = yaml.load((REPO / "firmware_configs/sites/demo-mine.yaml").read_text())
    site["gateway"]["id"] = "gw-a"
    site["mqtt"] = {
        "host": "127.0.0.1",
        "port": mqtt_port,
        "username_env": "SAFEWATCH_MQTT_USERNAME",
        "password_file": str(gw_root / "etc/safewatch/mqtt.password"),
        "tls": {"ca_file": str(gw_root / "etc/safewatch/broker-ca.pem")},
    }
    site["buffer"] = {"path": "unused.db", "max_mb": 8}
    site["buses"][0]["port"] = free_port()  # nothing answers: devices are simply offline
    path = tmp / "site-gw-a.yaml"
    with path.open("w") as fh:
        yaml.dump(site, fh)
    return path


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    tmp = tmp_path_factory.mktemp("ansible")
    cloud, gw = tmp / "cloud-root", tmp / "gw-root"
    mqtt_port = free_port()
    influx_db = f"sw_test_ansible_{uuid.uuid4().hex[:8]}"
    cert, key = tmp / "broker.pem", tmp / "broker.key"
    subprocess.run(
        [_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "safewatch_manage_system": False,
        "safewatch_install_package": False,
        "safewatch_venv": str(VENV_BIN.parent),
        "safewatch_user": "root",
        "safewatch_group": "root",
        "safewatch_mqtt_port": mqtt_port,
        "safewatch_mqtt_secure": True,
        "safewatch_mqtt_tls_cert_src": str(cert),
        "safewatch_mqtt_tls_key_src": str(key),
        "safewatch_mqtt_tls_ca_src": str(cert),  # self-signed: its own CA
        "safewatch_mosquitto_group": "root",
    }
    inventory = {
        "all": {
            "vars": common,
            "children": {
                "cloud": {
                    "hosts": {
                        "cloud-1": {
                            "safewatch_root": str(cloud),
                            "safewatch_mqtt_bind": "127.0.0.1",
                            "safewatch_mqtt_host": "127.0.0.1",
                            "safewatch_influx_url": INFLUX_URL,
                            "safewatch_influx_db": influx_db,
                        }
                    }
                },
                "edge_gateways": {
                    "hosts": {
                        "gw-a": {
                            "safewatch_root": str(gw),
                            "safewatch_site_file": str(_site_file(tmp, gw, mqtt_port)),
                            "safewatch_mqtt_password": GATEWAY_PASSWORD,
                            "safewatch_buffer_quota_mb": 16,
                        }
                    }
                },
            },
        }
    }
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / ".ansible-tmp"),
        "ANSIBLE_HOME": str(tmp / ".ansible"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_GATHERING": "explicit",  # the roles use no facts; saves seconds
    }
    run = subprocess.run(
        [_tool("ansible-playbook"), "-i", str(tmp / "inventory.json"), "site.yml"],
        cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    try:
        yield Applied(tmp, cloud, gw, mqtt_port, influx_db, cert, output)
    finally:
        httpx.post(f"{INFLUX_URL}/query", params={"q": f'DROP DATABASE "{influx_db}"'})


def test_playbook_syntax_and_lint() -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    check = subprocess.run(
        [_tool("ansible-playbook"), "-i", "inventories/example/hosts.yml", "site.yml",
         "--syntax-check"],
        cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    lint = subprocess.run(
        [_tool("ansible-lint"), "--nocolor", "--offline"],
        cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-4000:]
    assert "Passed: 0 failure(s), 0 warning(s)" in lint.stdout + lint.stderr


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def _unit_exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_units_and_rotation_files_are_valid(applied: Applied) -> None:
    units = [
        applied.gw / "etc/systemd/system/safewatch-edge.service",
        *(applied.gw / "etc/systemd/system").glob("*.mount"),
        applied.cloud / "etc/systemd/system/safewatch-cloud.service",
        applied.cloud / "etc/systemd/system/safewatch-backup.service",
        applied.cloud / "etc/systemd/system/safewatch-backup.timer",
    ]
    assert len(units) == 5, units
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # where available (Debian: the systemd package)
        verify = subprocess.run(
            [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
        )
        assert verify.returncode == 0, verify.stderr
        assert "Unknown key" not in verify.stderr, verify.stderr
    edge = (applied.gw / "etc/systemd/system/safewatch-edge.service").read_text()
    assert "Restart=always" in edge and "StartLimitIntervalSec=0" in edge
    # the gateway does not speak sd_notify: no watchdog it cannot serve
    assert not any(line.startswith("WatchdogSec=") for line in edge.splitlines())
    assert f"RequiresMountsFor={applied.gw}/var/lib/safewatch/buffer" in edge
    for conf in [
        applied.gw / "etc/logrotate.d/safewatch-edge",
        applied.cloud / "etc/logrotate.d/safewatch-cloud",
    ]:
        check = subprocess.run(
            [_tool("logrotate"), "-d", "-s", str(applied.tmp / "logrotate.state"), str(conf)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert "error" not in check.stderr.lower(), check.stderr


def test_gateway_files_secrets_and_buffer_filesystem(applied: Applied) -> None:
    etc = applied.gw / "etc/safewatch"
    assert (etc / "mqtt.password").read_text().strip() == GATEWAY_PASSWORD
    assert (etc / "mqtt.password").stat().st_mode & 0o777 == 0o600
    assert (etc / "edge.env").stat().st_mode & 0o777 == 0o600
    assert _env_file(etc / "edge.env") == {"SAFEWATCH_MQTT_USERNAME": "gw-a@demo-mine"}
    assert GATEWAY_PASSWORD not in applied.output  # no_log kept it out of the run's output
    image = applied.gw / "var/lib/safewatch/buffer.img"
    assert image.stat().st_size == 16 * 1024 * 1024
    with image.open("rb") as fh:
        fh.seek(1024 + 0x38)
        assert fh.read(2) == b"\x53\xef"  # ext2/3/4 superblock magic


def test_broker_and_gateway_start_from_the_rendered_files(applied: Applied) -> None:
    """Mosquitto accepts the rendered config; the gateway, started as its unit says, connects
    over TLS with its Vault password and the ingest account reads its status."""
    main_conf = applied.tmp / "mosquitto.conf"
    main_conf.write_text(
        f"user root\npersistence false\ninclude_dir {applied.cloud / 'etc/mosquitto/conf.d'}\n"
    )
    broker = subprocess.Popen(
        [_tool("mosquitto"), "-c", str(main_conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    gateway: subprocess.Popen[str] | None = None
    try:
        wait_until(
            lambda: port_open("127.0.0.1", applied.mqtt_port) or broker.poll() is not None,
            15,
            "mosquitto on the rendered config",
        )
        assert broker.poll() is None, broker.stdout.read() if broker.stdout else ""

        ingest_password = (
            (applied.cloud / "etc/mosquitto/safewatch/safewatch-ingest.password")
            .read_text()
            .strip()
        )
        seen: list[tuple[str, bytes]] = []

        def client(user: str, password: str) -> mqtt.Client:
            api = mqtt.CallbackAPIVersion.VERSION2  # type: ignore[attr-defined]
            c = mqtt.Client(api, client_id=f"t-{uuid.uuid4().hex[:8]}")
            c.username_pw_set(user, password)
            c.tls_set(ca_certs=str(applied.cert), cert_reqs=ssl.CERT_REQUIRED)
            return c

        ingest = client("safewatch-ingest", ingest_password)

        def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
            seen.append((msg.topic, bytes(msg.payload)))

        ingest.on_message = on_message
        ingest.connect("127.0.0.1", applied.mqtt_port)
        ingest.subscribe("safewatch/v1/#", qos=1)
        ingest.loop_start()

        # a wrong password is refused
        intruder = client("gw-a@demo-mine", "not-the-password-at-all")
        with pytest.raises(Exception, match=r"(?i)not authori[sz]ed|bad user name"):
            intruder.connect("127.0.0.1", applied.mqtt_port)
            rc = intruder.loop(timeout=5)
            intruder.loop(timeout=2)
            if not intruder.is_connected():
                raise ConnectionError(f"not authorised (rc {rc})")

        unit = applied.gw / "etc/systemd/system/safewatch-edge.service"
        env = {**os.environ, **_env_file(applied.gw / "etc/safewatch/edge.env")}
        log = (applied.tmp / "edge.log").open("w")
        gateway = subprocess.Popen(
            _unit_exec_start(unit), env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        wait_until(
            lambda: (
                any(t == "safewatch/v1/demo-mine/gw-a/status" for t, _ in seen)
                or gateway.poll() is not None
            ),
            45,
            "the gateway's online status via the ingest account",
        )
        assert gateway.poll() is None, (applied.tmp / "edge.log").read_text()[-3000:]
        status = [json.loads(p) for t, p in seen if t.endswith("/gw-a/status")]
        assert status[-1]["state"] == "online"

        # the gateway's own account may not speak for another gateway (ACL)
        gw_client = client("gw-a@demo-mine", GATEWAY_PASSWORD)
        gw_client.connect("127.0.0.1", applied.mqtt_port)
        gw_client.loop_start()
        gw_client.publish(
            "safewatch/v1/demo-mine/gw-b/telemetry", b"forged", qos=1
        ).wait_for_publish(5)
        gw_client.publish("safewatch/v1/demo-mine/gw-a/events", b"own", qos=1).wait_for_publish(5)
        wait_until(lambda: any(p == b"own" for _, p in seen), 10, "the gateway's own message")
        assert not any(p == b"forged" for _, p in seen)
        gw_client.loop_stop()
        gw_client.disconnect()
        ingest.loop_stop()
        ingest.disconnect()
    finally:
        for proc in (gateway, broker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _influx(db: str, q: str) -> Any:
    r = httpx.post(f"{INFLUX_URL}/query", params={"db": db, "q": q})
    r.raise_for_status()
    result: Any = r.json()["results"][0]
    assert "error" not in result, result
    return result


def test_influx_retention_and_five_minute_statistics(applied: Applied) -> None:
    db = applied.influx_db
    rps = _influx(db, f'SHOW RETENTION POLICIES ON "{db}"')["series"][0]
    by_name = {row[0]: row for row in rps["values"]}
    assert by_name["raw"][1] == "2400h0m0s" and by_name["raw"][4] is True  # 100 d, default
    assert by_name["stats_5m"][1] == "19200h0m0s"  # 800 d >= 2 years
    cqs = _influx(db, "SHOW CONTINUOUS QUERIES")["series"]
    ours = next(s for s in cqs if s["name"] == db)
    names = [row[0] for row in ours["values"]]
    assert names == ["safewatch_stats_5m"]
    cq_text = ours["values"][0][1]
    assert "GROUP BY time(5m), *" in cq_text and "stats_5m.:MEASUREMENT" in cq_text

    # The CQ's SELECT, run once by hand over a finished 5-minute window, fills the
    # statistics policy with min/mean/max per series (what the CQ does every 5 min).
    bucket = 300 * 10**9  # a finished 5-minute window, well inside the raw policy's 100 days
    base = (time.time_ns() // bucket - 2) * bucket + 10**9
    lines = "\n".join(
        f"ch4,site=s,tag=CH4_A value={v} {base + i * 10**9}" for i, v in enumerate([0.2, 0.4, 0.9])
    )
    httpx.post(f"{INFLUX_URL}/write", params={"db": db}, content=lines).raise_for_status()
    select = cq_text.split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
    backfill = select.replace(
        "GROUP BY", f"WHERE time >= {base - 10**9} AND time < {base - 10**9 + bucket} GROUP BY"
    )
    _influx(db, backfill)
    stats = _influx(db, f'SELECT "min","mean","max","count" FROM "{db}"."stats_5m"."ch4"')
    row = stats["series"][0]["values"][0]
    assert row[1:] == [0.2, pytest.approx(0.5), 0.9, 3]


def test_backup_script_copies_the_sqlite_database(applied: Applied) -> None:
    db = applied.cloud / "var/lib/safewatch/cloud.db"
    subprocess.run(
        [_tool("sqlite3"), str(db), "CREATE TABLE t(x); INSERT INTO t VALUES (42);"], check=True
    )
    run = subprocess.run(
        [str(applied.cloud / "opt/safewatch/safewatch-backup")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    copies = list((applied.cloud / "var/backups/safewatch").glob("cloud-*.db"))
    assert len(copies) == 1
    out = subprocess.run(
        [_tool("sqlite3"), str(copies[0]), "SELECT x FROM t"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "42"


def test_grafana_provisioning_installed(applied: Applied) -> None:
    prov = applied.cloud / "etc/grafana/provisioning"
    yaml = YAML(typ="safe")
    source = yaml.load((prov / "datasources/safewatch.yaml").read_text())["datasources"][0]
    assert source["jsonData"]["dbName"] == applied.influx_db
    provider = yaml.load((prov / "dashboards/safewatch.yaml").read_text())["providers"][0]
    boards = Path(provider["options"]["path"])
    assert boards == applied.cloud / "var/lib/grafana/dashboards/safewatch"
    names = sorted(p.stem for p in boards.glob("*.json"))
    assert names == [
        "sw-demo-mine-gas",
        "sw-demo-mine-health",
        "sw-demo-mine-uplink",
        "sw-demo-mine-wall",
    ]
    for path in boards.glob("*.json"):
        validate_dashboard(json.loads(path.read_text()))
