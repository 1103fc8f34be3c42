"""Broker accounts, ACL and listener files; TLS/secret helpers; the gateway's MQTT access."""

from __future__ import annotations

import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import wire
from cloud.broker import (
    COMMANDER,
    INGEST,
    BrokerAccounts,
    BrokerFiles,
    TlsFiles,
    acl_lines,
    mosquitto_hash,
    mosquitto_verify,
    render_conf,
)
from edge.config import ConfigError, load_site
from edge.gateway import mqtt_access
from safewatch.cli import app as cli
from safewatch.cmd_demo import DEMO_SITE
from tests.tls_support import make_pki


def test_hash_matches_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "mosquitto_passwd comes with Mosquitto (scripts/services.sh installs it)"
    passwd = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwd), "alice", "s3cret-pass"], check=True)
    encoded = passwd.read_text().strip().split(":", 1)[1]
    assert mosquitto_verify("s3cret-pass", encoded)
    assert not mosquitto_verify("wrong", encoded)
    ours = mosquitto_hash("s3cret-pass")
    assert ours.startswith("$7$1000$") and mosquitto_verify("s3cret-pass", ours)


def test_acl_confines_each_kind_of_account() -> None:
    assert acl_lines(wire.gateway_account("mine-a", "gw-1")) == [
        "user gw-1@mine-a",
        "topic write safewatch/v1/mine-a/gw-1/telemetry",
        "topic write safewatch/v1/mine-a/gw-1/alarms",
        "topic write safewatch/v1/mine-a/gw-1/events",
        "topic write safewatch/v1/mine-a/gw-1/status",
        "topic read safewatch/v1/mine-a/gw-1/command",
    ]
    assert all(" read " in line for line in acl_lines(INGEST)[1:])
    assert acl_lines(COMMANDER)[1:] == ["topic write safewatch/v1/+/+/command"]
    with pytest.raises(ValueError):
        acl_lines("someone")


def test_accounts_files_are_private_and_rewritten(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "broker")
    accounts = BrokerAccounts(files)
    account, first = accounts.add_gateway("mine-a", "gw-1")
    _, second = accounts.add_gateway("mine-a", "gw-1")  # re-key
    assert (
        first != second and accounts.check(account, second) and not accounts.check(account, first)
    )
    accounts.set_password(INGEST)
    assert accounts.names() == ["gw-1@mine-a", INGEST]
    assert stat.S_IMODE(files.passwd.stat().st_mode) == 0o640
    assert "topic read safewatch/v1/mine-a/gw-1/command" in files.acl.read_text()
    assert second not in files.passwd.read_text()
    assert accounts.remove(account) and not accounts.remove(account)
    assert "gw-1" not in files.acl.read_text()
    with pytest.raises(ValueError):
        accounts.add_gateway("mine/a", "gw-1")


def test_listener_config_with_and_without_tls(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path)
    tls = render_conf(
        files, bind="0.0.0.0", port=8883, tls=TlsFiles("/c.pem", "/k.pem", "/ca.pem", True)
    )
    assert "allow_anonymous false" in tls and f"acl_file {files.acl}" in tls
    assert "certfile /c.pem" in tls and "require_certificate true" in tls
    plain = render_conf(files, bind="127.0.0.1", port=1883, tls=None)
    assert "WARNING: no TLS" in plain and "certfile" not in plain


def test_broker_cli_add_gateway_prints_the_password_once(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = str(tmp_path / "b")
    init = runner.invoke(cli, ["broker", "init", "--dir", directory, "--no-tls"])
    assert init.exit_code == 0, init.output
    assert (tmp_path / "b" / f"{INGEST}.password").exists()
    added = runner.invoke(cli, ["broker", "add-gateway", "mine-a", "gw-9", "--dir", directory])
    assert added.exit_code == 0, added.output
    password = added.stdout.strip().splitlines()[-1]
    assert BrokerAccounts(BrokerFiles(tmp_path / "b")).check("gw-9@mine-a", password)
    listed = runner.invoke(cli, ["broker", "list", "--dir", directory]).output
    assert "gw-9@mine-a\tgateway" in listed and f"{COMMANDER}\tcloud" in listed
    no_cert = runner.invoke(cli, ["broker", "init", "--dir", directory])
    assert no_cert.exit_code == 2


def test_secret_client_ids_are_stable_and_unguessable() -> None:
    one = wire.secret_client_id("safewatch-ingest-host", "password-1")
    assert one == wire.secret_client_id("safewatch-ingest-host", "password-1")
    assert one != wire.secret_client_id("safewatch-ingest-host", "password-2")
    assert (
        one.startswith("safewatch-ingest-host-") and len(one) == len("safewatch-ingest-host-") + 20
    )
    assert wire.secret_client_id("plain", None) == "plain"


def test_secrets_and_tls_errors_name_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    assert wire.read_secret(str(secret), "from-env") == "from-file"
    assert wire.read_secret(None, "from-env") == "from-env"
    assert wire.read_secret(None, "") is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(wire.TransportError, match="empty"):
        wire.read_secret(str(tmp_path / "empty"))
    with pytest.raises(wire.TransportError, match="nope"):
        wire.read_secret(str(tmp_path / "nope"))
    with pytest.raises(wire.TransportError, match=r"missing\.pem"):
        wire.client_tls_context(str(tmp_path / "missing.pem"))
    with pytest.raises(wire.TransportError, match="both"):
        wire.client_tls_context(None, cert_file="c.pem")
    pki = make_pki(tmp_path / "pki")
    context = wire.client_tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def _site_with(tmp_path: Path, mqtt_block: str) -> Path:
    text = DEMO_SITE.read_text()
    start = text.index("mqtt:")
    end = text.index("\n", text.index("port:", start))
    path = tmp_path / "site.yaml"
    path.write_text(text[:start] + mqtt_block.rstrip("\n") + text[end:], encoding="utf-8")
    return path


def test_gateway_reads_tls_and_password_file_from_its_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "gw.password").write_text("gateway-secret\n")
    monkeypatch.setenv("GW_USER", "gw-1201@demo-mine")
    site = load_site(
        _site_with(
            tmp_path,
            "mqtt:\n  host: 127.0.0.1\n  port: 8883\n  username_env: GW_USER\n"
            f"  password_file: {tmp_path / 'gw.password'}\n"
            f"  tls:\n    ca_file: {pki.ca}\n    cert_file: {pki.client_cert}\n"
            f"    key_file: {pki.client_key}\n",
        )
    )
    access = mqtt_access(site)
    assert (access.username, access.password) == ("gw-1201@demo-mine", "gateway-secret")
    assert access.tls_context is not None
    assert access.client_id == wire.secret_client_id(
        "safewatch-demo-mine-gw-1201", "gateway-secret"
    )


def test_half_a_client_certificate_is_a_config_error(tmp_path: Path) -> None:
    path = _site_with(tmp_path, "mqtt:\n  host: 127.0.0.1\n  tls:\n    cert_file: /c.pem\n")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert "cert_file and key_file go together" in str(info.value.issues[0])
