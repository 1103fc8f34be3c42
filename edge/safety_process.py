"""The safety process: the safety buses, their rules and the actuators in a process of their own.

``safewatch edge run`` starts one child process (``python -m edge.safety_process``)
that owns the gateway's safety buses (those with a safety-class tag or an
actuator output, the inputs of every rule that can cut, and every bus feeding a
rule together with one of those): their drivers, their pollers, the rules they
feed, the interlock matrix and the coil writes, and the latched-state journal
of those rules. A read that returns an over-limit value is judged and its cut
written there, by an interpreter that shares no lock, no collector and no event
loop with the thousands of background tags, the telemetry batcher, the SQLite
buffer and the uplink, which stay in the gateway's main process.

Order of effects is unchanged: the latch journal is written before the
interlock hears of a change, and the alarm record follows, sent to the main
process over the link (``edge/safety_link.py``) in decision order. The main
process keeps the alarm lifecycle, the durable buffer, the uplink, status, the
health server, the models and the background buses; it forwards engineer
commands and annunciator states to the safety process.

Failures:

- The safety process cannot start (no ``Ready`` within ``start_timeout_s``):
  ``edge run`` fails with an error that says so (exit status 1); nothing polls.
- The safety process dies (crash, SIGKILL, OOM) or its stream turns to garbage:
  the main process writes every actuator of the safety buses to its active
  (fail-safe) value itself, then starts a new safety process, which restores
  the latched state from the journal (a restart never releases a cut). If that
  start fails, the gateway exits non-zero and its supervisor restarts it.
- The main process dies: the kernel kills the safety process with it
  (``PR_SET_PDEATHSIG``), as systemd's control-group kill would, and the
  supervisor restarts the whole gateway, which restores the latched state. The
  breaker relays hold their last state meanwhile; a cut stays cut.
- SIGTERM/SIGINT reach both processes (a terminal, systemd); the safety
  process ignores them and stops when the main process sends ``Stop`` (or its
  end of the link closes), so the main process decides the order of shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import logging.handlers
import os
import pickle
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from device_drivers import Sample, SampleBlock
from edge.actuation import ActuatorCommand, Interlock, annunciator_cause
from edge.alarms import AlarmManager
from edge.commands import EngineerCommands
from edge.config import LoadedSite
from edge.drivers import DriverFactory
from edge.engine import SafetyEngine
from edge.latches import LatchStore
from edge.polling import BusPoller, DeviceHealth
from edge.rules import Level, Rule, Transition
from edge.safety_link import (
    MAX_FRAME,
    Annunciate,
    Audit,
    ChildMessage,
    Command,
    FrameReader,
    Gap,
    Init,
    LinkCorrupt,
    MainMessage,
    Notice,
    Ready,
    Record,
    Stats,
    Stop,
    Telemetry,
    WriteFailed,
    WriteRecovered,
    frame,
    sample_row,
)

__all__ = [
    "ChildSpec",
    "SafetyCore",
    "SafetyProcess",
    "SafetyProcessError",
    "command_tuple",
]

log = logging.getLogger("safewatch.edge.safety_process")

START_TIMEOUT_S = 60.0  # a loaded 2-core box imports pydantic, pymodbus... in 2-10 s
STATS_EVERY_S = 1.0
LAG_PROBE_S = 0.02  # how often the safety loop checks how late it wakes up
LAG_LATE_MS = 5.0
LINK_TELEMETRY_BYTES = 8 * 1024 * 1024  # unsent bytes past which telemetry is dropped (a gap)
LINK_RECORD_BYTES = 64 * 1024 * 1024  # ... and past which even alarm records are (counted)
RESTART_DELAY_S = 0.2
SAFETY_NICE = -10
SAFETY_NICE_STEP = 5  # the safety process runs this much ahead of its gateway
SAFETY_RT_PRIORITY = 10  # SCHED_RR, low among real-time priorities (kernel threads use 50+)
SWITCH_INTERVAL_S = 0.0005  # the loop thread gets the GIL back within this from a helper
_PR_SET_PDEATHSIG = 1


class SafetyProcessError(RuntimeError):
    """The safety process could not be started (the gateway must not run without it)."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the safety process needs (pickled to it by its parent, the gateway)."""

    site: LoadedSite
    state_path: str
    buses: tuple[str, ...]
    rules: tuple[str, ...]  # the rule ids the safety process owns
    stale_check_s: float
    driver_factory: DriverFactory
    nice: int | None = SAFETY_NICE
    log_level: int = logging.INFO
    realtime: int = SAFETY_RT_PRIORITY  # SCHED_RR priority where allowed; 0: never


