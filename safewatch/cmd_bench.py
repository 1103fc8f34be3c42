"""``safewatch bench NAME``: each benchmark prints one JSON object as its last line."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("alarm-latency")
def alarm_latency(
    poll_ms: Annotated[int, typer.Option("--poll-ms", min=50, help="Sensor poll period.")] = 500,
    trips: Annotated[int, typer.Option("--trips", min=1, help="Number of cut trips.")] = 100,
    background_tags: Annotated[
        int,
        typer.Option(
            "--background-tags", min=0, help="Other tags polled every 1 s on a second bus."
        ),
    ] = 0,
    uplink: Annotated[
        str, typer.Option("--uplink", help="'up' (private Mosquitto) or 'down' (no broker).")
    ] = "up",
    lanes: Annotated[
        int,
        typer.Option(
            "--lanes",
            min=1,
            help="Methane tags, each with its own breaker, tripping"
            " concurrently (1,000 trips in seconds).",
        ),
    ] = 1,
    as_deployed: Annotated[
        bool,
        typer.Option(
            "--as-deployed/--all-nice-0",
            help="Gateway at the shipped unit's Nice=-10 and the simulated plant at nice -5 "
            "(root only; else all at 0), or everything at nice 0.",
        ),
    ] = True,
) -> None:
    """Simulator crossing 1.5 % CH4 -> power-cut coil written (p50/p99/max over trips), and
    react time inside the gateway (over-limit reading -> coil write)."""
    from bench._harness import emit
    from bench.alarm_latency import run

    if uplink not in ("up", "down"):
        raise typer.BadParameter("--uplink must be 'up' or 'down'")
    typer.echo(
        f"alarm-latency: {trips} trips on {lanes} lane(s) at poll {poll_ms} ms, "
        f"{background_tags} background tags, uplink {uplink} (gateway as a child process)"
    )
    emit(
        run(
            poll_ms=poll_ms,
            trips=trips,
            background_tags=background_tags,
            uplink=uplink,
            lanes=lanes,
            as_deployed=as_deployed,
        )
    )


@app.command("heatmap")
def heatmap(
    units: Annotated[int, typer.Option("--units", min=10, help="Risk units.")] = 1000,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Timed recomputations.")] = 30,
) -> None:
    """Live heatmap recomputation (factors from the database, grading, history) for N units."""
    from bench._harness import emit
    from bench.heatmap import run

    typer.echo(f"heatmap: {units} risk units, {rounds} recomputations (SQLite store)")
    emit(run(units=units, rounds=rounds))


@app.command("api")
def api(
    rate: Annotated[float, typer.Option("--rate", min=1, help="Requests per second.")] = 500.0,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="Per phase.")] = 5.0,
    units: Annotated[int, typer.Option("--units", min=10, help="Risk units.")] = 1000,
    hazards: Annotated[int, typer.Option("--hazards", min=0, help="Hazards stored.")] = 2000,
) -> None:
    """p99 of the hazard list and the heatmap at a fixed request rate, load from this process
    and the API in a child process; /health at the same rate is the baseline."""
    from bench._harness import emit
    from bench.api import run

    typer.echo(
        f"api: {rate:g} requests/s for {seconds:g} s per phase (health, hazard list, heatmap); "
        f"{units} risk units, {hazards} hazards, SQLite store, one uvicorn worker"
    )
    emit(run(rate=rate, seconds=seconds, units=units, hazards=hazards))


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


DevicesOpt = Annotated[int, typer.Option("--devices", min=1, help="Devices (one TCP port each).")]
TagsOpt = Annotated[int, typer.Option("--tags", min=1, max=30_000, help="float32 tags per device.")]
PollOpt = Annotated[int, typer.Option("--poll-ms", min=50, help="Poll period of every device.")]
DurationOpt = Annotated[float, typer.Option("--duration", min=1.0, help="Measured seconds.")]
NiceOpt = Annotated[
    int,
    typer.Option(
        "--nice",
        min=-20,
        max=19,
        help="The gateway's niceness (default: the shipped unit's, -10, where allowed).",
    ),
]


@app.command("modbus")
def modbus(
    devices: DevicesOpt = 20,
    tags: TagsOpt = 50,
    poll_ms: PollOpt = 100,
    duration: DurationOpt = 20.0,
    nice: NiceOpt = -10,
) -> None:
    """End to end values/s (poll -> decode -> quality -> rules -> uplink buffer) per CPU-second."""
    from bench._harness import emit
    from bench.gateway import run_gateway

    typer.echo(
        f"modbus: {devices} devices x {tags} float tags every {poll_ms} ms "
        f"(simulator and gateway as child processes, gateway CPU from /proc)"
    )
    from bench.gateway import decode_baseline, timer_floor

    result = run_gateway(
        devices=devices, tags=tags, poll_ms=poll_ms, duration_s=duration, nice=nice
    )
    # same-run baseline for the jitter: the machine's wake-up lag with no gateway at all
    floor = timer_floor(poll_ms / 1000, devices, nice=nice)
    emit({**{k: result[k] for k in (
        "tags_per_s", "cpu_cores_used", "tags_per_cpu_s", "period_jitter_p99_ms",
        "offered_per_s", "devices", "tags", "poll_ms", "duration_s", "skipped_polls",
        "sim_cpu_cores_used", "rss_mb", "gateway_processes", "gateway_nice",
    )}, **floor, **decode_baseline()})  # fmt: skip


@app.command("overload")
def overload(
    devices: DevicesOpt = 100,
    tags: TagsOpt = 50,
    poll_ms: PollOpt = 50,
    safety_devices: Annotated[
        int, typer.Option("--safety-devices", min=0, help="Devices with methane (safety) tags.")
    ] = 10,
    safety_poll_ms: Annotated[
        int, typer.Option("--safety-poll-ms", min=50, help="Poll period of safety devices.")
    ] = 1000,
    duration: DurationOpt = 60.0,
    nice: NiceOpt = -10,
) -> None:
    """Offer far more than the gateway can poll: delivered, memory, safety period, skips."""
    from bench._harness import emit
    from bench.gateway import run_gateway

    typer.echo(
        f"overload: {devices} devices x {tags} tags every {poll_ms} ms "
        f"({safety_devices} safety devices every {safety_poll_ms} ms) for {duration} s"
    )
    result = run_gateway(
        devices=devices,
        tags=tags,
        poll_ms=poll_ms,
        duration_s=duration,
        safety_devices=safety_devices,
        safety_poll_ms=safety_poll_ms,
        rss_every_s=5.0,
        nice=nice,
    )
    result["delivered_per_s"] = result["tags_per_s"]
    emit({k: result[k] for k in (
        "offered_per_s", "delivered_per_s", "rss_growth_mb", "safety_period_p99_ms",
        "skipped_polls", "cpu_cores_used", "rss_mb", "rss_max_mb", "duration_s",
        "uplink_dropped", "sim_cpu_cores_used", "gateway_processes", "gateway_nice",
    )})  # fmt: skip


@app.command("gateway-memory")
def gateway_memory(
    devices: DevicesOpt = 100,
    tags: TagsOpt = 100,
    poll_ms: PollOpt = 1000,
    duration: DurationOpt = 20.0,
    nice: NiceOpt = -10,
) -> None:
    """Resident memory of a gateway polling devices x tags (default 10,000 tags)."""
    from bench._harness import emit
    from bench.gateway import run_gateway

    typer.echo(f"gateway-memory: {devices * tags} tags every {poll_ms} ms")
    result = run_gateway(
        devices=devices, tags=tags, poll_ms=poll_ms, duration_s=duration, nice=nice
    )
    keys = (
        "rss_mb", "tags", "rss_max_mb", "rss_start_mb", "tags_per_s", "cpu_cores_used",
        "gateway_processes", "gateway_nice",
    )  # fmt: skip
    emit({k: result[k] for k in keys})


@app.command("rtu")
def rtu(
    duration: Annotated[
        float, typer.Option("--duration", min=1.0, help="Seconds per baud.")
    ] = 10.0,
    units: Annotated[int, typer.Option("--units", min=1, max=247, help="Slaves on the line.")] = 4,
) -> None:
    """Share of an RTU line's capacity used at 9,600 and 115,200 baud (paced pty null modem)."""
    from bench._harness import emit
    from bench.gateway import run_rtu

    typer.echo(f"rtu: {units} units, 100-register reads back to back, {duration} s per baud rate")
    emit(run_rtu(duration_s=duration, units=units))


