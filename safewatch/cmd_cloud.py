"""``safewatch cloud ...``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer
from sqlalchemy.engine import make_url

from cloud import CloudService, CloudSettings

app = typer.Typer(no_args_is_help=True)


def _sqlite_parent(db_url: str) -> None:
    """Create the directory of a SQLite database file (``sqlite:///var/x.db``)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


@app.command("run")
def run(
    mqtt_host: str = typer.Option("127.0.0.1", help="MQTT broker host."),
    mqtt_port: int = typer.Option(1883, help="MQTT broker port."),
    influx_url: str = typer.Option("http://127.0.0.1:8086", help="InfluxDB base URL."),
    influx_db: str = typer.Option("safewatch", help="InfluxDB database (bucket for 2.x)."),
    influx_username_env: str = typer.Option(
        "SAFEWATCH_INFLUX_USERNAME", help="Environment variable holding the InfluxDB user."
    ),
    influx_password_env: str = typer.Option(
        "SAFEWATCH_INFLUX_PASSWORD", help="Environment variable holding the InfluxDB password."
    ),
    influx_token_env: str = typer.Option(
        "SAFEWATCH_INFLUX_TOKEN",
        help="Environment variable holding an InfluxDB 2.x token; when set, 2.x client is used.",
    ),
    influx_org: str = typer.Option("", help="InfluxDB 2.x organisation (with a token)."),
    db_url: str = typer.Option(
        "sqlite:///var/safewatch-cloud.db", help="SQLAlchemy URL (sqlite or postgresql+psycopg)."
    ),
    host: str = typer.Option("127.0.0.1", help="API listen address."),
    port: int = typer.Option(8000, help="API listen port (0: any free port)."),
    group: str | None = typer.Option(
        None,
        help="MQTT shared-subscription group, to split the load over several ingest workers "
        "(Mosquitto 2.0 drops shared subscriptions on a broker restart; one worker without a "
        "group keeps its queued messages).",
    ),
    client_id: str | None = typer.Option(
        None,
        help="MQTT client id of this ingest worker (default <group or safewatch-ingest>-"
        "<hostname>); the broker keeps its session and queues messages while it is away. "
        "Give each worker its own.",
    ),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Run MQTT ingest, the InfluxDB writer and the HTTP API until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _sqlite_parent(db_url)
    settings = CloudSettings(
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        influx_url=influx_url,
        influx_db=influx_db,
        influx_username=os.environ.get(influx_username_env) or None,
        influx_password=os.environ.get(influx_password_env) or None,
        influx_token=os.environ.get(influx_token_env) or None,
        influx_org=influx_org,
        db_url=db_url,
        host=host,
        port=port,
        group=group,
        client_id=client_id,
    )

    def ready(service: CloudService) -> None:
        base = service.api_url
        typer.echo(f"cloud ready: API {base}  health {base}/health  alarms {base}/api/v1/alarms")
        typer.echo(f"  ingest from mqtt://{mqtt_host}:{mqtt_port}, InfluxDB {influx_url}")

    async def main() -> None:
        service = CloudService(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.request_stop)
        try:
            await service.run(on_ready=ready)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    except* RuntimeError as group_error:
        for exc in group_error.exceptions:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("cloud stopped")
