"""``safewatch cloud ...``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

import wire
from cloud import CloudService, CloudSettings, IngestService, migrations
from cloud.commands import CommandSigner
from cloud.ingest import TimeWindow
from cloud.risk import RiskFileError, load_risk_file
from cloud.service import run_event_loop
from cloud.storage import InfluxError, InfluxV1Writer, Store, StoreError

app = typer.Typer(no_args_is_help=True)


def sqlite_parent(db_url: str) -> None:
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
    accept_past_s: float = typer.Option(
        30 * 86_400.0,
        help="Oldest timestamp accepted, in seconds before receipt (the longest gateway "
        "outage to bridge); older messages become dead letters. 0: no limit.",
    ),
    accept_future_s: float = typer.Option(
        300.0, help="Newest timestamp accepted, in seconds after receipt (clock skew). 0: no limit."
    ),
    receive_maximum: int = typer.Option(
        256, min=1, max=65535, help="MQTT v5 Receive Maximum: unacknowledged messages in flight."
    ),
    mqtt_username: str | None = typer.Option(
        None, help="Broker account of the ingest (read-only; `safewatch broker init`)."
    ),
    mqtt_password_env: str = typer.Option(
        "SAFEWATCH_MQTT_PASSWORD", help="Environment variable holding the broker password."
    ),
    mqtt_password_file: str | None = typer.Option(
        None, help="File holding the broker password (first line); wins over the variable."
    ),
    mqtt_tls: bool = typer.Option(False, help="TLS to the broker (system CAs by default)."),
    mqtt_ca_file: str | None = typer.Option(
        None, help="CA certificate(s) that signed the broker's certificate (implies TLS)."
    ),
    mqtt_cert_file: str | None = typer.Option(None, help="Client certificate (implies TLS)."),
    mqtt_key_file: str | None = typer.Option(None, help="Client certificate's key."),
    command_key_file: str | None = typer.Option(
        None,
        help="Ed25519 key signing commands to gateways (`safewatch broker command-key`); "
        "without it the API's command route answers 503.",
    ),
    commander_username: str = typer.Option(
        "safewatch-commander", help="Broker account that sends commands."
    ),
    commander_password_file: str | None = typer.Option(
        None, help="File holding the commander account's password."
    ),
    commander_password_env: str = typer.Option(
        "SAFEWATCH_COMMANDER_PASSWORD", help="Variable holding it (if no file)."
    ),
    evidence_dir: str = typer.Option(
        "var/evidence", help="Directory of hazard evidence files (named by SHA-256)."
    ),
    risk_file: str | None = typer.Option(
        None, help="Risk units (areas, LEC / 5x5 assessments) for the heatmap, e.g. site.risk.yaml."
    ),
    sensor_offline_min: float = typer.Option(
        10.0,
        min=0.1,
        help="Minutes a monitoring sensor (in fault) or a gateway (offline) may stay blind "
        "before an automatic hazard is opened.",
    ),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Run MQTT ingest, the InfluxDB writer and the HTTP API until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # cloud.migrations logs the upgrade
    sqlite_parent(db_url)
    try:
        mqtt_password = wire.read_secret(
            mqtt_password_file,
            os.environ.get(mqtt_password_env),
        )
        commander_password = wire.read_secret(
            commander_password_file, os.environ.get(commander_password_env)
        )
    except wire.TransportError as secret_error:
        typer.echo(f"error: {secret_error}", err=True)
        raise typer.Exit(2) from secret_error
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
        accept_past_s=accept_past_s or None,
        accept_future_s=accept_future_s or None,
        receive_maximum=receive_maximum,
        mqtt_username=mqtt_username,
        mqtt_password=mqtt_password,
        mqtt_tls=mqtt_tls,
        mqtt_ca_file=mqtt_ca_file,
        mqtt_cert_file=mqtt_cert_file,
        mqtt_key_file=mqtt_key_file,
        command_key_file=command_key_file,
        commander_username=commander_username,
        commander_password=commander_password,
        evidence_dir=evidence_dir,
        risk_file=risk_file,
        sensor_offline_s=sensor_offline_min * 60,
    )

    def ready(service: CloudService) -> None:
        base = service.api_url
        typer.echo(f"cloud ready: API {base}  health {base}/health  alarms {base}/api/v1/alarms")
        scheme = "mqtts" if service.ingest.tls_context is not None else "mqtt"
        typer.echo(f"  ingest from {scheme}://{mqtt_host}:{mqtt_port}, InfluxDB {influx_url}")

    try:  # unreadable TLS or key files: say which, before anything starts
        if mqtt_tls or mqtt_ca_file or mqtt_cert_file:
            wire.client_tls_context(mqtt_ca_file, mqtt_cert_file, mqtt_key_file)
        if command_key_file is not None:
            CommandSigner(command_key_file)
        if risk_file is not None:
            load_risk_file(Path(risk_file))
    except (wire.TransportError, RiskFileError) as tls_error:
        typer.echo(f"error: {tls_error}", err=True)
        raise typer.Exit(2) from tls_error

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
        run_event_loop(main())
    except* RuntimeError as group_error:
        for exc in group_error.exceptions:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("cloud stopped")


@app.command("jetstream-worker")
def jetstream_worker(
    nats_servers: Annotated[
        list[str], typer.Option("--nats", help="NATS server URL (repeat for each cluster node).")
    ],
    influx_url: str = typer.Option("http://127.0.0.1:8086", help="InfluxDB base URL."),
    influx_db: str = typer.Option("safewatch", help="InfluxDB database."),
    db_url: str = typer.Option(
        "sqlite:///var/safewatch-cloud.db", help="SQLAlchemy URL (sqlite or postgresql+psycopg)."
    ),
    durable: str = typer.Option("safewatch-ingest", help="Durable consumer the workers share."),
    mqtt_listeners: Annotated[
        list[str] | None,
        typer.Option(
            "--mqtt",
            help="HOST:PORT of a node's MQTT listener (repeatable): lets the worker have "
            "nats-server create its $MQTT_msgs stream before any gateway connects.",
        ),
    ] = None,
    ack_wait_s: float = typer.Option(
        60.0, help="Seconds before a message a worker holds goes to another worker."
    ),
    accept_past_s: float = typer.Option(30 * 86_400.0, help="As for 'cloud run' (0: no limit)."),
    accept_future_s: float = typer.Option(300.0, help="As for 'cloud run' (0: no limit)."),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """An ingest worker on a NATS JetStream cluster (gateways publish MQTT 3.1.1 to NATS).

    Run several: they share one durable consumer. No HTTP API here; 'cloud run' serves it.
    """
    from cloud.jetstream import JetStreamIngest

    mqtt: list[tuple[str, int]] = []
    for listener in mqtt_listeners or []:
        host, _, port = listener.rpartition(":")
        if not host or not port.isdigit():
            typer.echo(f"error: --mqtt {listener!r}: expected HOST:PORT", err=True)
            raise typer.Exit(2)
        mqtt.append((host, int(port)))
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # cloud.migrations logs the upgrade
    sqlite_parent(db_url)
    store = _open_store(db_url)
    writer, ingest = _offline_ingest(store, influx_url, influx_db, accept_past_s, accept_future_s)
    worker = JetStreamIngest(
        nats_servers, ingest, durable=durable, ack_wait_s=ack_wait_s, mqtt=mqtt
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            try:
                await writer.ensure_database()
            except InfluxError as exc:  # the spool holds the points until it is there
                logging.getLogger(__name__).warning("InfluxDB not ready: %s", exc)
            typer.echo(f"jetstream worker: consumer {durable!r} on {', '.join(nats_servers)}")
            await worker.run()
        finally:
            await writer.aclose()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
    store.close()
    typer.echo("jetstream worker stopped")


dead_letters_app = typer.Typer(no_args_is_help=True)
app.add_typer(
    dead_letters_app,
    name="dead-letters",
    help="Messages the ingest could not use, kept with their payload and the reason.",
)

_DB_URL_HELP = "SQLAlchemy URL of the cloud database (as given to 'cloud run')."


def _offline_ingest(
    store: Store, influx_url: str, influx_db: str, accept_past_s: float, accept_future_s: float
) -> tuple[InfluxV1Writer, IngestService]:
    """The ingest's writer and handler for a process that feeds it itself, not from the
    MQTT broker ('jetstream-worker', 'dead-letters replay'). InfluxDB credentials come from
    the same variables 'cloud run' reads by default; a window bound of 0 means no limit."""
    writer = InfluxV1Writer(
        influx_url,
        influx_db,
        username=os.environ.get("SAFEWATCH_INFLUX_USERNAME") or None,
        password=os.environ.get("SAFEWATCH_INFLUX_PASSWORD") or None,
    )
    window = TimeWindow(accept_past_s or None, accept_future_s or None)
    # No broker: the MQTT address is never used by process()/replay().
    ingest = IngestService("127.0.0.1", 1, store, writer, ts_window=window)
    return writer, ingest


def _open_store(db_url: str) -> Store:
    try:
        store = Store(db_url)
        migrations.upgrade(store.engine)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    return store


@dead_letters_app.command("list")
def dead_letters_list(
    db_url: str = typer.Option("sqlite:///var/safewatch-cloud.db", help=_DB_URL_HELP),
    reason: str | None = typer.Option(None, help="Only this reason (malformed, bad_topic, ...)."),
    limit: int = typer.Option(100, min=0, help="At most this many, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List dead letters: id, time, reason, topic, detail and the payload's start."""
    store = _open_store(db_url)
    try:
        letters = store.dead_letters(limit=limit, reason=reason)
        total = store.dead_letter_count()
    finally:
        store.close()
    for d in letters:
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "id": d.id,
                        "received_at": d.received_at.isoformat(),
                        "reason": d.reason,
                        "topic": d.topic,
                        "detail": d.detail,
                        "payload": d.payload.decode("utf-8", "backslashreplace"),
                    }
                )
            )
        else:
            preview = d.payload[:80].decode("utf-8", "backslashreplace")
            typer.echo(
                f"{d.id}  {d.received_at:%Y-%m-%dT%H:%M:%SZ}  {d.reason}  {d.topic}\n"
                f"    {d.detail}\n    payload ({len(d.payload)} bytes): {preview}"
            )
    if not as_json:
        typer.echo(f"{len(letters)} shown of {total} dead letters")


