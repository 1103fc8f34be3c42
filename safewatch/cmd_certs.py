"""``safewatch certs opcua``: make OPC UA application certificates for first use and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

NameOpt = Annotated[
    str, typer.Option("--name", help="Common name; files are NAME-cert.pem and NAME-key.pem.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Directory to write into.")]
UriOpt = Annotated[
    str | None,
    typer.Option(
        "--uri", help="Application URI (default urn:safewatch:gateway:NAME; :sim: with --server)."
    ),
]
HostOpt = Annotated[
    list[str] | None,
    typer.Option("--host", help="DNS name or IP for subjectAltName (repeatable)."),
]
DaysOpt = Annotated[int, typer.Option("--days", min=1, help="Validity in days.")]
ServerOpt = Annotated[
    bool, typer.Option("--server", help="A server certificate (server and client auth).")
]


@app.command("opcua")
def opcua(
    name: NameOpt = "gateway",
    out: OutOpt = Path("var/pki"),
    uri: UriOpt = None,
    host: HostOpt = None,
    days: DaysOpt = 825,
    server: ServerOpt = False,
) -> None:
    """Write a self-signed Basic256Sha256-ready certificate and its key (mode 0600)."""
    from device_drivers.opcua import make_certificate

    hosts = tuple(host) if host else ("localhost", "127.0.0.1")
    files = make_certificate(out, name, uri=uri, hosts=hosts, days=days, server=server)
    typer.echo(f"certificate {files.certificate}")
    typer.echo(f"private key {files.private_key}")
    typer.echo(f"application URI {files.uri}")
    typer.echo("give the peer the certificate to trust; keep the key on this machine only")
