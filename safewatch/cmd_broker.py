"""``safewatch broker ...``: Mosquitto accounts, ACL and TLS listener for SafeWatch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cloud.broker import (
    COMMANDER,
    INGEST,
    BrokerAccounts,
    BrokerFiles,
    TlsFiles,
    ensure_cloud_accounts,
    render_conf,
)

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
) -> None:
    """Create (or re-key) the account of one gateway, confined to its own topics.

    It may publish only to safewatch/v1/<site>/<gateway>/{telemetry,alarms,events,status}
    and read only its command topic. Give the gateway the account name as its MQTT user
    and the password through mqtt.password_file or mqtt.password_env.
    """
    accounts = BrokerAccounts(BrokerFiles(directory))
    try:
        account, password = accounts.add_gateway(site, gateway)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"account {account} for gateway {gateway} of site {site}", err=True)
    if password_out is not None:
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