def command_tuple(command: ActuatorCommand) -> tuple[str, str, str, int, int, bool, bool]:
    return (
        command.actuator,
        command.bus,
        command.device,
        command.unit,
        command.coil,
        command.active,
        command.coil_value,
    )


# -- the safety process's side ---------------------------------------------------------


class ChildLink:
    """The safety process's end of the link: frames to the gateway in decision order.

    Telemetry is gathered and sent once per event-loop turn; an alarm record (or
    any other message) first sends the gathered telemetry, then itself, at once:
    the transport writes to the socket right away when nothing waits before it,
    so a record is in the kernel's buffer (safe from this process's death) as
    soon as it is decided. Bounded: past :data:`LINK_TELEMETRY_BYTES` unsent, new
    samples are dropped and counted, and a :class:`Gap` with their number goes
    ahead of the next telemetry; past :data:`LINK_RECORD_BYTES` (the gateway stopped
    reading) records are dropped too, counted in :attr:`records_dropped`.
    """

    def __init__(
        self,
        telemetry_limit: int = LINK_TELEMETRY_BYTES,
        record_limit: int = LINK_RECORD_BYTES,
    ) -> None:
        self.telemetry_limit = telemetry_limit
        self.record_limit = record_limit
        self.writer: asyncio.StreamWriter | None = None
        self._early: list[bytes] = []
        self._rows: list[Any] = []
        self._scheduled = False
        self._gap = 0
        self.dropped = 0  # samples
        self.records_dropped = 0
        self.sent_frames = 0

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        for data in self._early:
            writer.write(data)
        self._early.clear()

    def pending_bytes(self) -> int:
        writer = self.writer
        if writer is None:
            return sum(map(len, self._early))
        return writer.transport.get_write_buffer_size()

    def fill(self) -> float:
        """How full the link is for telemetry (0..1): the pollers' back-pressure."""
        return min(1.0, self.pending_bytes() / self.telemetry_limit)

    # UplinkSink (the engine's put_nowait / put_block)

    def put_nowait(self, sample: Sample) -> None:
        if self.pending_bytes() >= self.telemetry_limit:
            self._gap += 1
            self.dropped += 1
            return
        self._rows.append(sample_row(sample))
        self._schedule()

    def put_block(self, block: SampleBlock) -> bool:
        if self.pending_bytes() >= self.telemetry_limit:
            self._gap += len(block)
            self.dropped += len(block)
            return True  # counted here, and reported as a gap
        self._rows.extend(sample_row(s) for s in block)
        self._schedule()
        return True

    def send(self, message: Any) -> None:
        """Send ``message`` now, after the telemetry gathered before it."""
        if self.pending_bytes() >= self.record_limit:
            self.records_dropped += 1
            log.error("link to the gateway full: %s dropped", type(message).__name__)
            return
        self._flush_telemetry()
        self._write(frame(message))

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_telemetry)

    def _flush_telemetry(self) -> None:
        self._scheduled = False
        if self._gap and self.pending_bytes() < self.telemetry_limit:
            gap, self._gap = self._gap, 0
            self._write(frame(Gap(gap)))
        if self._rows:
            rows, self._rows = self._rows, []
            data = frame(Telemetry(rows))
            if len(data) > MAX_FRAME:  # never: a safety bus reads a few hundred tags
                self._gap += len(rows)
                self.dropped += len(rows)
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        self.sent_frames += 1
        if self.writer is None:
            self._early.append(data)
        else:
            self.writer.write(data)


class _AlarmsToGateway:
    """What the engine and the engineer commands call on the alarm manager, sent on."""

    def __init__(self, link: ChildLink) -> None:
        self.link = link
        self.levels: dict[str, str] = {}  # tag -> condition of its threshold rule

    def on_transition(
        self,
        transition: Transition,
        actuators: Any = (),
        *,
        kind: str = "threshold",
        calibration: bool = False,
    ) -> None:
        if not transition.rule:
            self.levels[transition.tag] = transition.level.value
        self.link.send(
            Record(
                tag=transition.tag,
                previous=transition.previous.value,
                level=transition.level.value,
                value=transition.value,
                threshold=transition.threshold,
                reason=transition.reason,
                ts_ns=transition.ts_ns,
                rule=transition.rule,
                commanded=list(actuators),
                kind=kind,
                calibration=calibration,
            )
        )

    def on_notice(
        self, tag_name: str, reason: str, message: str, level: Level = Level.ALARM
    ) -> None:
        self.link.send(Notice(tag_name, reason, message, level.value))


