"""The cloud process: MQTT ingest, InfluxDB writer and the HTTP API in one TaskGroup.

Nothing outside is required at start: while the broker, InfluxDB or the database
is down, ``/health`` says ``degraded`` and each part retries with capped jittered
backoff. Shutdown is orderly: stop ingest, flush the writer, stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

import wire
from cloud import migrations
from cloud.api import create_app
from cloud.audit import AuditLog
from cloud.auth import Authenticator, AuthStore
from cloud.commands import CommandSender, CommandSigner
from cloud.hazards import AutoHazards, DeadlineWatch, HazardService, OfflineHazards
from cloud.ingest import IngestService, TimeWindow
from cloud.risk import RiskService
from cloud.storage import (
    InfluxError,
    InfluxV1Writer,
    InfluxV2Writer,
    PointWriter,
    Store,
    StoreError,
)
from wire.backoff import Backoff

__all__ = ["CloudService", "CloudSettings", "run_event_loop"]

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudSettings:
    """Everything ``safewatch cloud run`` needs; secrets come from the environment."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    influx_url: str = "http://127.0.0.1:8086"
    influx_db: str = "safewatch"
    influx_username: str | None = None
    influx_password: str | None = None
    influx_token: str | None = None  # set: write through the 2.x client (bucket = influx_db)
    influx_org: str = ""
    db_url: str = "sqlite:///var/safewatch-cloud.db"
    host: str = "127.0.0.1"
    port: int = 8000
    group: str | None = None  # MQTT shared-subscription group for several workers
    client_id: str | None = None  # default: <group>-<hostname>, a persistent MQTT session
    # Timestamps accepted around receive time (None: no limit on that side).
    accept_past_s: float | None = 30 * 86_400.0
    accept_future_s: float | None = 300.0
    receive_maximum: int = 256  # MQTT v5 receive window of the ingest
    access_token_ttl_s: int = 3600  # lifetime of an API access token (login)
    # The broker account (read-only ingest account) and TLS; the password is a secret:
    # from the environment or a file, never a command-line value or YAML.
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: str | None = None  # set (or mqtt_tls): TLS to the broker
    mqtt_cert_file: str | None = None  # client certificate, when the broker asks for one
    mqtt_key_file: str | None = None
    mqtt_tls: bool = False  # TLS with the system CAs when no mqtt_ca_file is given
    # Commands to gateways (POST /api/v1/gateways/{site}/{gateway}/commands): the Ed25519
    # signing key and the commander account; no key file: the route answers 503.
    command_key_file: str | None = None
    commander_username: str | None = "safewatch-commander"
    commander_password: str | None = None
    # Hazard rectification evidence (photos, documents), one file per SHA-256.
    evidence_dir: str = "var/evidence"
    # Risk units (areas, polygons, LEC / 5x5 assessments) for the heatmap; None: not configured.
    risk_file: str | None = None
    # A monitoring sensor in fault, or a gateway offline, this long opens an automatic hazard.
    sensor_offline_s: float = 600.0


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