@dead_letters_app.command("replay")
def dead_letters_replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Dead-letter ids to replay (default: all).")
    ] = None,
    db_url: str = typer.Option("sqlite:///var/safewatch-cloud.db", help=_DB_URL_HELP),
    influx_url: str = typer.Option("http://127.0.0.1:8086", help="InfluxDB base URL."),
    influx_db: str = typer.Option("safewatch", help="InfluxDB database."),
    reason: str | None = typer.Option(None, help="Only dead letters with this reason."),
    accept_past_s: float = typer.Option(
        0.0, help="Oldest timestamp accepted, seconds before now (0: no limit)."
    ),
    accept_future_s: float = typer.Option(
        0.0, help="Newest timestamp accepted, seconds after now (0: no limit)."
    ),
    batch: int = typer.Option(500, min=1, help="Dead letters per transaction."),
) -> None:
    """Feed dead letters through the ingest's handler again (after a fix or a config change).

    A replayed message that is stored now leaves the dead letters; one that fails
    again stays, with the new reason. While InfluxDB is down its points go to the
    spool, which a running 'cloud run' drains.
    """
    store = _open_store(db_url)
    writer, ingest = _offline_ingest(store, influx_url, influx_db, accept_past_s, accept_future_s)

    async def main() -> tuple[int, int]:
        replayed = failed = 0
        try:
            # Those that fail again come back under new ids: stop at today's newest.
            newest = store.newest_dead_letter_id()
            last_id = 0
            while True:
                letters = store.dead_letters(
                    limit=batch, reason=reason, ids=ids or None, after_id=last_id, up_to_id=newest
                )
                if not letters:
                    return replayed, failed
                last_id = letters[-1].id
                failed += await ingest.replay(letters)
                replayed += len(letters)
        finally:
            await writer.aclose()

    try:
        replayed, failed = asyncio.run(main())
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(
        f"replayed {replayed} dead letters: {replayed - failed} stored, {failed} dead letters again"
    )


