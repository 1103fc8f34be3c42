"""The gateway process: pollers, safety engine, durable buffer and MQTT uplink.

:meth:`Gateway.run` owns one ``asyncio.TaskGroup`` with named tasks::

    poll:<bus>           one per bus; the only task talking on that bus
    rule-ticker          lets time pass for the rules (staleness, delays, feedback)
    engineer-commands    latch resets, calibrations, lockout tests from the CLI
    alarm-writer         alarm outbox -> durable buffer
    telemetry-batcher    sample queue -> telemetry batches in the buffer
    health-reporter      device, bus and uplink health -> telemetry (edge/health_report.py)
    mqtt-publisher       buffer -> broker

The safety path (poll -> rules -> interlock -> coil write) runs inside the
poll tasks and never waits on the others. A bus with a safety-class tag or an
actuator is polled on the safety thread (``edge/fastpath.py``): its own thread
and event loop, with its own ``poll:<bus>`` tasks and ``rule-ticker:safety``
(staleness and delays of the rules that can cut or read its tags), so no task
of the main loop can queue a cut. Alarm records, write-failure alarms and
telemetry from that thread reach the main loop through thread-safe hand-offs;
latched state is still saved before the interlock acts. :meth:`Gateway.stop` shuts down in
order: stop polling, store pending alarms and telemetry, flush the buffer to
the broker within a deadline, publish status offline, disconnect.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wire
from device_drivers import Sample
from edge.actuation import ActuatorCommand, Interlock, annunciator_cause
from edge.alarm_manager import (
    ACK,
    RTN_UNACK,
    UNACK,
    AlarmActionError,
    AlarmForwarder,
    AlarmStore,
    ChatterPolicy,
    FloodDetector,
    alarm_db_path,
    alarm_key,
)
from edge.alarms import AlarmManager, AlarmOutbox
from edge.commands import EngineerCommands
from edge.config import ConfigError, ConfigIssue, LoadedSite
from edge.config._models import MqttSettings
from edge.drivers import DriverFactory, make_driver
from edge.engine import SafetyEngine
from edge.fastpath import Handoff, SafetyThread, UplinkHandoff
from edge.health import HealthServer
from edge.health_report import HealthReporter, HealthSnapshot
from edge.latches import LatchStore, main_state_path, read_commands, state_path_for
from edge.polling import BusPoller
from edge.remote_commands import CommandListener, CommandVerifier, load_public_keys
from edge.rules import CompoundCondition, Condition, FeedbackCheck, Level, Rule, Transition
from edge.safety_link import (
    Annunciate,
    Audit,
    ChildMessage,
    Gap,
    Notice,
    Ready,
    Record,
    Stats,
    Telemetry,
    WriteFailed,
    WriteRecovered,
    samples_of,
)
from edge.safety_link import Command as SafetyCommand
from edge.safety_process import ChildSpec, SafetyProcess, lost_safety_process_writes
from edge.uplink.batcher import AlarmWriter, SampleQueue, TelemetryBatcher
from edge.uplink.buffer import StoreAndForwardBuffer
from edge.uplink.publisher import MqttPublisher

if TYPE_CHECKING:
    from edge.alarm_notify import Notifier
    from edge.inference import InferenceRunner, WaveformReader

__all__ = ["DriverFactory", "Gateway", "MqttAccess", "command_listener", "mqtt_access"]

# Cloud commands handed to EngineerCommands (verified and signed first, see
# edge.remote_commands); acknowledge/shelve/config_push have no gateway handler yet.
ENGINEER_ACTIONS = ("reset", "calibrate", "end_calibration", "lockout_test")
ALARM_ACTIONS = ("acknowledge", "shelve", "unshelve", "out_of_service", "return_to_service")


class MqttAccess:
    """Credentials, TLS context and client id of the gateway's broker connection."""

    def __init__(self, mqtt: MqttSettings, site: str, gateway: str) -> None:
        """Reads the secrets (environment, files) and TLS files now.

        Raises :class:`wire.TransportError` naming the file or variable at fault.
        """
        self.username = os.environ.get(mqtt.username_env) if mqtt.username_env else None
        env_password = os.environ.get(mqtt.password_env) if mqtt.password_env else None
        self.password = wire.read_secret(mqtt.password_file, env_password)
        self.tls_context = None
        if mqtt.tls is not None:
            tls = mqtt.tls
            key_password = os.environ.get(tls.key_password_env) if tls.key_password_env else None
            self.tls_context = wire.client_tls_context(
                tls.ca_file, tls.cert_file, tls.key_file, key_password
            )
        self.client_id = wire.secret_client_id(f"safewatch-{site}-{gateway}", self.password)


def command_listener(
    site: LoadedSite, access: MqttAccess, host: str, port: int
) -> CommandListener | None:
    """The listener for signed cloud commands, if the site takes commands.

    Raises :class:`wire.TransportError` naming an unreadable public key file.
    """
    cfg = site.config
    if cfg.commands is None:
        return None
    verifier = CommandVerifier(
        cfg.site.id,
        cfg.gateway.id,
        load_public_keys(cfg.commands.public_key_files),
        max_skew_s=cfg.commands.max_clock_skew_s,
    )
    return CommandListener(
        verifier,
        host=host,
        port=port,
        client_id=f"{access.client_id}-cmd",
        username=access.username,
        password=access.password,
        tls_context=access.tls_context,
    )


def mqtt_access(site: LoadedSite) -> MqttAccess:
    cfg = site.config
    return MqttAccess(cfg.mqtt, cfg.site.id, cfg.gateway.id)