@app.command("ingest")
def ingest(
    points: Annotated[
        int, typer.Option("--points", min=1000, help="Points in the backlog.")
    ] = 300_000,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=10_000, help="Points per message.")
    ] = 500,
    gateways: Annotated[int, typer.Option("--gateways", min=1, help="Gateways publishing.")] = 4,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=8, help="Ingest processes (shared subscription).")
    ] = 1,
    influx_url: Annotated[
        str, typer.Option("--influx-url", help="InfluxDB under test (fresh databases are made).")
    ] = "http://127.0.0.1:8086",
) -> None:
    """Cloud ingest -> InfluxDB points/s end to end, beside raw line-protocol writes (same run)."""
    from bench._harness import emit
    from bench.ingest import run

    typer.echo(
        f"ingest: {points} points in messages of {batch} from {gateways} gateways, "
        f"{workers} ingest process(es), InfluxDB {influx_url}"
    )
    emit(run(points=points, batch=batch, gateways=gateways, workers=workers, influx_url=influx_url))


@app.command("ingest-cpu")
def ingest_cpu(
    points: Annotated[int, typer.Option("--points", min=1000, help="Points to process.")] = 300_000,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=10_000, help="Points per message.")
    ] = 500,
) -> None:
    """The cloud ingest's own cost per point (no broker, InfluxDB answering at once)."""
    from bench._harness import emit
    from bench.ingest_cpu import run

    typer.echo(f"ingest-cpu: {points} points in messages of {batch}, SQLite store, no InfluxDB")
    emit(run(points=points, batch=batch))


