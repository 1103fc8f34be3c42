"""``safewatch edge run``: run one edge gateway until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import wire
from edge.commands import lockout_rules, overdue, read_records
from edge.config import (
    ConfigError,
    ConfigIssue,
    LoadedSite,
    buffer_path_problem,
    load_profiles,
    load_site,
)
from edge.gateway import Gateway, command_listener, mqtt_access
from edge.latches import state_path_for, submit_command
from edge.safety_process import SafetyProcessError

app = typer.Typer(no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", help="Site YAML file.")]
BufferOpt = Annotated[
    Path | None, typer.Option("--buffer", help="Buffer database (default: the site's buffer.path).")
]
HostOpt = Annotated[str | None, typer.Option("--mqtt-host", help="Broker host (default: site).")]
PortOpt = Annotated[int | None, typer.Option("--mqtt-port", help="Broker port (default: site).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
HealthOpt = Annotated[
    int | None,
    typer.Option(
        "--health-port",
        help="Serve /metrics and /status on this port (default: the site's gateway.health_port).",
    ),
]
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
    health_port: HealthOpt = None,
    stats_out: Annotated[
        Path | None,
        typer.Option("--stats-out", help="At exit, write counters and react times (JSON)."),
    ] = None,
    safety_process: Annotated[
        bool,
        typer.Option(
            "--safety-process/--safety-thread",
            help="Poll the safety buses, judge their rules and write the actuators in a "
            "process of their own (default), or on a thread of the gateway's process.",
        ),
    ] = True,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="ONNX models for the site's inference section "
            "(default: the site's inference.models_dir, else the shipped models).",
        ),
    ] = None,
) -> None:
    """Poll the site's devices, trip interlocks, buffer and forward to MQTT."""
    err = Console(stderr=True)
    try:
        site = load_site(config, load_profiles(profiles) if profiles else None)
        if models_dir is not None:
            site = with_models_dir(site, models_dir)
        if buffer is not None and (problem := buffer_path_problem(buffer)) is not None:
            raise ConfigError([ConfigIssue("--buffer", None, None, "buffer", problem)])
        try:
            # TLS, secret and command key files readable, before anything starts
            command_listener(site, mqtt_access(site), "127.0.0.1", 1883)
        except wire.TransportError as exc:
            raise ConfigError([ConfigIssue(str(config), None, None, "mqtt", str(exc))]) from exc
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
    try:
        gateway = Gateway(
            site,
            buffer_path=buffer,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            health_port=health_port,
            safety_process=safety_process,
        )
    except ConfigError as exc:  # the inference section: unknown or refused model
        for issue in exc.issues:
            err.print(str(issue), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.issues)} error(s); configuration rejected.", style="bold red")
        raise typer.Exit(1) from exc
    # the modules, site model, rules and plans loaded so far live as long as the process:
    # out of the cyclic collector's sight, a full collection no longer walks them (each
    # walk stalled the event loop 200-260 ms at 1,000 tags on the dev VM: polls skipped)
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(_serve(gateway))
    except* SafetyProcessError as group:
        for failure in group.exceptions:
            err.print(f"safety process: {failure}", markup=False, highlight=False, soft_wrap=True)
        err.print("the gateway does not run without its safety process.", style="bold red")
        raise typer.Exit(1) from None
    if stats_out is not None:
        # decision -> coil written, per actuator going active (benchmarks read this)
        react_ms, react_at = gateway.react_times()
        stats = {"counters": gateway.counters(), "react_ms": react_ms, "react_at": react_at}
        stats_out.write_text(json.dumps(stats), encoding="utf-8")
    if gateway.unsaved_alarms:
        # each one was logged at CRITICAL; a supervisor must see this run failed
        err.print(
            f"{len(gateway.unsaved_alarms)} alarm(s) could not be stored at shutdown "
            "(buffer unusable); see the CRITICAL log lines.",
            style="bold red",
        )
        raise typer.Exit(3)


def with_models_dir(site: LoadedSite, models_dir: Path) -> LoadedSite:
    """``site`` with its inference section reading models from ``models_dir``."""
    inference = site.config.inference.model_copy(update={"models_dir": str(models_dir)})
    return LoadedSite(
        source=site.source,
        config=site.config.model_copy(update={"inference": inference}),
        profiles=site.profiles,
    )


def _site_or_exit(config: Path) -> LoadedSite:
    err = Console(stderr=True)
    try:
        return load_site(config)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.issues)} error(s); configuration rejected.", style="bold red")
        raise typer.Exit(1) from exc


def _state_of(site: LoadedSite, buffer: Path | None) -> Path:
    return state_path_for(buffer or site.config.buffer.path, site.config.state.path)


ByOpt = Annotated[str, typer.Option("--by", help="Who does it (recorded).")]
WhyOpt = Annotated[str, typer.Option("--why", help="Why (recorded in the audit trail).")]


@app.command("reset")
def reset(
    rule: Annotated[str, typer.Argument(help="Rule id (a methane tag's name).")],
    config: ConfigOpt,
    buffer: BufferOpt = None,
    by: ByOpt = "",
    why: WhyOpt = "",
) -> None:
    """Reset an over-range latch (catalytic methane at full scale); the cut then holds
    until the reading is below restore for the restore hold."""
    site = _site_or_exit(config)
    path = submit_command(
        _state_of(site, buffer), {"action": "reset", "rule": rule, "by": by, "why": why}
    )
    typer.echo(f"reset of {rule} submitted ({path.name}); see the gateway log")