log = logging.getLogger("safewatch.edge.gateway")

UPLINK_QUEUE_SIZE = 10_000
RESTART_DELAY_S = 1.0


class Gateway:
    """One edge gateway for one site file."""

    def __init__(
        self,
        site: LoadedSite,
        *,
        buffer_path: str | Path | None = None,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        driver_factory: DriverFactory = make_driver,
        drain_s: float = 5.0,
        stale_check_s: float = 0.25,
        alarm_flush_s: float = 5.0,
        state_path: str | Path | None = None,
        command_check_s: float = 0.5,
        health_port: int | None = None,
        health_interval_s: float = 10.0,
        fast_path: bool = True,
        safety_process: bool = False,
    ) -> None:
        cfg = site.config
        self.site = site
        port = health_port if health_port is not None else cfg.gateway.health_port
        self.health_server = (
            HealthServer(cfg.gateway.health_host, port) if port is not None else None
        )
        self.buffer_path = Path(buffer_path or cfg.buffer.path)
        self.mqtt_host = mqtt_host or cfg.mqtt.host
        self.mqtt_port = mqtt_port or cfg.mqtt.port
        self.drain_s = drain_s
        self.alarm_flush_s = alarm_flush_s
        # alarms that could not be stored at shutdown: `edge run` exits non-zero
        self.unsaved_alarms: list[wire.AlarmEvent] = []
        self.stale_check_s = stale_check_s
        self.command_check_s = command_check_s
        self.state_path = Path(state_path or state_path_for(self.buffer_path, cfg.state.path))
        # with a safety process, it owns the state file's journal; this process keeps the
        # latched state of its own rules beside it (edge/safety_process.py)
        self.use_safety_process = safety_process and fast_path
        self.latches = LatchStore(
            main_state_path(self.state_path) if self.use_safety_process else self.state_path
        )
        self.health_interval_s = health_interval_s
        self._driver_factory = driver_factory
        self._stop = asyncio.Event()
        self.task_failures = 0

        self.outbox = AlarmOutbox()
        self.alarms = AlarmManager(site, self._alarm_out)
        # ISA-18.2 alarm states beside the conditions, in SQLite next to the state file
        self.alarm_store = AlarmStore(
            alarm_db_path(self.state_path), chatter=ChatterPolicy.from_site(site)
        )
        self.alarms.lifecycle = self.alarm_store
        self.alarms.flood = FloodDetector(cfg.alarms.flood_per_minute, cfg.alarms.flood_clear_s)
        self.alarm_forwarder = AlarmForwarder(site, self.alarm_store, self.outbox.put)
        self.notifier: Notifier | None = None
        if site.config.notifications:
            from edge.alarm_notify import Notifier  # apprise only where notifications are set

            self.notifier = Notifier(
                site.config.notifications,
                self.alarm_store,
                areas={tag.name: tag.location.area for _, tag in site.tags()},
                in_flood=self.alarms.flooded,
                shifts=cfg.alarms.shifts,
                timezone=cfg.alarms.timezone,
                jobs_path=alarm_db_path(self.state_path).with_name(
                    f"{self.state_path.stem}-alarm-jobs.sqlite"
                ),
            )
        self.interlock = Interlock(
            site,
            on_write_failed=self._actuator_failed,
            on_write_recovered=self._actuator_recovered,
        )
        self.samples: SampleQueue = SampleQueue(maxsize=UPLINK_QUEUE_SIZE)
        # the safety thread's products for the main loop (edge/fastpath.py)
        self.handoff = Handoff("main-handoff")
        self.uplink = UplinkHandoff(self.samples)
        self.engine = SafetyEngine(
            site,
            self.interlock,
            self.alarms,
            self.uplink,
            latches=self.latches,
            gateway_late=self._gateway_late,
        )
        self.engine.defer = self.handoff.submit
        self.commands = EngineerCommands(site, self.engine, self.state_path)
        self.commands.on_action = self._audit_action
        # models (advisory pre-alarms) see a sample only after the safety decision on it
        self.inference: InferenceRunner | None = None
        self.waveforms: WaveformReader | None = None
        if cfg.inference.assign:
            from edge.inference import InferenceError, InferenceRunner

            try:
                self.inference = InferenceRunner(site)
            except InferenceError as exc:  # unknown or refused model, wrong sensor kind
                raise _inference_config_error(site, exc) from exc
            self.inference.attach(self.engine)  # the engine owns the pre-alarm conditions
        on_sample = self.engine.handle if self.inference is None else self._decide_then_infer
        self.pollers = [
            BusPoller(
                site,
                bus.id,
                driver_factory(bus),
                on_sample,
                self.interlock,
                backpressure=self._uplink_fill,
                # whole reads at once, unless models must see every sample after its decision
                block_sink=self.engine.handle_block if self.inference is None else None,
            )
            for bus in cfg.buses
        ]
        self._device_health = {d.device: d for p in self.pollers for d in p.devices()}
        self._bus_of = {tag.name: device.bus for device, tag in site.tags()}
        # safety-class buses: their own thread and loop (fast_path=False: all on the main loop)
        self.fast_path = fast_path
        self.safety_thread = SafetyThread()
        fast_buses = self._safety_buses() if fast_path else set()
        self.fast_pollers = [p for p in self.pollers if p.bus_id in fast_buses]
        self.main_pollers = [p for p in self.pollers if p not in self.fast_pollers]
        if self.inference is not None:
            for poller in self.fast_pollers:
                poller.sink = self._decide_then_hand_to_inference
            if cfg.inference.waveforms:  # blocks for waveform models (edge/inference/_waveform.py)
                from edge.inference import InferenceError, WaveformReader

                # an RTU line is shared through its poller; only lines on this loop
                lines = {p.bus_id: p for p in self.main_pollers if not p.safety_class}
                try:
                    self.waveforms = WaveformReader(
                        site, self.inference, driver_factory, lines=lines
                    )
                except InferenceError as exc:
                    raise _inference_config_error(site, exc) from exc
        self._fast_task: asyncio.Task[None] | None = None
        # the safety process (edge/safety_process.py): what it reports, for status
        self.safety: SafetyProcess | None = None
        self._safety_stats: Stats | None = None
        self._safety_levels: dict[str, Level] = {}
        self._annunciated: dict[str, bool] = {}
        self.react_ms: list[float] = []
        self.react_at: list[float] = []
        if self.use_safety_process and self.fast_pollers:
            fast_rules, main_rules = self._split_rules_by_process()
            self.engine.own(r.id for r in main_rules)
            self.main_rules = main_rules
            self.safety = SafetyProcess(
                ChildSpec(
                    site=site,
                    state_path=str(self.state_path),
                    buses=tuple(p.bus_id for p in self.fast_pollers),
                    rules=tuple(r.id for r in fast_rules),
                    stale_check_s=stale_check_s,
                    driver_factory=driver_factory,
                    log_level=logging.getLogger().getEffectiveLevel(),
                ),
                self._from_safety_process,
                lost_safety_process_writes(self.fast_pollers),
            )
            # the fast pollers stay here only for the fail-safe writes after a death
            self.pollers = self.main_pollers
        self._started_at = self.engine._clock()
        self.buffer: StoreAndForwardBuffer | None = None
        self.publisher: MqttPublisher | None = None
        self.remote_commands: CommandListener | None = None
        self.batcher: TelemetryBatcher | None = None
        self.alarm_writer: AlarmWriter | None = None
        self.health_reporter: HealthReporter | None = None
        self.ready = asyncio.Event()

    # -- status ------------------------------------------------------------------

    def levels(self) -> dict[str, Level]:
        levels = self.engine.levels()
        if self.safety is not None:  # the safety process's tags: as it last reported them
            for tag in self._safety_levels.keys() & levels.keys():
                levels[tag] = self._safety_levels[tag]
        return levels

    # -- the safety process --------------------------------------------------------

    def _report_restored(self, transition: Transition, actuators: list[str], kind: str) -> None:
        """A condition restored from the journal after a restart: to the alarms unless the
        alarm store already holds it active at that level (then it was raised, and its event
        handed on, before the restart: no second record)."""
        try:
            known = self.alarm_store.get(alarm_key(transition.rule_id, transition.tag))
        except Exception:  # unreadable or ambiguous: report it rather than lose it
            log.exception("alarm state of %s unreadable", transition.rule_id)
            known = None
        if known is not None and known.active and known.level == transition.level.value:
            return
        log.warning(
            "%s restored %s from the journal without an alarm record: raised now",
            transition.rule_id,
            transition.level.value,
        )
        self.alarms.on_transition(transition, actuators, kind=kind)

    def _from_safety_process(self, message: ChildMessage) -> None:
        """One message of the safety process, on this loop, in the order it was sent."""
        if isinstance(message, Telemetry):
            inference = self.inference
            for sample in samples_of(message):
                try:
                    self.samples.put_nowait(sample)
                except asyncio.QueueFull:
                    self.engine.uplink_dropped += 1
                if inference is not None and sample.reason != "calibration":
                    inference.offer(sample)
        elif isinstance(message, Record):
            transition = Transition(
                message.tag,
                Condition(message.previous),
                Condition(message.level),
                message.value,
                message.threshold,
                message.reason,
                message.ts_ns,
                message.rule,
            )
            if not message.rule:
                self._safety_levels[message.tag] = transition.level
            if message.reason == "restored":  # a new safety process's restored condition
                self._report_restored(transition, message.commanded, message.kind)
                return
            self.alarms.on_transition(
                transition,
                message.commanded,
                kind=message.kind,
                calibration=message.calibration,
            )
        elif isinstance(message, Notice):
            self.alarms.on_notice(
                message.tag, message.reason, message.message, Level(message.level)
            )
        elif isinstance(message, WriteFailed):
            self.alarms.on_actuator_failed(
                ActuatorCommand(*message.command), message.error, message.ts_ns
            )
        elif isinstance(message, WriteRecovered):
            self.alarms.on_actuator_recovered(ActuatorCommand(*message.command), message.ts_ns)
        elif isinstance(message, Audit):
            self._audit_action(message.action, message.actor, message.target, message.why)
        elif isinstance(message, Gap):
            self.samples.dropped += message.samples  # the batcher records it as a gap
        elif isinstance(message, Stats):
            self._safety_stats = message
            self._safety_levels.update({t: Condition(v) for t, v in message.levels.items()})
            room = 100_000 - len(self.react_ms)
            self.react_ms.extend(message.react_ms[:room])
            self.react_at.extend(message.react_at[:room])
        elif isinstance(message, Ready):
            self._safety_levels.update({t: Condition(v) for t, v in message.levels.items()})
            self._annunciated.clear()  # a new safety process: tell it the horns' states again
            self._annunciate()

    def health_snapshot(self) -> HealthSnapshot:
        """Device and bus health for the walls (see ``edge/health_report.py``)."""
        devices: dict[str, dict[str, float]] = {}
        buses: dict[str, dict[str, float]] = {}
        for p in self.pollers:
            bus = p.health
            buses[p.bus_id] = {
                "bus_reads": bus.reads_ok,
                "bus_read_errors": bus.reads_failed,
                "bus_skipped_polls": bus.skipped,
                "bus_lag_ms": round(bus.lag_s * 1000, 3),
            }
            for dev in p.devices():
                metrics: dict[str, float] = {
                    "breaker_open": 0.0 if dev.breaker == "closed" else 1.0,
                    "read_errors": sum(dev.errors.values()),
                    "skipped_polls": dev.skipped,
                }
                if dev.latency_s is not None:
                    metrics["poll_latency_ms"] = round(dev.latency_s * 1000, 3)
                devices[dev.device] = metrics
        stats = self._safety_stats
        if stats is not None:  # the safety process's buses, as it last reported them
            for bus_dict in stats.buses:
                buses[str(bus_dict.get("bus"))] = dict(bus_dict.get("metrics", {}))
            for dev_dict in stats.devices:
                devices[str(dev_dict.get("device"))] = dict(dev_dict.get("metrics", {}))
        return HealthSnapshot(devices, buses)

    def counters(self) -> dict[str, int]:
        out = {
            "samples": self.engine.samples,
            "uplink_dropped": self.engine.uplink_dropped + self.uplink.dropped,
            "handoff_dropped": self.handoff.dropped,
            "handoff_failed": self.handoff.failed,
            "safety_thread": int(self.safety_thread.alive),
            "safety_thread_niced": int(self.safety_thread.niced),
            "alarms_raised": self.alarms.raised,
            "alarm_outbox": len(self.outbox),
            "actuator_writes_ok": self.interlock.writes_ok,
            "actuator_writes_failed": self.interlock.writes_failed,
            "reads_ok": sum(p.reads_ok for p in self.pollers),
            "reads_failed": sum(p.reads_failed for p in self.pollers),
            "task_failures": self.task_failures,
            "latch_saves": self.latches.saves,
            "latch_errors": self.latches.errors,
            "alarm_state_errors": self.alarms.lifecycle_errors,
            "alarm_floods": self.alarms.floods,
            "alarm_flood_active": self.alarms.flooded(),
            "alarm_actions_forwarded": self.alarm_forwarder.forwarded,
        }
        safety = self.safety
        if safety is not None:
            out["safety_thread"] = 0
            out["safety_process"] = int(safety.alive)
            out["safety_process_starts"] = safety.starts
            out["safety_process_restarts"] = safety.restarts
            out["safety_link_garbage"] = safety.garbage
            out["safety_link_corrupt"] = safety.corrupt
            out["safety_messages_failed"] = safety.dispatch_failures
            child = self._safety_stats.counters if self._safety_stats is not None else {}
            for key in ("samples", "reads_ok", "reads_failed", "task_failures"):
                out[key] += child.get(key, 0)
            for key in ("actuator_writes_ok", "actuator_writes_failed"):
                out[key] = child.get(key, 0)
            for key in ("latch_saves", "latch_errors"):
                out[f"safety_{key}"] = child.get(key, 0)
            out["safety_realtime"] = child.get("realtime", 0)
            out["safety_loop_lag_max_us"] = child.get("loop_lag_max_us", 0)
            out["safety_loop_lag_worst_us"] = child.get("loop_lag_worst_us", 0)
            out["safety_loop_lag_late"] = child.get("loop_lag_late", 0)
            out["safety_link_samples_dropped"] = child.get("link_samples_dropped", 0)
            out["safety_link_records_dropped"] = child.get("link_records_dropped", 0)
        if self.notifier is not None:
            n = self.notifier
            out["notifications_sent"] = n.sent
            out["notifications_failed"] = n.failed  # messages with a channel that failed
            out["notifications_rate_limited"] = n.limited
            out["notifications_dropped"] = n.dropped
            out["notifications_flood_held"] = n.flood_held
            out["escalations"] = n.escalations
        if self.inference is not None:
            out.update(self.inference.counters())
        if self.waveforms is not None:
            out.update(self.waveforms.counters())
        if self.publisher is not None:
            out["published"] = self.publisher.published
            out["publish_failed"] = self.publisher.failed
        if self.remote_commands is not None:
            out.update({f"commands_{k}": v for k, v in self.remote_commands.counts.items()})
        if self.batcher is not None:
            out["telemetry_batches"] = self.batcher.batches
            out["points_lost"] = self.batcher.points_lost
        if self.buffer is not None:
            out["buffer_dropped"] = self.buffer.dropped
            out["buffer_errors"] = self.buffer.errors
            out["points_lost"] = self.buffer.points_lost
            out["unrecorded_gaps"] = self.buffer.unrecorded_gaps
        return out

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Request an orderly shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        cfg = self.site.config
        access = mqtt_access(self.site)
        buffer = await asyncio.to_thread(
            StoreAndForwardBuffer,
            self.buffer_path,
            int(cfg.buffer.max_mb * 1024 * 1024),
            site=cfg.site.id,
            gateway=cfg.gateway.id,
        )
        self.buffer = buffer
        try:
            self._audit_config()
        except Exception:  # the audit must never stop the gateway
            log.exception("config deploy not audited")
        publisher = MqttPublisher(
            buffer,
            site=cfg.site.id,
            gateway=cfg.gateway.id,
            host=self.mqtt_host,
            port=self.mqtt_port,
            keepalive_s=cfg.mqtt.keepalive_s,
            username=access.username,
            password=access.password,
            tls_context=access.tls_context,
            client_id=access.client_id,
            version=_version(),
            drain_points_per_s=cfg.buffer.drain_points_per_s,
        )
        self.publisher = publisher
        self.remote_commands = command_listener(self.site, access, self.mqtt_host, self.mqtt_port)
        if self.remote_commands is not None:
            for action in ENGINEER_ACTIONS:  # the same commands as `safewatch edge ...`
                self.remote_commands.handlers[action] = self._engineer_command
            for action in ALARM_ACTIONS:  # the same actions as `safewatch alarms ...`
                self.remote_commands.handlers[action] = self._alarm_command
        self.batcher = TelemetryBatcher(self.site, buffer, self.samples, on_stored=publisher.notify)
        if self.inference is not None:
            for out in self.inference.outputs.values():
                self.batcher.describe(out.tag, "forecast", out.unit, out.area, out.position)
        self.alarm_writer = AlarmWriter(buffer, self.outbox, on_stored=publisher.notify)
        self.health_reporter = HealthReporter(
            cfg.gateway.id,
            buffer,
            self.health_snapshot,
            interval_s=self.health_interval_s,
            on_stored=publisher.notify,
        )
        clean = False
        log.info(
            "gateway %s (site %s): %d bus(es), %d tag(s); buffer %s; mqtt %s:%d",
            cfg.gateway.id,
            cfg.site.id,
            len(cfg.buses),
            len(self.engine.rules),
            self.buffer_path,
            self.mqtt_host,
            self.mqtt_port,
        )
        # latched conditions restored from the journal (this process's rules) that the alarm
        # store does not know: raised now (a death between the journal line and the record)
        for transition, actuators, kind in self.engine.restored_transitions():
            self._report_restored(transition, actuators, kind)
        main_loop = asyncio.get_running_loop()
        self.handoff.bind(main_loop)
        self.uplink.bind(main_loop)
        fast_rules, main_rules = self._split_rules()
        if self.safety is not None:
            fast_rules, main_rules = [], self.main_rules
        fast: Future[None] | None = None
        safety_run: asyncio.Task[None] | None = None
        self._started_at = self.engine._clock()  # polling starts now, not at construction
        try:
            if self.safety is not None:
                # no safety process, no gateway: SafetyProcessError ends `edge run` (status 1)
                self._from_safety_process(await self.safety.start())
                log.info(
                    "safety process %d: bus(es) %s, %d rule(s); main process: bus(es) %s, "
                    "%d rule(s)",
                    self.safety.pid,
                    ", ".join(p.bus_id for p in self.fast_pollers),
                    len(self.safety.spec.rules),
                    ", ".join(p.bus_id for p in self.main_pollers) or "none",
                    len(main_rules or ()),
                )
            elif self.fast_pollers:
                self.safety_thread.start()
                assert self.safety_thread.loop is not None
                for poller in self.fast_pollers:
                    self.interlock.bind_bus(
                        poller.bus_id, self.safety_thread.loop, self.safety_thread.thread_id
                    )
                for poller in self.main_pollers:  # a cut decided on the safety thread
                    self.interlock.bind_bus(poller.bus_id, main_loop, threading.get_ident())
                fast = self.safety_thread.submit(self._run_fast(fast_rules))
                log.info(
                    "safety thread: bus(es) %s, %d rule(s); main loop: bus(es) %s, %d rule(s)",
                    ", ".join(p.bus_id for p in self.fast_pollers),
                    len(fast_rules),
                    ", ".join(p.bus_id for p in self.main_pollers) or "none",
                    len(main_rules) if main_rules is not None else len(self.engine.rules),
                )
            async with asyncio.TaskGroup() as tg:
                safety = [
                    tg.create_task(
                        self._supervised(f"poll:{p.bus_id}", p.run), name=f"poll:{p.bus_id}"
                    )
                    for p in self.main_pollers
                ]
                safety.append(
                    tg.create_task(
                        self._supervised("rule-ticker", partial(self._tick_rules, main_rules)),
                        name="rule-ticker",
                    )
                )
                if fast is not None:
                    safety.append(
                        tg.create_task(self._watch_safety_thread(fast), name="safety-thread")
                    )
                if self.safety is not None:
                    # dispatches its messages; after a death: fail-safe cut, restart (or raise)
                    safety_run = tg.create_task(self.safety.run(), name="safety-process")
                safety.append(
                    tg.create_task(
                        self._supervised("engineer-commands", self._watch_commands),
                        name="engineer-commands",
                    )
                )
                safety.append(
                    tg.create_task(
                        self._supervised("alarm-states", self._forward_alarm_states),
                        name="alarm-states",
                    )
                )
                writers = [
                    tg.create_task(
                        self._supervised("alarm-writer", self.alarm_writer.run), name="alarm-writer"
                    ),
                    tg.create_task(
                        self._supervised("telemetry-batcher", self.batcher.run),
                        name="telemetry-batcher",
                    ),
                    tg.create_task(
                        self._supervised("health-reporter", self.health_reporter.run),
                        name="health-reporter",
                    ),
                ]
                if self.inference is not None:
                    writers.append(
                        tg.create_task(self._supervised("inference", self._infer), name="inference")
                    )
                if self.waveforms is not None:
                    writers.append(
                        tg.create_task(
                            self._supervised("waveforms", self.waveforms.run), name="waveforms"
                        )
                    )
                uplink = tg.create_task(
                    self._supervised("mqtt-publisher", publisher.run, until_return=True),
                    name="mqtt-publisher",
                )
                health = tg.create_task(
                    self._supervised("health", self._publish_health, until_return=True),
                    name="health",
                )
                if self.notifier is not None:
                    writers.append(
                        tg.create_task(
                            self._supervised("notifications", self.notifier.run),
                            name="notifications",
                        )
                    )
                if self.remote_commands is not None:
                    writers.append(
                        tg.create_task(
                            self._supervised("mqtt-commands", self.remote_commands.run),
                            name="mqtt-commands",
                        )
                    )
                self.ready.set()
                await self._stop.wait()
                health.cancel()
                log.info("stopping: polling stops, alarms and telemetry are flushed")
                for poller in self.pollers:
                    poller.stop()
                await self._stop_safety_thread(fast)
                if self.safety is not None and safety_run is not None:
                    await self.safety.stop()
                    await asyncio.wait([safety_run], timeout=2.0)  # its last messages
                await _cancel_and_wait(safety)
                self.handoff.drain()  # the safety thread's last alarm records
                self.uplink.drain()
                await _cancel_and_wait(writers)
                self.unsaved_alarms = await self.alarm_writer.flush_at_shutdown(self.alarm_flush_s)
                await self.batcher.flush()
                clean = not self.unsaved_alarms
                publisher.notify()
                await publisher.stop(self.drain_s)
                await uplink
        finally:
            if self.safety is not None:
                self.safety.stopping = True
                await self.safety.stop(1.0)
            if fast is not None:
                await self._stop_safety_thread(fast)
                await asyncio.to_thread(self.safety_thread.stop)
            self.handoff.bind(None)  # runs what is left; later calls run inline
            # not clean (crash, unsaved alarms): the next start records a restart gap
            await asyncio.to_thread(buffer.close, clean=clean)
            await asyncio.to_thread(self.latches.close)
            # actions not yet forwarded stay pending in the database for the next start
            self.alarm_store.close()
            log.info("gateway stopped: %s", self.counters())

    def _gateway_late(self, device: str, window_s: float) -> bool:
        """The poller has not attempted ``device`` within ``window_s``: its tags' silence is the
        gateway's lag, not a sensor fault. Bounded: silent past 10 windows (30 s at least), a
        hung poller is itself a fault and staleness is judged as usual."""
        health = self._device_health.get(device)
        if health is None:
            return False
        now = self.engine._clock()
        cap = max(10 * window_s, 30.0)
        last = health.last_attempt_at
        if last is None:  # not tried yet since polling started
            return now - self._started_at < cap
        return window_s <= now - last < cap

    def _uplink_fill(self) -> float:
        """How full the safety path's hand-off to the uplink is (0..1)."""
        return self.samples.qsize() / self.samples.maxsize

    def health(self) -> dict[str, Any]:
        """Per bus and device: latency, counts by error kind, last good read, breaker,
        skipped polls; plus the gateway's counters. What ``/status`` serves."""
        devices = []
        for poller in self.pollers:
            for dev in poller.devices():
                devices.append({"bus": poller.bus_id, **dev.as_dict()})
        buses = [p.health.as_dict() for p in self.pollers]
        stats = self._safety_stats
        if stats is not None:  # the safety process's, as it last reported them (every 1 s)
            buses += [{k: v for k, v in b.items() if k != "metrics"} for b in stats.buses]
            devices += [{k: v for k, v in d.items() if k != "metrics"} for d in stats.devices]
        return {
            "gateway": self.site.config.gateway.id,
            "site": self.site.config.site.id,
            "ts_ns": time.time_ns(),
            "counters": self.counters(),
            "buses": buses,
            "devices": devices,
        }

    def react_times(self) -> tuple[list[float], list[float]]:
        """(decision -> coil written ms, decision monotonic s) per actuator going active,
        wherever the interlock runs (benchmarks read this through ``--stats-out``)."""
        if self.safety is not None:
            return self.react_ms, self.react_at
        return self.interlock.react_ms, self.interlock.react_at

    async def _publish_health(self, every_s: float = 1.0) -> None:
        server = self.health_server
        if server is None:
            return
        await asyncio.to_thread(server.start)
        try:
            while True:
                server.publish(self.health())
                await asyncio.sleep(every_s)
        finally:
            server.stop()

    def _audit_action(self, action: str, actor: str, target: str, why: str) -> None:
        """Audit an operator action on the gateway (forwarded to the cloud's audit chain)."""
        self.alarm_store.record_action(action, actor=actor, target=target, why=why)

    def _audit_config(self) -> None:
        """A config deploy: the site file differs from the one of the last start."""
        source = Path(self.site.source)
        try:
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            return  # a site built in memory (tests) or unreadable: nothing to compare
        before = self.alarm_store.meta("config_sha256")
        if before == digest:
            return
        self.alarm_store.set_meta("config_sha256", digest)
        actor = os.environ.get("SAFEWATCH_DEPLOYED_BY") or _login()
        self.alarm_store.record_action(
            "config_deployed",
            actor=actor,
            target=self.site.config.gateway.id,
            why=f"{source.name} sha256 {digest[:16]} (was {before[:16] if before else 'none'})",
        )

    def _engineer_command(self, command: wire.Command) -> None:
        """A verified cloud command, run like a local engineer command file."""
        body: dict[str, Any] = {**command.args, "action": command.action}
        body["by"] = f"cloud:{command.issuer}"
        self._execute(body, f"mqtt:{command.id}")

    def _annunciate(self) -> None:
        """Horns and beacons from the alarm states: a horn sounds while an alarm of its
        priority is unacknowledged (the acknowledgement silences it), a beacon stays on
        until the alarm has also cleared. Shelved, out-of-service and suppressed alarms
        do not sound."""
        annunciators = self.site.config.alarms.annunciators
        if not annunciators:
            return
        try:
            records = self.alarm_store.alarms()
        except Exception:  # the alarm database must never stop the safety path
            log.exception("annunciation: alarm states unreadable")
            return
        rank = {"low": 0, "medium": 1, "high": 2, "critical": 3}
        for ann in annunciators:
            least = rank[ann.min_priority]
            on = any(
                rank.get(r.priority, 0) >= least
                and (
                    r.state in (UNACK, RTN_UNACK)
                    or (ann.until == "cleared" and r.active and r.state == ACK)
                )
                for r in records
            )
            self.interlock.observe(annunciator_cause(ann.actuator), on)
            safety = self.safety
            if (
                safety is not None
                and self._annunciated.get(ann.actuator) is not on
                and safety.send(Annunciate(ann.actuator, on))
            ):
                self._annunciated[ann.actuator] = on

    def _alarm_out(self, event: wire.AlarmEvent) -> None:
        """Every alarm event: to the durable outbox, and to the notifier (never blocks)."""
        self.outbox.put(event)
        self._annunciate()
        if self.notifier is not None and self.alarms.announcing:
            try:
                self.notifier.on_event(event)
            except Exception:  # notifying must never stop the safety path
                log.exception("notification of %s failed", event.alarm_id)

    def _alarm_command(self, command: wire.Command) -> None:
        """A verified cloud alarm action (acknowledge, shelve...), applied to the local
        alarm state and forwarded back at once as an alarm event."""
        args = command.args
        ref = args.get("alarm")
        if not isinstance(ref, str) or not ref:
            log.warning("alarm command %s without an 'alarm' argument", command.id)
            return
        why = args.get("why") or args.get("reason") or ""
        duration = args.get("duration_s")
        try:
            self.alarm_store.act(
                ref,
                command.action,
                actor=f"cloud:{command.issuer}",
                why=str(why),
                shelve_s=float(duration) if isinstance(duration, int | float) else None,
            )
        except AlarmActionError as exc:
            log.warning("alarm command %s refused: %s", command.id, exc)
            return
        self.alarm_forwarder.forward()
        self._annunciate()

    async def _forward_alarm_states(self) -> None:
        """Expire shelves and forward operator actions (the CLI's included) every check."""
        while True:
            self.alarm_forwarder.forward()
            self.alarms.check_flood()
            self._annunciate()  # acknowledgements from the CLI silence horns here
            await asyncio.sleep(min(self.command_check_s, 1.0))

    def _decide_then_infer(self, sample: Sample) -> object:
        transition = self.engine.handle(sample)
        # calibration gas is not real data (SAFETY_REFERENCE.md): keep it out of the windows
        if sample.tag not in self.engine.calibrations:
            assert self.inference is not None
            self.inference.offer(sample)
        return transition

    async def _infer(self) -> None:
        runner = self.inference
        assert runner is not None
        # outputs go through the engine: pre-alarm rules, alarms, uplink (kind forecast)
        await runner.run(self.engine.handle)

    async def _tick_rules(self, rules: list[Rule] | None = None) -> None:
        """Main loop: the rules not ticked on the safety thread (all: ``rules`` None),
        calibrations and lockout tests."""
        self.commands.report_overdue()
        while True:
            await asyncio.sleep(self.stale_check_s)
            if rules is None:
                self.engine.tick()
            else:
                self.engine.tick_rules(rules)
                self.engine.expire_calibrations()
            self.commands.tick()

    # -- the safety thread -------------------------------------------------------

    def _safety_buses(self) -> set[str]:
        """The buses polled on the safety thread: those with a safety-class tag or an actuator
        output, those feeding a rule that can cut (a cause in the interlock matrix), and then
        every bus feeding a rule together with one of those, so that each rule is fed (and
        ticked) on one thread only."""
        causes = self.interlock.causes()
        fast = {p.bus_id for p in self.pollers if p.safety_class}
        for rule in self.engine.rules.values():
            # in another process, a rule that reads the interlock (feedback) must live with it
            if rule.id in causes or (self.use_safety_process and isinstance(rule, FeedbackCheck)):
                fast.update(self._rule_buses(rule))
        grown = True
        while grown:
            grown = False
            for rule in self.engine.rules.values():
                buses = self._rule_buses(rule)
                if buses & fast and not buses <= fast:
                    fast |= buses
                    grown = True
        return fast

    def _rule_buses(self, rule: Rule, seen: frozenset[str] = frozenset()) -> set[str]:
        """The buses feeding ``rule``; with a safety process, a compound condition's are its
        members' (it is judged where they are)."""
        bus_of = self._bus_of
        buses = {bus_of[t] for t in rule.inputs if t in bus_of}
        if self.use_safety_process and isinstance(rule, CompoundCondition):
            for member in rule.inputs:
                inner = self.engine.rules.get(member)
                if inner is not None and inner is not rule and member not in seen:
                    buses |= self._rule_buses(inner, seen | {rule.id})
        return buses

    def _split_rules_by_process(self) -> tuple[list[Rule], list[Rule]]:
        """(rules the safety process owns, rules this process owns): a rule belongs to the
        process that polls its inputs; a compound to the process of its members; a rule
        with no polled input (model pre-alarms) to this one."""
        fast_buses = {p.bus_id for p in self.fast_pollers}
        fast: list[Rule] = []
        main: list[Rule] = []
        for rule in self.engine.rules.values():
            (fast if self._rule_buses(rule) & fast_buses else main).append(rule)
        return fast, main

    def _split_rules(self) -> tuple[list[Rule], list[Rule] | None]:
        """(rules ticked on the safety thread, rules ticked on the main loop; None: all rules
        on the main loop with :meth:`SafetyEngine.tick`). A rule is ticked on the thread that
        feeds it; compound conditions (inputs are rules, judged under the engine lock) on the
        safety thread."""
        if not self.fast_pollers:
            return [], None
        fast_buses = {p.bus_id for p in self.fast_pollers}
        fast_tags = {tag.name for device, tag in self.site.tags() if device.bus in fast_buses}
        compounds = {c.id for c in self.engine.compounds}
        fast: list[Rule] = []
        main: list[Rule] = []
        for rule in self.engine.rules.values():
            if rule.id in compounds or any(t in fast_tags for t in rule.inputs):
                fast.append(rule)
            else:
                main.append(rule)
        return fast, main

    async def _run_fast(self, rules: list[Rule]) -> None:
        """On the safety thread's loop: its pollers and its rule ticker."""
        self._fast_task = asyncio.current_task()
        async with asyncio.TaskGroup() as tg:
            for p in self.fast_pollers:
                tg.create_task(self._supervised(f"poll:{p.bus_id}", p.run), name=f"poll:{p.bus_id}")
            tg.create_task(
                self._supervised("rule-ticker:safety", partial(self._tick_fast, rules)),
                name="rule-ticker:safety",
            )

    async def _tick_fast(self, rules: list[Rule]) -> None:
        while True:
            await asyncio.sleep(self.stale_check_s)
            self.engine.tick_rules(rules)

    async def _watch_safety_thread(self, fast: Future[None]) -> None:
        """The safety thread's work ends only when the gateway stops: anything else is fatal
        (the gateway exits and its supervisor restarts it; latched cuts are restored)."""
        await asyncio.wait([asyncio.wrap_future(fast)])
        if self._stop.is_set():
            return
        error = None if fast.cancelled() else fast.exception()
        log.critical("the safety thread stopped unexpectedly: %r", error)
        raise RuntimeError("safety thread stopped") from error

    async def _stop_safety_thread(self, fast: Future[None] | None, nudge_s: float = 0.5) -> None:
        """Cancel the safety thread's tasks and wait until they have finished (drivers closed)."""
        if fast is None:
            return
        waiting = asyncio.wrap_future(fast)
        while not fast.done() and self.safety_thread.alive:
            task = self._fast_task
            if task is not None:
                self.safety_thread.call(task.cancel)
            await asyncio.wait([waiting], timeout=nudge_s)

    def _decide_then_hand_to_inference(self, sample: Sample) -> object:
        """On the safety thread: decide now; the model sees the sample on the main loop."""
        transition = self.engine.handle(sample)
        if sample.tag not in self.engine.calibrations and self.inference is not None:
            self.handoff.submit(partial(self.inference.offer, sample))
        return transition

    def _execute(self, command: dict[str, Any] | None, name: str) -> None:
        """An engineer command: run here, or in the safety process that owns the rules and
        the interlock (which audits it); a calibration marks this process's readings too."""
        if self.safety is None or not isinstance(command, dict):
            self.commands.execute(command, name)
            return
        if not self.safety.send(SafetyCommand(dict(command), name)):
            log.error("engineer command %s not delivered: the safety process is down", name)
            return
        action, tag = command.get("action"), str(command.get("tag", ""))
        if action == "calibrate" and tag in self.engine._devices:
            minutes = command.get("minutes", 30)
            if isinstance(minutes, int | float) and 0 < minutes <= 24 * 60:
                self.engine.calibrate(
                    tag, time.time_ns() + int(minutes * 60e9), str(command.get("by", ""))
                )
        elif action == "end_calibration":
            self.engine.end_calibration(tag)

    async def _watch_commands(self) -> None:
        while True:
            await asyncio.sleep(self.command_check_s)
            found = await asyncio.to_thread(read_commands, self.state_path)
            for path, command in found:
                self._execute(command, path.name)
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _supervised(
        self,
        name: str,
        body: Callable[[], Coroutine[Any, Any, None]],
        *,
        until_return: bool = False,
    ) -> None:
        """Run ``body``; a crash is logged, counted and restarted (the safety loop must live)."""
        while True:
            try:
                await body()
            except Exception:
                self.task_failures += 1
                log.exception("task %s crashed; restarting in %.1f s", name, RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)
                continue
            if until_return or self._stop.is_set():
                return  # a poller told to stop returns; that is no crash
            log.error("task %s returned unexpectedly; restarting", name)
            await asyncio.sleep(0)  # never a busy loop, whatever the body does

    # -- interlock callbacks -----------------------------------------------------

    def _actuator_failed(self, command: ActuatorCommand, error: str) -> None:
        # called by the poller that wrote (maybe the safety thread): recorded on the main loop
        self.handoff.submit(partial(self.alarms.on_actuator_failed, command, error, time.time_ns()))

    def _actuator_recovered(self, command: ActuatorCommand) -> None:
        self.handoff.submit(partial(self.alarms.on_actuator_recovered, command, time.time_ns()))


def _version() -> str:
    try:
        return importlib.metadata.version("safewatch")
    except importlib.metadata.PackageNotFoundError:
        return ""


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], nudge_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait for them; cancel again any that swallowed the cancel
    (a library's ``wait_for`` on Python 3.11 can), so shutdown always completes."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=nudge_s)


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _inference_config_error(site: LoadedSite, exc: Exception) -> ConfigError:
    message = str(exc).removeprefix(f"{site.source}: inference: ")
    return ConfigError([ConfigIssue(site.source, None, None, "inference", message)])