@app.command("inference")
def inference(
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.5, help="Batch-64 timing per model.")
    ] = 3.0,
) -> None:
    """Edge inference runner vs bare InferenceSession.run (overhead, windows/s, p99)."""
    from bench._harness import emit
    from bench.inference import run

    typer.echo(f"inference: shipped models, batch 1 and batch 64, {seconds:g} s per model")
    emit(run(seconds=seconds))


@app.command("opcua")
def opcua(
    nodes: Annotated[
        int, typer.Option("--nodes", min=10, help="Variables on the server(s).")
    ] = 2000,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="Length of each phase.")] = 10,
    churn_hz: Annotated[
        float, typer.Option("--churn-hz", min=0.1, help="Server value changes/s per variable.")
    ] = 5,
    servers: Annotated[
        int,
        typer.Option(
            "--servers", min=1, help="Server processes the nodes are spread over (a bus each)."
        ),
    ] = 1,
    max_nodes_per_read: Annotated[
        int, typer.Option("--max-nodes-per-read", min=1, help="Nodes in one Read request.")
    ] = 500,
    reads_in_flight: Annotated[
        int, typer.Option("--reads-in-flight", min=1, help="Read requests sent at once.")
    ] = 4,
    publish_requests: Annotated[
        int,
        typer.Option("--publish-requests", min=1, help="PublishRequests kept outstanding."),
    ] = 3,
    publishing_ms: Annotated[
        float, typer.Option("--publishing-ms", min=10, help="Subscription publishing interval.")
    ] = 50,
) -> None:
    """OPC UA driver: batched-read values/s (asyncua baseline) and subscription notifications/s,
    with the servers' CPU."""
    from bench._harness import emit
    from bench.opcua import run

    typer.echo(
        f"opcua: {nodes} nodes on {servers} server(s); {seconds} s batched reads (driver, then "
        f"asyncua read_values), {seconds} s subscription with every value changing "
        f"{churn_hz}/s (servers in child processes)"
    )
    emit(
        run(
            nodes=nodes,
            seconds=seconds,
            churn_hz=churn_hz,
            servers=servers,
            max_nodes_per_read=max_nodes_per_read,
            reads_in_flight=reads_in_flight,
            publish_requests=publish_requests,
            publishing_ms=publishing_ms,
        )
    )
