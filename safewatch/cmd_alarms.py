"""``safewatch alarms``: ISA-18.2 alarm states on a gateway's own database.

Works on the gateway machine without the cloud: the actions are written to the
gateway's alarm database (``<state>-alarms.sqlite``); the running gateway
forwards them to the cloud as alarm events within a second, or when it next
reaches the cloud.
"""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.alarm_manager import (
    AlarmActionError,
    AlarmRecord,
    AlarmStore,
    ChatterPolicy,
    alarm_db_path,
    kpis,
)

if TYPE_CHECKING:
    from edge.config import LoadedSite

app = typer.Typer(no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Site YAML file (finds the gateway's database).")
]
BufferOpt = Annotated[
    Path | None, typer.Option("--buffer", help="Buffer database (default: the site's buffer.path).")
]
DbOpt = Annotated[
    Path | None, typer.Option("--db", help="The alarm database itself (instead of --config).")
]
ByOpt = Annotated[str, typer.Option("--by", help="Who acts (recorded; default: login name).")]
WhyOpt = Annotated[str, typer.Option("--why", help="Why (recorded).")]
AlarmArg = Annotated[str, typer.Argument(help="Alarm id, rule|tag, or tag.")]


def _site(config: Path) -> LoadedSite:
    from edge.config import ConfigError, load_site

    try:
        return load_site(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


def _db_path(config: Path | None, buffer: Path | None, db: Path | None) -> Path:
    if db is not None:
        return db
    if config is None:
        typer.echo("name the site (--config site.yaml) or the database (--db)", err=True)
        raise typer.Exit(2)
    from edge.latches import state_path_for

    site = _site(config)
    return alarm_db_path(state_path_for(buffer or site.config.buffer.path, site.config.state.path))


def _open(config: Path | None, buffer: Path | None, db: Path | None) -> AlarmStore:
    path = _db_path(config, buffer, db)
    try:
        return AlarmStore(path)
    except AlarmActionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


def _act(
    ref: str,
    action: str,
    config: Path | None,
    buffer: Path | None,
    db: Path | None,
    by: str,
    why: str,
    shelve_s: float | None = None,
) -> None:
    store = _open(config, buffer, db)
    try:
        rec = store.act(ref, action, actor=by or getpass.getuser(), why=why, shelve_s=shelve_s)
    except AlarmActionError as exc:
        typer.echo(f"{store.path}: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    typer.echo(json.dumps(rec.as_dict(), sort_keys=True))


@app.command("list")
def list_alarms(
    config: ConfigOpt = None,
    buffer: BufferOpt = None,
    db: DbOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Include alarms back in normal.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The gateway's alarms and their ISA-18.2 states."""
    store = _open(config, buffer, db)
    try:
        records = store.alarms(include_normal=all_)
    finally:
        store.close()
    if as_json:
        for rec in records:
            typer.echo(json.dumps(rec.as_dict(), sort_keys=True))
        return
    table = Table("alarm", "rule|tag", "state", "level", "priority", "since", "note")
    for rec in records:
        table.add_row(
            rec.alarm_id[:12],
            rec.key,
            rec.state,
            rec.level,
            rec.priority,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.since_ns / 1e9)),
            _note(rec),
        )
    Console().print(table)


def _note(rec: AlarmRecord) -> str:
    if rec.shelved_until_ns is not None:
        return "until " + time.strftime("%H:%M:%S", time.gmtime(rec.shelved_until_ns / 1e9))
    return rec.reason


def _plain_action(name: str, action: str, summary: str) -> None:
    """Register ``safewatch alarms <name>``: ``action`` on one alarm, no options of its own
    (shelve and oos below add theirs; every action goes through :func:`_act`)."""

    def command(
        alarm: AlarmArg,
        config: ConfigOpt = None,
        buffer: BufferOpt = None,
        db: DbOpt = None,
        by: ByOpt = "",
        why: WhyOpt = "",
    ) -> None:
        _act(alarm, action, config, buffer, db, by, why)

    command.__doc__ = summary
    app.command(name)(command)


_plain_action("ack", "acknowledge", "Acknowledge an alarm.")


@app.command("shelve")
def shelve(
    alarm: AlarmArg,
    config: ConfigOpt = None,
    buffer: BufferOpt = None,
    db: DbOpt = None,
    by: ByOpt = "",
    why: WhyOpt = "",
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, max=10080)] = 480,
) -> None:
    """Shelve an alarm for a while (annunciation only: cuts still act)."""
    _act(alarm, "shelve", config, buffer, db, by, why, shelve_s=minutes * 60)


_plain_action(
    "unshelve", "unshelve", "Unshelve an alarm (or release one suppressed for chattering)."
)


@app.command("oos")
def out_of_service(
    alarm: AlarmArg,
    why: Annotated[str, typer.Option("--why", help="Reason (required).")],
    config: ConfigOpt = None,
    buffer: BufferOpt = None,
    db: DbOpt = None,
    by: ByOpt = "",
    back: Annotated[bool, typer.Option("--return", help="Return it to service.")] = False,
) -> None:
    """Take an alarm out of service with a reason (``--return`` puts it back)."""
    _act(alarm, "return_to_service" if back else "out_of_service", config, buffer, db, by, why)


@app.command("kpi")
def kpi(
    config: ConfigOpt = None,
    buffer: BufferOpt = None,
    db: DbOpt = None,
    hours: Annotated[float, typer.Option("--hours", min=0.01, help="Period ending now.")] = 12,
    operators: Annotated[int, typer.Option("--operators", min=1)] = 1,
) -> None:
    """EEMUA 191 / ISA-18.2 figures, also per operator console; last line JSON.

    Consoles come from the site's alarms.consoles (--config); with --db only, the gateway
    is one console."""
    consoles: dict[str, str] = {}
    if config is not None:
        site = _site(config)
        consoles = {t.name: site.console_of(t.location.area) for _, t in site.tags()}
    store = _open(config, buffer, db)
    try:
        end = time.time_ns()
        start = end - int(hours * 3600e9)
        figures = kpis(
            store.history(start, end),
            start,
            end,
            operators=operators,
            chatter=ChatterPolicy(),
            standing=store.alarms(),
            consoles=consoles,
        )
    finally:
        store.close()
    typer.echo(json.dumps(figures, sort_keys=True))