db_app = typer.Typer(no_args_is_help=True)
app.add_typer(
    db_app,
    name="db",
    help="The cloud database's schema (Alembic revisions shipped with SafeWatch).",
)


def _schema_store(db_url: str) -> Store:
    try:
        sqlite_parent(db_url)
        return Store(db_url)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade(
    db_url: str = typer.Option("sqlite:///var/safewatch-cloud.db", help=_DB_URL_HELP),
    revision: str = typer.Option("head", help="Target revision (default: the newest)."),
) -> None:
    """Create or upgrade every service's tables (the cloud service also does this at start)."""
    store = _schema_store(db_url)
    try:
        before = migrations.current(store.engine)
        migrations.upgrade(store.engine, revision)
        after = migrations.current(store.engine)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"database {before or 'empty'} -> {after} (head {migrations.head()})")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base': drop every table)."),
    db_url: str = typer.Option("sqlite:///var/safewatch-cloud.db", help=_DB_URL_HELP),
) -> None:
    """Step the schema back to REVISION (data in dropped tables is lost)."""
    store = _schema_store(db_url)
    try:
        migrations.downgrade(store.engine, revision)
        after = migrations.current(store.engine)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"database at {after or 'base'}")


@db_app.command("check")
def db_check(
    db_url: str = typer.Option("sqlite:///var/safewatch-cloud.db", help=_DB_URL_HELP),
) -> None:
    """Exit 0 when the database is at the newest revision and matches the models exactly."""
    store = _schema_store(db_url)
    try:
        at = migrations.current(store.engine)
        diff = migrations.schema_diff(store.engine)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    head = migrations.head()
    typer.echo(f"database at {at or 'no revision'}, head {head}")
    for item in diff:
        typer.echo(f"  differs: {item}")
    if at != head or diff:
        raise typer.Exit(1)