class CloudService:
    """Owns the store, the writer, the ingest and the API server."""

    def __init__(self, settings: CloudSettings, *, writer: PointWriter | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self.writer: PointWriter = writer or _make_writer(settings)
        self.ingest = IngestService(
            settings.mqtt_host,
            settings.mqtt_port,
            self.store,
            self.writer,
            group=settings.group,
            client_id=settings.client_id,
            receive_maximum=settings.receive_maximum,
            username=settings.mqtt_username,
            password=settings.mqtt_password,
            tls_context=_tls_context(settings),
            ts_window=TimeWindow(settings.accept_past_s, settings.accept_future_s),
        )
        self.audit = AuditLog(self.store.engine)
        self.auth = Authenticator(
            AuthStore(self.store.engine), self.audit, access_ttl_s=settings.access_token_ttl_s
        )
        self.commands = (
            None
            if settings.command_key_file is None
            else CommandSender(
                CommandSigner(settings.command_key_file),
                self.audit,
                host=settings.mqtt_host,
                port=settings.mqtt_port,
                username=settings.commander_username,
                password=settings.commander_password,
                tls_context=_tls_context(settings),
            )
        )
        self.hazards = HazardService(self.store.engine, self.audit, Path(settings.evidence_dir))
        self.ingest.alarm_handlers.append(AutoHazards(self.hazards))
        # Reminders and escalations; started once the schema is there, jobs in the database.
        self.deadlines = DeadlineWatch(self.hazards)
        self.offline = OfflineHazards(
            self.hazards, after=dt.timedelta(seconds=settings.sensor_offline_s)
        )
        self.risk = (
            None
            if settings.risk_file is None
            else RiskService.from_file(
                self.store.engine, Path(settings.risk_file), store=self.store, hazards=self.hazards
            )
        )
        if self.risk is not None:  # the heatmap snapshot notes what each batch changed
            self.ingest.commit_listeners.append(self.risk.note_batch)
        # the gateways' alarm states, and their operator actions into the audit chain
        from cloud.alarm_states import AlarmMirror

        self.alarm_mirror = AlarmMirror(self.store.engine, self.audit)
        self.ingest.alarm_handlers.append(self.alarm_mirror)
        self.app = create_app(
            self.store,
            self.health,
            authenticator=self.auth,
            audit=self.audit,
            commands=self.commands,
            hazards=self.hazards,
            risk=self.risk,
        )
        self._server = _QuietServer(
            uvicorn.Config(
                self.app,
                host=settings.host,
                port=settings.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._stop = asyncio.Event()
        self._schema_ready = asyncio.Event()

    def health(self) -> dict[str, Any]:
        counters = {f"ingest_{k}": v for k, v in self.ingest.counters().items()}
        counters.update({f"influx_{k}": v for k, v in self.writer.counters().items()})
        counters["influx_spooled_pending"] = self.ingest.spool_pending
        return {
            "db": self._schema_ready.is_set() and self.store.ping(),
            "influx": self.writer.reachable,
            "mqtt": self.ingest.connected,
            "counters": counters,
        }

    def create_schema(self) -> None:
        """Every service's tables: the database upgraded to the newest Alembic revision."""
        migrations.upgrade(self.store.engine)

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    @property
    def api_url(self) -> str:
        """The API's base URL (with the real port once listening, also for port 0)."""
        port = self.settings.port
        for server in self._server.servers:
            for sock in server.sockets:
                port = sock.getsockname()[1]
                break
        return f"http://{self.settings.host}:{port}"

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (safe from a signal handler on the loop)."""
        self._stop.set()

    async def run(self, on_ready: Callable[[CloudService], None] | None = None) -> None:
        async with asyncio.TaskGroup() as tg:
            server_task = tg.create_task(self._serve(), name="http-api")
            writer_task = tg.create_task(self.writer.run(), name="influx-writer")
            setup_tasks = [
                tg.create_task(self._ensure_schema(), name="db-schema"),
                tg.create_task(self._ensure_influx_database(), name="influx-database"),
            ]
            ingest_task = tg.create_task(self._ingest_when_ready(), name="mqtt-ingest")
            setup_tasks.append(tg.create_task(self._offline_sweeps(), name="offline-hazards"))
            setup_tasks.append(tg.create_task(self._fresh_heatmap(), name="risk-heatmap"))
            announce_task = tg.create_task(self._announce(on_ready), name="announce")

            stop_task = tg.create_task(self._stop.wait(), name="stop-request")
            await asyncio.wait({stop_task, server_task}, return_when=asyncio.FIRST_COMPLETED)
            log.info("cloud shutting down")

            for task in (ingest_task, *setup_tasks):
                task.cancel()
            await asyncio.gather(ingest_task, *setup_tasks, return_exceptions=True)
            writer_task.cancel()
            await asyncio.gather(writer_task, return_exceptions=True)
            self._server.should_exit = True
            stop_task.cancel()
            announce_task.cancel()
        await self.writer.aclose()
        await asyncio.to_thread(self.deadlines.stop)
        await asyncio.to_thread(self.store.close)

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise RuntimeError(
                f"HTTP API cannot listen on {self.settings.host}:{self.settings.port}"
            ) from exc

    async def _announce(self, on_ready: Callable[[CloudService], None] | None) -> None:
        await self._server.listening.wait()
        if on_ready is not None:
            on_ready(self)

    async def _ensure_schema(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            try:
                await asyncio.to_thread(self.create_schema)
            except StoreError as exc:
                delay = backoff.next_delay()
                log.warning("database not ready (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            else:
                break
        while True:
            try:
                await asyncio.to_thread(self.deadlines.start)
            except Exception as exc:  # the job store is in the database: retry like it
                delay = backoff.next_delay()
                log.warning("hazard deadline watch not started (%s); retry in %.1fs", exc, delay)
                self.deadlines.stop()
                await asyncio.sleep(delay)
            else:
                self._schema_ready.set()
                return

    async def _ensure_influx_database(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            try:
                await self.writer.ensure_database()
            except InfluxError as exc:
                delay = backoff.next_delay()
                log.warning("InfluxDB not ready (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            else:
                return

    async def _offline_sweeps(self) -> None:
        """Open hazards for monitoring blind too long; a failed sweep is retried next time."""
        await self._schema_ready.wait()
        while True:
            try:
                await asyncio.to_thread(self.offline.sweep)
            except StoreError as exc:
                log.warning("offline-hazard sweep failed (%s); next in %.0fs", exc, self._sweep_s)
            except Exception:  # a sweep's own fault never stops the ingest and the API
                log.exception("offline-hazard sweep failed; next in %.0fs", self._sweep_s)
            await asyncio.sleep(self._sweep_s)

    async def _fresh_heatmap(self) -> None:
        """Keep the served heatmap snapshot fresh (recomputed off the request path)."""
        if self.risk is None:
            return
        await self._schema_ready.wait()
        await self.risk.keep_fresh()

    @property
    def _sweep_s(self) -> float:
        return self.offline.interval_s

    async def _ingest_when_ready(self) -> None:
        await self._schema_ready.wait()
        await self.ingest.run()


def _tls_context(settings: CloudSettings) -> ssl.SSLContext | None:
    """Raises :class:`wire.TransportError` naming an unusable file."""
    if not (settings.mqtt_tls or settings.mqtt_ca_file or settings.mqtt_cert_file):
        return None
    return wire.client_tls_context(
        settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file
    )


def _make_writer(settings: CloudSettings) -> PointWriter:
    if settings.influx_token:
        return InfluxV2Writer(
            settings.influx_url,
            token=settings.influx_token,
            org=settings.influx_org,
            bucket=settings.influx_db,
        )
    return InfluxV1Writer(
        settings.influx_url,
        settings.influx_db,
        username=settings.influx_username,
        password=settings.influx_password,
    )


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop where it is installed (a dependency on Linux and
    macOS): the API, the ingest and the heatmap refresher share one loop, and uvloop's
    costs about half as much CPU per request as asyncio's own loop. Without it (Windows),
    asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
