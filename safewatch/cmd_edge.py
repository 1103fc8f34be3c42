"""``safewatch edge run``: run one edge gateway until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge.config import ConfigError, ConfigIssue, buffer_path_problem, load_profiles, load_site
from edge.gateway import Gateway

app = typer.Typer(no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", help="Site YAML file.")]
BufferOpt = Annotated[
    Path | None, typer.Option("--buffer", help="Buffer database (default: the site's buffer.path).")
]
HostOpt = Annotated[str | None, typer.Option("--mqtt-host", help="Broker host (default: site).")]
PortOpt = Annotated[int | None, typer.Option("--mqtt-port", help="Broker port (default: site).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
ProfilesOpt = Annotated[
    Path | None,
    typer.Option("--profiles", help="Directory of sensor profiles (*.yaml); default: packaged."),
]


@app.command("run")
def run(
    config: ConfigOpt,
    buffer: BufferOpt = None,
    mqtt_host: HostOpt = None,
    mqtt_port: PortOpt = None,
    verbose: VerboseOpt = False,
    profiles: ProfilesOpt = None,
) -> None:
    """Poll the site's devices, trip interlocks, buffer and forward to MQTT."""
    err = Console(stderr=True)
    try:
        site = load_site(config, load_profiles(profiles) if profiles else None)
        if buffer is not None and (problem := buffer_path_problem(buffer)) is not None:
            raise ConfigError([ConfigIssue("--buffer", None, None, "buffer", problem)])
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.issues)} error(s); configuration rejected.", style="bold red")
        raise typer.Exit(1) from exc
    # plain one-line records: readable on a console and greppable in a log file
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("pymodbus", "mqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    gateway = Gateway(site, buffer_path=buffer, mqtt_host=mqtt_host, mqtt_port=mqtt_port)
    asyncio.run(_serve(gateway))
    if gateway.unsaved_alarms:
        # each one was logged at CRITICAL; a supervisor must see this run failed
        err.print(
            f"{len(gateway.unsaved_alarms)} alarm(s) could not be stored at shutdown "
            "(buffer unusable); see the CRITICAL log lines.",
            style="bold red",
        )
        raise typer.Exit(3)


async def _serve(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
