"""``safewatch config validate|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.config import ConfigError, load_profiles, load_site

app = typer.Typer(no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="Site YAML file.")]
ProfilesOpt = Annotated[
    Path | None, typer.Option("--profiles", help="Directory of sensor profiles (*.yaml).")
]


TAG_TABLE_LIMIT = 200  # beyond this, one row per device (a 10,000-row table takes a minute)


@app.command()
def validate(
    file: FileArg,
    profiles: ProfilesOpt = None,
    all_tags: Annotated[
        bool, typer.Option("--all-tags", help="List every tag, however many.")
    ] = False,
) -> None:
    """Validate a site file; print every error with file, line, device and field."""
    err = Console(stderr=True)
    try:
        known = load_profiles(profiles) if profiles else None
        site = load_site(file, known)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.issues)} error(s); configuration rejected.", style="bold red")
        raise typer.Exit(1) from exc
    cfg = site.config
    out = Console(soft_wrap=True)
    out.print(
        f"{file}: OK - site {cfg.site.id}, gateway {cfg.gateway.id}, "
        f"{len(cfg.buses)} bus(es), {len(cfg.devices)} device(s), "
        f"{len(site.tags())} tag(s), {len(cfg.actuators)} actuator(s)"
    )
    if len(site.tags()) > TAG_TABLE_LIMIT and not all_tags:
        summary = Table("device", "bus", "unit", "poll ms", "tags", "profiles")
        for device in cfg.devices:
            summary.add_row(
                device.id,
                device.bus,
                str(device.unit_id),
                str(device.poll_ms),
                str(len(device.tags)),
                ", ".join(sorted({t.profile for t in device.tags})) or "-",
            )
        out.print(summary)
        out.print(f"(one row per device; --all-tags lists all {len(site.tags())} tags)")
        return
    table = Table("device", "tag", "profile", "position", "alarm", "cut", "restore", "actuators")
    for device, tag in site.tags():
        th = site.thresholds_of(tag)
        table.add_row(
            device.id,
            tag.name,
            tag.profile,
            tag.location.position,
            f"{'<' if th.direction == 'low' else '>='} {th.alarm}",
            "-" if th.cut is None else str(th.cut),
            "-" if th.restore is None else str(th.restore),
            ", ".join(tag.actuators) or "-",
        )
    out.print(table)