def _device_metrics(dev: DeviceHealth) -> dict[str, float]:
    metrics: dict[str, float] = {
        "breaker_open": 0.0 if dev.breaker == "closed" else 1.0,
        "read_errors": sum(dev.errors.values()),
        "skipped_polls": dev.skipped,
    }
    if dev.latency_s is not None:
        metrics["poll_latency_ms"] = round(dev.latency_s * 1000, 3)
    return metrics


class SafetyCore:
    """Inside the safety process: pollers, engine, interlock and latches of the safety buses."""

    def __init__(self, spec: ChildSpec, link: ChildLink) -> None:
        site = spec.site
        self.spec = spec
        self.link = link
        self.interlock = Interlock(
            site,
            on_write_failed=lambda c, error: link.send(
                WriteFailed(command_tuple(c), error, time.time_ns())
            ),
            on_write_recovered=lambda c: link.send(
                WriteRecovered(command_tuple(c), time.time_ns())
            ),
        )
        self.latches = LatchStore(spec.state_path)
        self.alarms = _AlarmsToGateway(link)
        self.engine = SafetyEngine(
            site,
            self.interlock,
            cast(AlarmManager, self.alarms),
            link,
            latches=self.latches,
            gateway_late=self._late,
        )
        self.engine.own(spec.rules)
        self.rules: list[Rule] = [
            self.engine.rules[r] for r in spec.rules if r in self.engine.rules
        ]
        owned = set(spec.rules)
        for tag, rule in self.engine.thresholds.items():
            if rule.id in owned:
                self.alarms.levels[tag] = rule.condition.value
        self.commands = EngineerCommands(site, self.engine, spec.state_path)
        self.commands.on_action = lambda action, actor, target, why: link.send(
            Audit(action, actor, target, why)
        )
        self.pollers = [
            BusPoller(
                site,
                bus,
                spec.driver_factory(site.bus(bus)),
                self.engine.handle,
                self.interlock,
                backpressure=link.fill,
                block_sink=self.engine.handle_block,
            )
            for bus in spec.buses
        ]
        self._health = {d.device: d for p in self.pollers for d in p.devices()}
        self._started_at = time.monotonic()
        self._react_sent = 0
        self.task_failures = 0
        self.garbage = 0
        self.lag_max_ms = 0.0  # since the last Stats
        self.lag_late = 0
        self.lag_worst_ms = 0.0  # since start
        self.realtime = False  # set by main() once the scheduling policy is applied

    def _late(self, device: str, window_s: float) -> bool:
        """As the gateway's: the poller has not tried ``device`` within ``window_s``."""
        health = self._health.get(device)
        if health is None:
            return False
        now = time.monotonic()
        cap = max(10 * window_s, 30.0)
        last = health.last_attempt_at
        if last is None:
            return now - self._started_at < cap
        return window_s <= now - last < cap

    def stats(self) -> Stats:
        react_ms = self.interlock.react_ms[self._react_sent :]
        react_at = self.interlock.react_at[self._react_sent : self._react_sent + len(react_ms)]
        self._react_sent += len(react_ms)
        buses: list[dict[str, Any]] = []
        devices: list[dict[str, Any]] = []
        for p in self.pollers:
            bus = p.health
            buses.append(
                {
                    **bus.as_dict(),
                    "metrics": {
                        "bus_reads": bus.reads_ok,
                        "bus_read_errors": bus.reads_failed,
                        "bus_skipped_polls": bus.skipped,
                        "bus_lag_ms": round(bus.lag_s * 1000, 3),
                    },
                }
            )
            for dev in p.devices():
                devices.append({"bus": p.bus_id, **dev.as_dict(), "metrics": _device_metrics(dev)})
        counters = {
            "samples": self.engine.samples,
            "reads_ok": sum(p.reads_ok for p in self.pollers),
            "reads_failed": sum(p.reads_failed for p in self.pollers),
            "actuator_writes_ok": self.interlock.writes_ok,
            "actuator_writes_failed": self.interlock.writes_failed,
            "latch_saves": self.latches.saves,
            "latch_errors": self.latches.errors,
            "task_failures": self.task_failures,
            "link_samples_dropped": self.link.dropped,
            "link_records_dropped": self.link.records_dropped,
            "link_garbage": self.garbage,
            "commands_executed": self.commands.executed,
            "commands_rejected": self.commands.rejected,
            "loop_lag_max_us": round(self.lag_max_ms * 1000),
            "loop_lag_late": self.lag_late,
            "loop_lag_worst_us": round(self.lag_worst_ms * 1000),
            "realtime": int(self.realtime),
        }
        self.lag_max_ms = 0.0
        return Stats(counters, buses, devices, dict(self.alarms.levels), react_ms, react_at)

    async def run(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self.link.attach(writer)
        frames = FrameReader(reader, MainMessage)
        stopping = False
        self.link.send(
            Ready(
                os.getpid(), list(self.spec.rules), list(self.spec.buses), dict(self.alarms.levels)
            )
        )
        # latched conditions restored from the journal: reported (again) after the Ready
        for transition, actuators, kind in self.engine.restored_transitions():
            self.alarms.on_transition(transition, actuators, kind=kind)
        log.info(
            "safety process %d: bus(es) %s, %d rule(s)",
            os.getpid(),
            ", ".join(self.spec.buses),
            len(self.rules),
        )
        async with asyncio.TaskGroup() as tg:
            work = [
                tg.create_task(self._supervised(f"poll:{p.bus_id}", p.run), name=f"poll:{p.bus_id}")
                for p in self.pollers
            ]
            work.append(
                tg.create_task(self._supervised("rule-ticker", self._tick), name="rule-ticker")
            )
            work.append(tg.create_task(self._supervised("stats", self._stats), name="stats"))
            work.append(tg.create_task(self._watch_lag(), name="loop-lag"))
            try:
                while not stopping:
                    try:
                        message = await frames.read()
                    except (LinkCorrupt, OSError) as exc:
                        log.critical("link from the gateway broken (%s): stopping", exc)
                        message = None
                    self.garbage = frames.garbage
                    if message is None:
                        log.warning("the gateway closed the link: stopping")
                        break
                    try:
                        stopping = self._on_message(message)
                    except Exception:  # one bad command must not end the safety loop
                        self.task_failures += 1
                        log.exception("a message from the gateway failed: %r", message)
            finally:
                stopping = True
                for poller in self.pollers:
                    poller.stop()
                for task in work:
                    task.cancel()
        self.link.send(self.stats())
        await asyncio.to_thread(self.latches.close)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            writer.close()
        log.info("safety process %d stopped", os.getpid())

    def _on_message(self, message: Any) -> bool:
        """Apply one message from the gateway; True for Stop."""
        if isinstance(message, Stop):
            return True
        if isinstance(message, Command):
            self.commands.execute(message.body, message.name)
        elif isinstance(message, Annunciate):
            self.interlock.observe(annunciator_cause(message.actuator), message.on)
        return False

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.spec.stale_check_s)
            self.engine.tick_rules(self.rules)
            self.engine.expire_calibrations()
            self.commands.tick(report_overdue=False)  # the gateway reports overdue tests

    async def _watch_lag(self, every_s: float = LAG_PROBE_S) -> None:
        """How late this loop wakes up (scheduling, a blocking call): the worst since the
        last Stats, and how often it was past :data:`LAG_LATE_MS`."""
        clock = time.perf_counter
        while True:
            before = clock()
            await asyncio.sleep(every_s)
            lag_ms = (clock() - before - every_s) * 1000
            if lag_ms > self.lag_max_ms:
                self.lag_max_ms = lag_ms
                self.lag_worst_ms = max(self.lag_worst_ms, lag_ms)
            if lag_ms > LAG_LATE_MS:
                self.lag_late += 1

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            self.link.send(self.stats())

    async def _supervised(self, name: str, body: Callable[[], Any]) -> None:
        """Run ``body``; a crash is logged, counted and restarted (the safety loop must live)."""
        while True:
            try:
                await body()
            except Exception:
                self.task_failures += 1
                log.exception("task %s crashed; restarting in 1 s", name)
                await asyncio.sleep(1.0)
                continue
            return


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent dies (the gateway's supervisor restarts
    the whole gateway); elsewhere the closed link stops it."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to die with the gateway: %s", exc)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


