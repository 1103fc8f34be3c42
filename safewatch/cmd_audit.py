"""``safewatch audit ...``: read and verify the hash-chained audit trail."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safewatch.cmd_users import DEFAULT_DB_URL, DbUrl, open_auth

app = typer.Typer(no_args_is_help=True)

_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


def _anchor(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    match = _ANCHOR.fullmatch(value.strip())
    if match is None:
        raise typer.BadParameter("expected SEQ:HASH as printed by `safewatch audit head`")
    return int(match.group(1)), match.group(2)


@app.command("verify")
def verify(
    db_url: DbUrl = DEFAULT_DB_URL,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="SEQ:HASH noted earlier (`safewatch audit head`): also catches rows deleted "
            "from the end or a chain rewritten after it."
        ),
    ] = None,
) -> None:
    """Check every row's hash and link; exit 1 and list the rows that do not hold."""
    expected = _anchor(anchor)
    with open_auth(db_url) as o:
        report = o.audit.verify(expected)
    for problem in report.problems:
        typer.echo(f"TAMPERED {problem}")
    if not report.ok:
        typer.echo(
            f"audit trail NOT intact: {len(report.problems)} problem(s) in {report.rows} rows"
        )
        raise typer.Exit(1)
    typer.echo(f"audit trail intact: {report.rows} rows, head {report.head_seq}:{report.head_hash}")


@app.command("head")
def head(db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Print SEQ:HASH of the newest row; keep it outside the database to check later."""
    with open_auth(db_url) as o:
        seq, digest = o.audit.head()
    typer.echo(f"{seq}:{digest}")


@app.command("show")
def show(
    db_url: DbUrl = DEFAULT_DB_URL,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
) -> None:
    """The newest rows, newest first."""
    with open_auth(db_url) as o:
        rows = o.audit.entries(limit=limit, action=action)
    table = Table("seq", "at (UTC)", "actor", "action", "target", "details")
    for r in rows:
        table.add_row(
            str(r.seq), r.at.strftime("%Y-%m-%d %H:%M:%S"), r.actor, r.action, r.target, r.details
        )
    Console(width=160).print(table)