@app.command("calibrate")
def calibrate(
    tag: Annotated[str, typer.Argument(help="Tag under calibration (调校).")],
    config: ConfigOpt,
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, max=1440)] = 30,
    end: Annotated[bool, typer.Option("--end", help="End the calibration now.")] = False,
    buffer: BufferOpt = None,
    by: ByOpt = "",
    why: WhyOpt = "",
) -> None:
    """Declare a sensor in calibration: readings and alarms are marked; cuts still happen."""
    site = _site_or_exit(config)
    if tag not in {t.name for _, t in site.tags()}:
        typer.echo(f"unknown tag {tag!r} in {config}", err=True)
        raise typer.Exit(1)
    command: dict[str, object] = (
        {"action": "end_calibration", "tag": tag, "by": by, "why": why}
        if end
        else {"action": "calibrate", "tag": tag, "minutes": minutes, "by": by, "why": why}
    )
    path = submit_command(_state_of(site, buffer), command)
    typer.echo(f"{command['action']} of {tag} submitted ({path.name})")


@app.command("lockout-test")
def lockout_test(
    rule: Annotated[str, typer.Argument(help="Lockout rule id (fan lockout or methane tag).")],
    config: ConfigOpt,
    buffer: BufferOpt = None,
    by: ByOpt = "",
    why: WhyOpt = "",
) -> None:
    """Run a recorded lockout test: trip the rule, observe the cut and the feedback."""
    site = _site_or_exit(config)
    if rule not in lockout_rules(site):
        typer.echo(f"{rule!r} is not a lockout of {config}: {lockout_rules(site)}", err=True)
        raise typer.Exit(1)
    path = submit_command(
        _state_of(site, buffer), {"action": "lockout_test", "rule": rule, "by": by, "why": why}
    )
    typer.echo(f"lockout test of {rule} submitted ({path.name}); `safewatch edge lockout-tests`")


@app.command("lockout-tests")
def lockout_tests(config: ConfigOpt, buffer: BufferOpt = None) -> None:
    """Recorded lockout tests and the overdue ones (exit 2 when any is overdue)."""
    site = _site_or_exit(config)
    state = _state_of(site, buffer)
    records = read_records(state)
    for rec in records:
        typer.echo(json.dumps(asdict(rec), sort_keys=True))
    late = overdue(site, records, time.time_ns())
    for rule, last in late.items():
        typer.echo(f"OVERDUE {rule}: " + ("never tested" if last is None else f"last ok {last}"))
    if late:
        raise typer.Exit(2)


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


UrlOpt = Annotated[
    str,
    typer.Option("--url", help="The gateway's health address (edge run --health-port)."),
]


@app.command("status")
def status(url: UrlOpt = "http://127.0.0.1:9108", as_json: bool = False) -> None:
    """Show a running gateway's buses and devices: latency, errors, last good read, breaker."""
    import httpx
    from rich.table import Table

    err = Console(stderr=True)
    try:
        response = httpx.get(url.rstrip("/") + "/status", timeout=5)
        response.raise_for_status()
        snap = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        err.print(f"cannot read {url}/status: {exc}", markup=False)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(snap, indent=2, sort_keys=True))
        return
    # piped or captured: wide enough that no column is cut
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    now_ns = int(snap.get("ts_ns") or time.time_ns())
    out.print(f"gateway {snap.get('gateway')} (site {snap.get('site')})", markup=False)
    buses = Table(
        "bus", "reads ok", "failed", "skipped", "latency ms", "lag ms", "writes ok/failed"
    )
    for bus in snap.get("buses", []):
        buses.add_row(
            bus["bus"],
            str(bus["reads_ok"]),
            str(bus["reads_failed"]),
            str(bus["skipped"]),
            _num(bus["latency_avg_ms"]),
            _num(bus["lag_ms"]),
            f"{bus['writes_ok']}/{bus['writes_failed']}",
        )
    out.print(buses)
    devices = Table(
        "device", "bus", "state", "breaker", "ok", "errors", "skipped", "latency ms",
        "period ms", "last good",
    )  # fmt: skip
    for dev in snap.get("devices", []):
        last = dev["last_good_ns"]
        age = "never" if last is None else f"{(now_ns - last) / 1e9:.1f} s ago"
        state = "OK"
        if dev["breaker"] != "closed":
            state = "DEAD"
        elif dev["cannot_meet_period"]:
            state = "LATE"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(dev["errors"].items())) or "-"
        devices.add_row(
            dev["device"],
            dev["bus"],
            state,
            dev["breaker"],
            str(dev["ok"]),
            errors,
            str(dev["skipped"]),
            _num(dev["latency_avg_ms"]),
            f"{_num(dev['interval_avg_ms'])} / {dev['period_ms']}",
            age,
        )
    out.print(devices)
    counters = snap.get("counters", {})
    out.print(", ".join(f"{k} {v}" for k, v in sorted(counters.items())), markup=False)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