def _go_realtime(priority: int) -> bool:
    """Best effort: SCHED_RR at ``priority`` for this process (root or CAP_SYS_NICE).

    Measured on the shared dev VM at load 10 (a 5 ms asyncio sleep, 15 s): nice -15 woke
    late by p99 16.7 ms / max 28 ms, because the kernel's autogroups make nice count only
    inside the process's own session; SCHED_RR p99 0.24 ms / max 0.97 ms. The safety
    process waits on sockets almost all the time (a few % of one CPU); were it ever to spin,
    the kernel's real-time throttling (``sched_rt_runtime_us``, 95 %) still leaves the
    machine some time, and the second core all of it. Its helper threads (latch fsync, log
    writer) inherit the policy, so none of them holds the GIL while preempted."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except OSError as exc:
        log.warning("safety process not real-time (SCHED_RR %d refused: %s)", priority, exc)
        return False
    return True


def _raise_priority(nice: int | None) -> int | None:
    """Best effort: the safety process ahead of the machine's other work and of its own
    gateway's background work: ``nice`` or :data:`SAFETY_NICE_STEP` below the niceness it
    was started with, whichever is higher priority (the shipped unit runs the gateway at
    Nice=-10, so -15, and grants CAP_SYS_NICE for it). Never lowered. Returns the niceness
    set, None when unchanged (not allowed: root or CAP_SYS_NICE)."""
    if nice is None:
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    target = max(-20, min(nice, current - SAFETY_NICE_STEP))
    if current <= target:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.warning("safety process keeps nice %d (%d refused: %s)", current, target, exc)
        return None
    return target


def _log_off_the_loop() -> logging.handlers.QueueListener:
    """Log records go through a queue to a thread that writes them: a write to the log file
    can block for tens of milliseconds on a busy disk (page writeback, other writers of
    the same file), and the safety loop must not wait for it (measured: loop stalls of
    20-115 ms with the process idle and runnable, during `bench alarm-latency` at load 10)."""
    root = logging.getLogger()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *root.handlers, respect_handler_level=True)
    root.handlers = [logging.handlers.QueueHandler(records)]
    listener.start()
    return listener


def _read_init(sock: socket.socket) -> ChildSpec:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise SystemExit("safety process: the gateway closed the link before Init")
            data += chunk
        return data

    size = int.from_bytes(exactly(4), "big")
    if size > MAX_FRAME:
        raise SystemExit(f"safety process: first frame of {size} bytes is no Init")
    import msgspec

    message = msgspec.msgpack.decode(exactly(size), type=Init)
    spec = pickle.loads(message.spec)  # from our own parent over a socketpair only
    if not isinstance(spec, ChildSpec):
        raise SystemExit("safety process: Init carries no ChildSpec")
    return spec


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd, parent = int(args[0]), int(args[1])
    _die_with_parent(parent)
    # the gateway (main process) decides when this process stops: Stop, or the link closing
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    spec = _read_init(sock)
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)-7s safety[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("pymodbus", "mqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # priorities before any thread starts: threads inherit them
    niced = _raise_priority(spec.nice)
    realtime = _go_realtime(spec.realtime)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    listener = _log_off_the_loop()
    if niced is not None:
        log.info("safety process runs at nice %d", niced)
    if realtime:
        log.info("safety process runs real-time (SCHED_RR %d)", spec.realtime)
    core = SafetyCore(spec, ChildLink())
    core.realtime = realtime
    # what was built lives as long as the process: out of the collector's sight, and
    # collections rarer (a safety bus allocates little that is cyclic)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    sock.setblocking(False)
    try:
        asyncio.run(core.run(sock))
    finally:
        listener.stop()  # writes what is queued
    return 0


# -- the gateway's side ----------------------------------------------------------------


class SafetyProcess:
    """The gateway's handle on its safety process: start, messages in, commands out,
    restart after a death (with a fail-safe cut first), orderly stop."""

    def __init__(
        self,
        spec: ChildSpec,
        on_message: Callable[[ChildMessage], None],
        on_lost: Callable[[], Any],
        *,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.spec = spec
        self.on_message = on_message
        self.on_lost = on_lost  # awaited after an unexpected death, before the restart
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames: FrameReader | None = None
        self.pid = 0
        self.starts = 0
        self.restarts = 0
        self.corrupt = 0
        self.garbage_before = 0
        self.dispatch_failures = 0
        self.stopping = False

    @property
    def garbage(self) -> int:
        return self.garbage_before + (self._frames.garbage if self._frames else 0)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> Ready:
        """Start the safety process and wait for it to be ready (latched state restored).

        Raises :class:`SafetyProcessError` when it exits or says nothing in time.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge.safety_process",
                str(theirs.fileno()),
                str(os.getpid()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise SafetyProcessError(f"cannot start the safety process: {exc}") from exc
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        if self._frames is not None:
            self.garbage_before += self._frames.garbage
        self._writer = writer
        self._frames = FrameReader(reader, ChildMessage)
        writer.write(frame(Init(pickle.dumps(self.spec))))
        try:
            async with asyncio.timeout(self.start_timeout_s):
                first = await self._frames.read()
        except (LinkCorrupt, OSError) as exc:  # OSError: also a broken pipe, a timeout
            first = None
            if isinstance(exc, TimeoutError):
                why = f"no answer within {self.start_timeout_s:g} s"
            elif isinstance(exc, ConnectionError):
                why = f"it exited before it was ready ({exc.strerror or exc})"
            else:
                why = str(exc)
        else:
            why = "it exited before it was ready"
        if not isinstance(first, Ready):
            rc = await self._kill()
            raise SafetyProcessError(
                f"the safety process did not start ({why}; exit status {rc}); "
                "see its log lines (safety[pid]) above"
            )
        self.pid = first.pid
        self.starts += 1
        log.info("safety process %d ready (%d rule(s))", first.pid, len(first.rules))
        return first

    def send(self, message: MainMessage) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing() or not self.alive:
            return False
        writer.write(frame(message))
        return True

    async def run(self) -> None:
        """Dispatch the safety process's messages; after an unexpected death cut fail-safe
        (``on_lost``) and start a new one. Returns once stopped; raises
        :class:`SafetyProcessError` when a restart fails."""
        while True:
            frames = self._frames
            assert frames is not None
            try:
                while (message := await frames.read()) is not None:
                    self._dispatch(message)
            except LinkCorrupt as exc:
                self.corrupt += 1
                log.critical("safety process %d: link corrupt (%s); killing it", self.pid, exc)
            except OSError as exc:  # the link broke (reset) with the process
                log.critical("safety process %d: link lost (%s)", self.pid, exc)
            rc = await self._kill()
            if self.stopping:
                return
            self.restarts += 1
            log.critical(
                "safety process %d ended unexpectedly (exit status %s): actuators to their "
                "fail-safe state, then a new safety process",
                self.pid,
                rc,
            )
            try:
                await self.on_lost()
            except Exception:
                log.exception("fail-safe writes after the safety process's death failed")
            await asyncio.sleep(RESTART_DELAY_S)
            ready = await self.start()
            self._dispatch(ready)

    def _dispatch(self, message: ChildMessage) -> None:
        try:
            self.on_message(message)
        except Exception:  # one bad record must not stop the others
            self.dispatch_failures += 1
            log.exception("a message of the safety process failed: %r", type(message).__name__)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the safety process to stop; kill it past ``timeout_s``. Messages it sends
        meanwhile are still dispatched by :meth:`run`."""
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.send(Stop())
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            log.error("safety process %d did not stop within %.1f s: killed", self.pid, timeout_s)
            await self._kill()

    async def _kill(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        rc = await proc.wait()
        if self._writer is not None:
            self._writer.close()
        return rc


def lost_safety_process_writes(pollers: list[BusPoller]) -> Callable[[], Any]:
    """The fail-safe writes after the safety process died: every actuator of its buses
    to its active value, on a connection of the gateway's own (the dead process's are
    gone)."""

    async def cut() -> None:
        results = await asyncio.gather(*(p.fail_safe() for p in pollers), return_exceptions=True)
        for poller, result in zip(pollers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("bus %s: fail-safe writes failed: %r", poller.bus_id, result)
            else:
                log.warning("bus %s: fail-safe writes done: %s", poller.bus_id, result)

    return cut


if __name__ == "__main__":
    # run under the module's own name, so that the pickled ChildSpec is this module's class
    from edge.safety_process import main as _main

    sys.exit(_main())
