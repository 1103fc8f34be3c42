"""``safewatch bench NAME``: each benchmark prints one JSON object as its last line."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("alarm-latency")
def alarm_latency(
    poll_ms: Annotated[int, typer.Option("--poll-ms", min=50, help="Sensor poll period.")] = 500,
    trips: Annotated[int, typer.Option("--trips", min=1, help="Number of cut trips.")] = 100,
) -> None:
    """Simulator crossing 1.5 % CH4 -> power-cut coil written (p50/p99/max over trips)."""
    from bench._harness import emit
    from bench.alarm_latency import run

    typer.echo(f"alarm-latency: {trips} trips at poll {poll_ms} ms (gateway as a child process)")
    emit(run(poll_ms=poll_ms, trips=trips))


@app.command("uplink")
def uplink(
    points: Annotated[
        int, typer.Option("--points", min=1000, help="Points in the live phase.")
    ] = 300_000,
    backlog: Annotated[
        int, typer.Option("--backlog", min=1000, help="Points stored during the outage.")
    ] = 300_000,
    window: Annotated[int, typer.Option("--window", min=1, help="QoS 1 publishes in flight.")] = 64,
) -> None:
    """Gateway -> broker points/s at QoS 1 through the buffer, then drain after an outage."""
    from bench._harness import emit
    from bench.uplink import run

    typer.echo(
        f"uplink: {points} live points (baseline: window 1, {points // 3} points), "
        f"{backlog} backlog points (private mosquitto, QoS 1)"
    )
    emit(run(points=points, backlog=backlog, window=window))
