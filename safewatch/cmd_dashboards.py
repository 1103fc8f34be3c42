"""``safewatch dashboards export|push``: the control-room walls of one or more sites.

The CLI is where edge configuration meets the cloud: it loads each site file
with the gateway's own loader (so thresholds are exactly the ones the gateway
applies, overrides included) and hands :mod:`cloud.dashboards` a plain spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from edge.config import ConfigError, LoadedSite, load_profiles, load_site

if TYPE_CHECKING:
    from cloud.dashboards import WallSpec

# cloud.dashboards (the Grafana SDK, jsonschema, grafana-client) is imported in the
# commands, not here: every `safewatch` start (edge run included) imports this module.

app = typer.Typer(no_args_is_help=True)

ConfigsOpt = Annotated[
    list[Path],
    typer.Option("--config", help="Site YAML file; repeat for several sites."),
]
ProfilesOpt = Annotated[
    Path | None, typer.Option("--profiles", help="Directory of sensor profiles (default: shipped).")
]
InfluxUrlOpt = Annotated[
    str, typer.Option("--influx-url", help="InfluxDB URL as Grafana reaches it.")
]
InfluxDbOpt = Annotated[
    str, typer.Option("--influx-db", help="InfluxDB database the cloud writes.")
]
InfluxUserOpt = Annotated[
    str, typer.Option("--influx-user", help="InfluxDB user for Grafana (empty: no auth).")
]


def wall_spec(site: LoadedSite) -> WallSpec:
    """The wall's view of a validated site: tags, places, effective thresholds."""
    from cloud.dashboards import TagSpec, ThresholdSpec, WallSpec

    tags: list[TagSpec] = []
    for device, tag in site.tags():
        t = site.thresholds_of(tag)
        tags.append(
            TagSpec(
                name=tag.name,
                device=device.id,
                bus=device.bus,
                kind=site.profile_of(tag).kind,
                unit=site.unit_of(tag),
                area=tag.location.area,
                position=tag.location.position,
                thresholds=ThresholdSpec(
                    direction="low" if t.direction.value == "low" else "high",
                    alarm=t.alarm,
                    cut=t.cut,
                    restore=t.restore,
                ),
            )
        )
    cfg = site.config
    return WallSpec(
        site_id=cfg.site.id,
        site_name=cfg.site.name,
        gateway=cfg.gateway.id,
        tags=tuple(tags),
        devices=tuple(d.id for d in cfg.devices),
        buses=tuple(b.id for b in cfg.buses),
    )


def build_all(configs: list[Path], profiles: Path | None) -> dict[str, dict[str, Any]]:
    """Dashboards of every site, validated against the shipped schema."""
    from cloud.dashboards import build_dashboards, validate_dashboard

    profile_set = load_profiles(profiles) if profiles is not None else None
    boards: dict[str, dict[str, Any]] = {}
    for path in configs:
        built = build_dashboards(wall_spec(load_site(path, profile_set)))
        for uid, board in built.items():
            if uid in boards:
                raise typer.BadParameter(
                    f"{path}: dashboard uid {uid} already built by another site"
                )
            validate_dashboard(board)
            boards[uid] = board
    return boards


def _load(configs: list[Path], profiles: Path | None, err: Console) -> dict[str, dict[str, Any]]:
    if not configs:
        err.print("give at least one --config site.yaml", style="bold red")
        raise typer.Exit(2)
    try:
        return build_all(configs, profiles)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False)
        err.print(f"{len(exc.issues)} error(s); no dashboards built.", style="bold red")
        raise typer.Exit(1) from exc


@app.command("export")
def export_cmd(
    directory: Annotated[Path, typer.Argument(help="Output directory.")],
    config: ConfigsOpt = [],  # noqa: B006  # typer reads the default, never mutates it
    profiles: ProfilesOpt = None,
    influx_url: InfluxUrlOpt = "http://127.0.0.1:8086",
    influx_db: InfluxDbOpt = "safewatch",
    influx_user: InfluxUserOpt = "",
    dashboards_path: Annotated[
        str,
        typer.Option(help="Where Grafana will read the dashboard JSON files on its host."),
    ] = "/var/lib/grafana/dashboards/safewatch",
) -> None:
    """Write dashboards/*.json and provisioning/{datasources,dashboards}/safewatch.yaml."""
    from cloud.dashboards import GrafanaTarget, export

    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    boards = _load(config, profiles, err)
    target = GrafanaTarget(
        influx_url=influx_url,
        influx_db=influx_db,
        influx_user=influx_user,
        dashboards_path=dashboards_path,
    )
    written = export(boards, directory, target)
    for path in written:
        out.print(str(path), markup=False)
    out.print(f"{len(boards)} dashboard(s), {len(written) - len(boards)} provisioning file(s)")


@app.command("push")
def push_cmd(
    config: ConfigsOpt = [],  # noqa: B006  # typer reads the default, never mutates it
    profiles: ProfilesOpt = None,
    url: Annotated[
        str, typer.Option(envvar="SAFEWATCH_GRAFANA_URL", help="Grafana base URL.")
    ] = "",
    token_env: Annotated[
        str,
        typer.Option(help="Environment variable holding a Grafana service-account token."),
    ] = "SAFEWATCH_GRAFANA_TOKEN",
    influx_url: InfluxUrlOpt = "http://127.0.0.1:8086",
    influx_db: InfluxDbOpt = "safewatch",
    influx_user: InfluxUserOpt = "",
) -> None:
    """Upload the folder, the InfluxDB data source and every dashboard to Grafana."""
    from cloud.dashboards import GrafanaTarget, PushError, push

    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    token = os.environ.get(token_env, "")
    if not url or not token:
        missing = [
            what
            for what, val in (("--url / SAFEWATCH_GRAFANA_URL", url), (f"${token_env}", token))
            if not val
        ]
        err.print(
            f"Grafana not configured ({' and '.join(missing)} not set); nothing pushed.",
            style="bold red",
        )
        raise typer.Exit(2)
    boards = _load(config, profiles, err)
    target = GrafanaTarget(influx_url=influx_url, influx_db=influx_db, influx_user=influx_user)
    try:
        result = push(boards, url=url, token=token, target=target)
    except PushError as exc:
        err.print(str(exc), style="bold red", markup=False)
        raise typer.Exit(1) from exc
    out.print(
        f"pushed {len(result.dashboards)} dashboard(s) to {url}: "
        f"folder {'created' if result.folder_created else 'kept'}, data source {result.datasource}",
        markup=False,
    )
