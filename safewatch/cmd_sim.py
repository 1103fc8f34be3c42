"""``safewatch sim run``: serve a site's devices, optionally playing a scenario."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge.config import ConfigError, LoadedSite, load_profiles, load_site
from simulators import (
    Scenario,
    ScenarioPlayer,
    SimulatorError,
    WholeSiteSimulator,
    load_scenario,
)

app = typer.Typer(no_args_is_help=True)

ConfigOpt = Annotated[
    Path, typer.Option("--config", help="Site YAML file (the same file the gateway reads).")
]
ScenarioOpt = Annotated[
    Path | None,
    typer.Option("--scenario", help="Scenario YAML; without one, tags hold nominal values."),
]
SpeedOpt = Annotated[
    float, typer.Option("--speed", min=0.001, help="Scenario playback speed (2.0 = twice as fast).")
]
ProfilesOpt = Annotated[
    Path | None,
    typer.Option("--profiles", help="Directory of sensor profiles (*.yaml); default: packaged."),
]
LoopOpt = Annotated[
    bool, typer.Option("--loop/--no-loop", help="Restart the scenario after its end.")
]


@app.command("run")
def run(
    config: ConfigOpt,
    scenario: ScenarioOpt = None,
    speed: SpeedOpt = 1.0,
    loop: LoopOpt = False,
    profiles: ProfilesOpt = None,
) -> None:
    """Serve every bus of the site on its host:port until SIGINT or SIGTERM."""
    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        site = load_site(config, load_profiles(profiles) if profiles else None)
        played = load_scenario(scenario, site) if scenario is not None else None
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False)
        err.print(f"{len(exc.issues)} error(s); simulator not started.", style="bold red")
        raise typer.Exit(1) from exc
    try:
        asyncio.run(_serve(site, played, speed, loop, out))
    except SimulatorError as exc:
        err.print(f"cannot start simulator: {exc}", style="bold red", markup=False)
        raise typer.Exit(1) from exc


async def _serve(
    site: LoadedSite, scenario: Scenario | None, speed: float, loop: bool, out: Console
) -> None:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stop.set)

    coils: dict[str, bool] = {}

    def show_coil(actuator_id: str, value: bool, t_ns: int) -> None:
        # the gateway may rewrite a coil every cycle: print changes only
        if coils.get(actuator_id) == value:
            return
        coils[actuator_id] = value
        active = value == site.actuator(actuator_id).active_value
        style = "bold red" if active else "green"
        state = "ACTIVE" if active else "inactive"
        out.print(f"coil {actuator_id} <- {value} ({state})", style=style, markup=False)

    sim = WholeSiteSimulator(site, on_output_write=show_coil)
    for actuator in site.config.actuators:
        coils[actuator.id] = sim.output(actuator.id)
    await sim.start()
    gc.freeze()  # the register maps live as long as the process: keep them out of every GC pass
    try:
        where = ", ".join(
            [
                f"{host}:{port} ({bus}: units {', '.join(map(str, units))})"
                for bus, host, port, units in sim.modbus.endpoints
            ]
            + [
                f"{port} (RTU line {bus} on a pty: units {', '.join(map(str, units))})"
                for bus, port, _, units in sim.modbus.lines()
            ]
            + [f"{url} ({bus}: OPC UA)" for bus, url in sim.opcua.endpoints]
            + [f"{port} ({bus}: serial line on a pty)" for bus, port in sim.serial.ports]
        )
        out.print(f"simulator ready on {where}", markup=False)
        async with asyncio.TaskGroup() as tasks:
            playing: asyncio.Task[None] | None = None
            if scenario is not None:
                player = ScenarioPlayer(sim, scenario, speed=speed, loop=loop)
                out.print(
                    f"playing scenario {scenario.name!r} ({scenario.duration_s} s"
                    f"{', looping' if loop else ''}, speed {speed})",
                    markup=False,
                )
                playing = tasks.create_task(_play(player, out), name="scenario-player")
            await stop.wait()
            if playing is not None:
                playing.cancel()
    finally:
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.remove_signal_handler(sig)
    out.print("simulator stopped", markup=False)


async def _play(player: ScenarioPlayer, out: Console) -> None:
    await player.run()
    out.print(f"scenario {player.scenario.name!r} finished; holding its last values", markup=False)
