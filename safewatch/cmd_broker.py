"""``safewatch broker ...``: Mosquitto accounts, ACL and TLS listener for SafeWatch."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, cast

import aiomqtt
import typer

import wire
from cloud.broker import (
    COMMANDER,
    INGEST,
    BrokerAccounts,
    BrokerFiles,
    TlsFiles,
    ensure_cloud_accounts,
    render_conf,
)
from cloud.commands import AUDIT_OF, CommandSigner, generate_command_key, send_command
from safewatch.cmd_users import actor, open_auth

app = typer.Typer(no_args_is_help=True)

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="Directory of the broker files (safewatch.conf, passwd, acl).",
        envvar="SAFEWATCH_BROKER_DIR",
    ),
]
DEFAULT_DIR = Path("/etc/mosquitto/safewatch")
RELOAD_HINT = "reload Mosquitto to apply: systemctl reload mosquitto (or kill -HUP its pid)"


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")


@app.command("init")
def init(
    directory: DirOpt = DEFAULT_DIR,
    bind: Annotated[str, typer.Option(help="Listener address.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Listener port.")] = 8883,
    cert: Annotated[str | None, typer.Option(help="Server certificate (PEM).")] = None,
    key: Annotated[str | None, typer.Option(help="Server private key (PEM).")] = None,
    client_ca: Annotated[
        str | None, typer.Option(help="CA that signs client certificates (optional).")
    ] = None,
    require_client_cert: Annotated[
        bool, typer.Option(help="Refuse clients without a certificate from --client-ca.")
    ] = False,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Plain listener (test benches only).")
    ] = False,
    secrets_dir: Annotated[
        Path | None,
        typer.Option(help="Where to write new cloud account passwords (default: --dir)."),
    ] = None,
) -> None:
    """Write the listener configuration and create the cloud accounts.

    safewatch-ingest may only read gateway topics; safewatch-commander may only send
    commands. Their passwords go to <secrets-dir>/<account>.password (mode 600).
    """
    if not no_tls and (cert is None or key is None):
        raise typer.BadParameter("--cert and --key are required (or --no-tls)")
    if require_client_cert and client_ca is None:
        raise typer.BadParameter("--require-client-cert needs --client-ca")
    files = BrokerFiles(directory)
    tls = (
        None
        if no_tls or cert is None or key is None
        else TlsFiles(cert, key, client_ca, require_client_cert)
    )
    directory.mkdir(parents=True, exist_ok=True)
    files.conf.write_text(render_conf(files, bind=bind, port=port, tls=tls), encoding="utf-8")
    accounts = BrokerAccounts(files)
    created = ensure_cloud_accounts(accounts, (INGEST, COMMANDER))
    for name, password in created.items():
        target = (secrets_dir or directory) / f"{name}.password"
        _write_secret(target, password)
        typer.echo(f"account {name}: password in {target}")
    typer.echo(f"wrote {files.conf}, {files.passwd}, {files.acl}")
    typer.echo(f"include {files.conf} from mosquitto.conf, then {RELOAD_HINT}")


@app.command("add-gateway")
def add_gateway(
    site: str,
    gateway: str,
    directory: DirOpt = DEFAULT_DIR,
    password_out: Annotated[
        Path | None,
        typer.Option(help="Write the password to this file (mode 600) instead of stdout."),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            help="Use the password in this file (e.g. from Ansible Vault) instead of making "
            "one; nothing is rewritten when the account already has it (prints 'unchanged')."
        ),
    ] = None,
) -> None:
    """Create (or re-key) the account of one gateway, confined to its own topics.

    It may publish only to safewatch/v1/<site>/<gateway>/{telemetry,alarms,events,status}
    and read only its command topic. Give the gateway the account name as its MQTT user
    and the password through mqtt.password_file or mqtt.password_env.
    """
    accounts = BrokerAccounts(BrokerFiles(directory))
    given: str | None = None
    if password_file is not None:
        try:
            given = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {password_file}: {exc}") from exc
        if len(given) < 16:
            raise typer.BadParameter(f"{password_file}: password shorter than 16 characters")
        if accounts.check(wire.gateway_account(site, gateway), given):
            typer.echo(f"account {wire.gateway_account(site, gateway)} unchanged")
            return
    try:
        account, password = accounts.add_gateway(site, gateway, given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"account {account} for gateway {gateway} of site {site}", err=True)
    if given is not None:
        typer.echo(f"account {account} set from {password_file}")
    elif password_out is not None:
        _write_secret(password_out, password)
        typer.echo(f"password in {password_out}", err=True)
    else:
        typer.echo(password)
    typer.echo(RELOAD_HINT, err=True)


@app.command("remove")
def remove(account: str, directory: DirOpt = DEFAULT_DIR) -> None:
    """Delete an account and its ACL lines."""
    if not BrokerAccounts(BrokerFiles(directory)).remove(account):
        typer.echo(f"error: no account {account!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"account {account} removed; {RELOAD_HINT}")


@app.command("list")
def list_accounts(directory: DirOpt = DEFAULT_DIR) -> None:
    """The accounts in the password file."""
    for name in BrokerAccounts(BrokerFiles(directory)).names():
        kind = "gateway" if "@" in name else "cloud"
        typer.echo(f"{name}\t{kind}")


@app.command("command-key")
def command_key(
    private: Annotated[Path, typer.Option(help="Private key file to create (mode 600).")],
    public: Annotated[Path, typer.Option(help="Public key file for the gateways.")],
) -> None:
    """Make the Ed25519 key pair that signs commands to gateways.

    Keep the private key with the cloud; list the public key file under
    commands.public_key_files in every gateway's site YAML.
    """
    try:
        kid = generate_command_key(private, public)
    except FileExistsError as exc:
        raise typer.BadParameter(f"{private} exists; refusing to overwrite a key") from exc
    typer.echo(f"command key {kid}: private {private}, public {public}")


def _value(text: str) -> str | int | float:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _args(pairs: list[str]) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--arg {pair!r}: expected NAME=VALUE")
        out[name] = _value(value)
    return out


@app.command("send-command")
def send_command_cmd(
    site: str,
    gateway: str,
    action: Annotated[str, typer.Argument(help=f"One of {', '.join(wire.COMMAND_ACTIONS)}.")],
    key: Annotated[Path, typer.Option(help="The command signing key (private, PEM).")],
    mqtt_host: Annotated[str, typer.Option(help="Broker host.")] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="Broker port.")] = 8883,
    mqtt_username: Annotated[str, typer.Option(help="Broker account.")] = COMMANDER,
    mqtt_password_file: Annotated[
        str | None, typer.Option(help="File holding the account's password.")
    ] = None,
    mqtt_password_env: Annotated[
        str, typer.Option(help="Variable holding the password (if no file).")
    ] = "SAFEWATCH_MQTT_PASSWORD",
    mqtt_ca_file: Annotated[str | None, typer.Option(help="CA of the broker (TLS).")] = None,
    no_tls: Annotated[bool, typer.Option("--no-tls", help="Plain MQTT (test benches).")] = False,
    arg: Annotated[list[str] | None, typer.Option(help="NAME=VALUE, repeatable.")] = None,
    ttl_s: Annotated[float, typer.Option(min=1, max=3600, help="Valid for this long.")] = 60.0,
    audit_db_url: Annotated[
        str | None,
        typer.Option(help="Cloud database whose audit trail records the command."),
    ] = None,
) -> None:
    """Sign one command and publish it to the gateway's command topic."""
    if action not in wire.COMMAND_ACTIONS:
        raise typer.BadParameter(f"unknown action {action!r}")
    try:
        signer = CommandSigner(key)
        password = wire.read_secret(mqtt_password_file, os.environ.get(mqtt_password_env))
        tls = None if no_tls else wire.client_tls_context(mqtt_ca_file)
    except wire.TransportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    command = signer.command(
        site, gateway, cast(wire.CommandAction, action), actor(), _args(arg or []), ttl_s
    )
    try:
        asyncio.run(
            send_command(
                signer,
                command,
                host=mqtt_host,
                port=mqtt_port,
                username=mqtt_username,
                password=password,
                tls_context=tls,
            )
        )
    except (aiomqtt.MqttError, TimeoutError) as exc:
        typer.echo(f"error: broker {mqtt_host}:{mqtt_port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if audit_db_url is not None:
        with open_auth(audit_db_url) as opened:
            opened.audit.record(
                command.issuer,
                AUDIT_OF.get(action, "command_sent"),
                f"{site}/{gateway}",
                {"command": command.id, "action": action, "args": command.args},
            )
    typer.echo(f"sent {action} {command.id} to {site}/{gateway}")
