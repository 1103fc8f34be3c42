"""Bus polling: one task owns one bus driver and is the only one that talks on it.

The poller is protocol-neutral: the driver plans each device's reads and
decodes them (:class:`device_drivers.DeviceDriver`); the poller keeps what is
generic:

- **schedule**: each device at its own ``poll_ms``, keeping its cadence. A poll
  still running when its next period comes is *skipped and counted*, never
  queued twice: a late poller catches up by skipping, not by bursting.
- **priority class**: among devices due together, those with a safety-class
  tag (``priority: safety`` in the profile: methane, CO, O2...) go first.
- **outputs before reads**: before every read the interlock's due output
  writes go out, so a power cut waits at most for the one read in progress.
- **breaker and the dead lane**: a device that stops answering (timeout, no
  connection) leaves the healthy schedule. It is retried with a short probe
  timeout only when the healthy devices have slack (or after being put off
  for a long while), at its period for a few failures and then every
  ``breaker_retry_s``. A dead slave thus costs its bus-mates at most one
  short probe now and then, not a full timeout every cycle.
- **health**: latency, counts by error kind, last good sample, breaker state,
  skipped polls and achieved period per device; lag of the poller itself.
  :class:`DeviceHealth` is what the rule side reads to tell a silent sensor
  (attempted, failed) from a late gateway (not attempted yet).
- **side reads**: bulk transfers that must share the line (a waveform block on an
  RTU line, :meth:`BusPoller.side_read`) run one request at a time in the
  healthy schedule's slack, never ahead of a due poll or output write.

Every sample goes synchronously to the sink (the rule engine); nothing here
waits on the uplink.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_drivers import (
    DeviceDriver,
    DeviceSpec,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    OutputSpec,
    Quality,
    ReadPlan,
    Sample,
)
from edge.actuation import ActuatorCommand, Interlock
from edge.config import Device, LoadedSite
from edge.drivers import device_spec, output_spec

__all__ = ["BusHealth", "BusPoller", "DeviceHealth"]

log = logging.getLogger("safewatch.edge.polling")

SAFETY, NORMAL = 0, 1  # priority classes: lower goes first

_EWMA = 0.2


class RecentValues:
    """The last ``size`` floats, in an array allocated once.

    A ``deque(maxlen=...)`` of floats grows by about 32 bytes a value (the float
    object and its slot) until it is full, which at 4,096 lags per bus took minutes
    and showed as RSS growth of a gateway under load; this holds 8 bytes a value,
    allocated at start. Iterates oldest first.
    """

    __slots__ = ("_count", "_data", "_next")

    def __init__(self, size: int) -> None:
        self._data = array("d", bytes(8 * size))
        self._next = 0
        self._count = 0

    def append(self, value: float) -> None:
        data = self._data
        data[self._next] = value
        self._next = (self._next + 1) % len(data)
        if self._count < len(data):
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        data = self._data
        if self._count < len(data):
            return iter(data[: self._count])
        return iter(data[self._next :] + data[: self._next])


@dataclass(slots=True)
class DeviceHealth:
    """What the poller knows about one device (monotonic seconds unless ``_ns``)."""

    device: str
    period_s: float
    safety: bool
    polls: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # periods that passed without a poll (late, or held back)
    held_back: int = 0  # periods skipped because the uplink was behind (background only)
    consecutive_failures: int = 0
    last_error: str | None = None
    last_attempt_at: float | None = None  # when the last read finished, good or not
    last_good_at: float | None = None
    last_good_ns: int | None = None  # wall clock of the last good read
    latency_s: float | None = None  # last good read
    latency_avg_s: float | None = None  # EWMA of good reads
    latency_max_s: float = 0.0
    interval_avg_s: float | None = None  # EWMA of the time between poll starts
    intervals: RecentValues = field(default_factory=lambda: RecentValues(512))
    breaker: str = "closed"  # closed | probing | open

    def interval_p99_s(self) -> float | None:
        """99th percentile of the recent times between poll starts (the achieved period)."""
        if not self.intervals:
            return None
        ordered = sorted(self.intervals)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def cannot_meet_period(self) -> bool:
        """Polled more than 10 % slower than configured (or missing periods)."""
        interval = self.interval_avg_s
        return interval is not None and interval > 1.1 * self.period_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "period_ms": round(self.period_s * 1000),
            "safety": self.safety,
            "polls": self.polls,
            "ok": self.ok,
            "errors": dict(self.errors),
            "skipped": self.skipped,
            "held_back": self.held_back,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_good_ns": self.last_good_ns,
            "latency_ms": _ms(self.latency_s),
            "latency_avg_ms": _ms(self.latency_avg_s),
            "latency_max_ms": _ms(self.latency_max_s),
            "interval_avg_ms": _ms(self.interval_avg_s),
            "interval_p99_ms": _ms(self.interval_p99_s()),
            "breaker": self.breaker,
            "cannot_meet_period": self.cannot_meet_period,
        }


@dataclass(slots=True)
class BusHealth:
    bus: str
    reads_ok: int = 0
    reads_failed: int = 0
    skipped: int = 0
    held_back: int = 0
    writes_ok: int = 0
    writes_failed: int = 0
    latency_avg_s: float | None = None
    lag_s: float = 0.0  # how late the last due poll started
    lag_max_s: float = 0.0
    lags: RecentValues = field(default_factory=lambda: RecentValues(4096))

    def jitter_p99_s(self) -> float:
        """99th percentile of how late due polls started (0 when every one was on time)."""
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "bus": self.bus,
            "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed,
            "skipped": self.skipped,
            "held_back": self.held_back,
            "writes_ok": self.writes_ok,
            "writes_failed": self.writes_failed,
            "latency_avg_ms": _ms(self.latency_avg_s),
            "lag_ms": _ms(self.lag_s),
            "lag_max_ms": _ms(self.lag_max_s),
            "jitter_p99_ms": _ms(self.jitter_p99_s()),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + _EWMA * (new - old)


@dataclass(slots=True)
class _Schedule:
    device: Device
    spec: DeviceSpec
    plan: ReadPlan
    priority: int
    health: DeviceHealth
    next_due: float = 0.0
    started_at: float | None = None
    deferred_since: float | None = None  # a probe has been put off since

    @property
    def period_s(self) -> float:
        return self.device.poll_ms / 1000

    @property
    def dead(self) -> bool:
        return self.health.breaker != "closed"


def _wake_up(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


def _poll_order(sched: _Schedule) -> tuple[int, float]:
    return sched.priority, sched.next_due


SampleSink = Callable[[Sample], object]
BlockSink = Callable[[Sequence[Sample]], object]


class BusPoller:
    """Owns one bus: polls its devices and executes its actuator commands."""

    def __init__(
        self,
        site: LoadedSite,
        bus_id: str,
        driver: DeviceDriver,
        sink: SampleSink,
        interlock: Interlock,
        *,
        breaker_after: int = 3,
        breaker_retry_s: float = 5.0,
        probe_timeout_s: float | None = None,
        call_timeout_s: float | None = None,
        backpressure: Callable[[], float] | None = None,
        backpressure_limit: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        block_sink: BlockSink | None = None,
    ) -> None:
        self.bus_id = bus_id
        self.driver = driver
        self.sink = sink
        # takes a whole read (SafetyEngine.handle_block); else ``sink`` gets each sample
        self.block_sink = block_sink
        self.interlock = interlock
        self.breaker_after = breaker_after
        self.breaker_retry_s = breaker_retry_s
        bus = site.bus(bus_id)
        self.timeout_s = bus.timeout_ms / 1000
        # a probe of a dead device must not cost its bus-mates a full timeout
        self._probe_timeout_s = probe_timeout_s
        # the driver applies the bus timeout itself; this is a backstop against a hung driver
        self.call_timeout_s = call_timeout_s or self.timeout_s + 1.0
        self._clock = clock
        # how full the uplink hand-off is (0..1); above the limit background devices wait
        self._backpressure = backpressure
        self.backpressure_limit = backpressure_limit
        self._stopping = False
        self.health = BusHealth(bus_id)
        # side reads waiting for slack: (plan, caller's future, queued at)
        self._side: deque[tuple[ReadPlan, asyncio.Future[Sequence[Sample]], float]] = deque()
        self._nap: asyncio.Future[None] | None = None  # the plain sleep of a bus without outputs
        self._side_cost_s: float | None = None  # longest recent side read
        self.side_reads = 0
        self._schedules: dict[str, _Schedule] = {}
        self._specs: dict[str, DeviceSpec] = {}
        for device in site.config.devices:
            if device.bus != bus_id:
                continue
            spec = device_spec(site, device)
            self._specs[device.id] = spec
            if not device.tags:
                continue
            safety = any(site.profile_of(t).priority == "safety" for t in device.tags)
            self._schedules[device.id] = _Schedule(
                device,
                spec,
                driver.plan(spec),
                SAFETY if safety else NORMAL,
                DeviceHealth(device.id, device.poll_ms / 1000, safety),
            )
        self._outputs: dict[str, tuple[DeviceSpec, OutputSpec]] = {}
        self._active_values: dict[str, bool] = {}
        for act in site.config.actuators:
            if act.device in self._specs:
                self._outputs[act.id] = (self._specs[act.device], output_spec(act))
                self._active_values[act.id] = act.active_value

    # -- introspection (tests, status, the rule side) --------------------------------

    @property
    def reads_ok(self) -> int:
        return self.health.reads_ok

    @property
    def reads_failed(self) -> int:
        return self.health.reads_failed

    @property
    def commands_written(self) -> int:
        return self.health.writes_ok

    @property
    def commands_failed(self) -> int:
        return self.health.writes_failed

    def plan(self, device_id: str) -> ReadPlan:
        return self._schedules[device_id].plan

    def device_health(self, device_id: str) -> DeviceHealth:
        return self._schedules[device_id].health

    def devices(self) -> list[DeviceHealth]:
        return [s.health for s in self._schedules.values()]

    @property
    def safety_class(self) -> bool:
        """The bus carries a safety-class tag or an actuator output: the gateway polls it on
        the safety thread (``edge/fastpath.py``)."""
        return bool(self._outputs) or any(s.priority == SAFETY for s in self._schedules.values())

    def breaker_open(self, device_id: str) -> bool:
        return self._schedules[device_id].health.breaker == "open"

    def read_attempts(self, device_id: str) -> int:
        return self._schedules[device_id].health.polls

    def stop(self) -> None:
        """Leave the loop at the next turn (a cancel that a library swallowed still ends it)."""
        self._stopping = True

    # -- the task --------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled or stopped; closes the driver on the way out."""
        wake = self.interlock.wake_event(self.bus_id)
        try:
            await self._open()
            start = self._clock()
            for sched in self._schedules.values():
                sched.next_due = start
            # a bus without outputs never has a command to write: no look at the interlock
            # three times a read, and its sleep needs no wake event (a plain timer, where the
            # event's timeout cost a cancelled task and two exceptions every cycle)
            outputs = bool(self._outputs)
            while not self._stopping:
                if outputs:
                    await self.execute_commands()
                now = self._clock()
                due = sorted(
                    (s for s in self._schedules.values() if not s.dead and s.next_due <= now),
                    key=_poll_order,
                )
                for sched in due:
                    if self._stopping:
                        return
                    if sched.priority != SAFETY and self._pressed():
                        self._hold_back(sched)
                        continue
                    if outputs:
                        await self.execute_commands()  # actuators first, always
                    await self._poll(sched)
                    if outputs:
                        # fast path: a cut this read decided goes out before the loop yields
                        # to anything else (background buses, uplink, watchdogs)
                        await self.execute_commands()
                await self._probe_one()
                await self._side_reads()
                await self._sleep_until_due(wake if outputs else None)
        finally:
            while self._side:
                _, future, _ = self._side.popleft()
                if not future.done():
                    future.set_exception(DeviceUnavailable(self.bus_id, "bus poller stopped"))
            await self._close()

    async def side_read(self, plan: ReadPlan) -> Sequence[Sample]:
        """Read ``plan`` (keep it to one request) on this bus between its own polls.

        For bulk transfers that must share the line, such as a waveform block on an
        RTU line: it runs when the healthy schedule has room for it (its cost learnt
        from the previous side reads), or after waiting ``side_patience_s`` at most.
        Raises :class:`DriverError` as a read would. Refused on a safety-class bus.
        """
        if self.safety_class:
            raise DeviceUnavailable(
                self.bus_id, "no side reads on a bus with safety-class tags or outputs"
            )
        future: asyncio.Future[Sequence[Sample]] = asyncio.get_running_loop().create_future()
        self._side.append((plan, future, self._clock()))
        self.interlock.wake_event(self.bus_id).set()
        nap = self._nap
        if nap is not None and not nap.done():
            nap.set_result(None)  # a bus without outputs sleeps without the wake event
        return await future

    @property
    def side_patience_s(self) -> float:
        shortest = min((s.period_s for s in self._schedules.values()), default=1.0)
        return max(5.0, 3 * shortest)

    async def _side_reads(self) -> None:
        """Run waiting side reads, oldest first, while the healthy schedule has slack."""
        while not self._stopping and await self._side_one():
            pass

    async def _side_one(self) -> bool:
        """Run the oldest side read if the healthy schedule has slack for it."""
        while self._side and self._side[0][1].done():  # its caller gave up
            self._side.popleft()
        if not self._side:
            return False
        plan, future, since = self._side[0]
        now = self._clock()
        need = self._side_cost_s or max(0.05, 3 * (self.health.latency_avg_s or 0.0))
        if self._next_healthy_due() - now < need and now - since < self.side_patience_s:
            return False
        self._side.popleft()
        await self.execute_commands()
        began = self._clock()
        error: DriverError | None = None
        try:
            async with asyncio.timeout(self.call_timeout_s):
                samples = await self.driver.read(plan)
        except DriverError as exc:
            error = exc
        except TimeoutError:
            error = DeviceTimeout(self.bus_id, "driver did not return")
        if future.done():  # its caller gave up meanwhile
            pass
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(samples)
        if error is None:
            cost = self._clock() - began
            self._side_cost_s = max(cost, 0.8 * (self._side_cost_s or cost))
        self.side_reads += 1
        await asyncio.sleep(0)  # the caller queues its next request
        return True

    def _pressed(self) -> bool:
        return self._backpressure is not None and self._backpressure() > self.backpressure_limit

    def _hold_back(self, sched: _Schedule) -> None:
        """The uplink is behind: a background device skips this period (counted); the
        safety class is never held back."""
        sched.health.skipped += 1
        sched.health.held_back += 1
        self.health.skipped += 1
        self.health.held_back += 1
        sched.next_due += sched.period_s
        sched.started_at = None

    def _next_healthy_due(self) -> float:
        return min((s.next_due for s in self._schedules.values() if not s.dead), default=math.inf)

    async def _probe_one(self) -> None:
        """Retry the most overdue dead device, if the healthy schedule has room for it."""
        now = self._clock()
        dead = [s for s in self._schedules.values() if s.dead and s.next_due <= now]
        if not dead:
            return
        sched = min(dead, key=lambda s: (s.priority, s.next_due))
        timeout = self.probe_timeout(sched.device.id)
        slack = self._next_healthy_due() - now
        if slack < timeout:
            if sched.deferred_since is None:
                sched.deferred_since = now
            # never starve a dead device: after a while it is probed even without slack
            patience = 3 * sched.period_s
            if sched.health.breaker == "open":
                patience = max(patience, self.breaker_retry_s)
            if now - sched.deferred_since < patience:
                return
        sched.deferred_since = None
        await self.execute_commands()
        await self._poll(sched, timeout_s=timeout)

    def probe_timeout(self, device_id: str) -> float:
        """Timeout for probing a silent device: a few times what an answer normally takes
        (its own last good latency, else the bus's), at least 50 ms, at most the bus timeout."""
        if self._probe_timeout_s is not None:
            return self._probe_timeout_s
        health = self._schedules[device_id].health
        typical = health.latency_max_s or self.health.latency_avg_s or 0.0
        return min(self.timeout_s, max(0.05, 3 * typical))

    async def _sleep_until_due(self, wake: asyncio.Event | None) -> None:
        """Until the next poll (or probe, or command) is due; ``wake`` (None: the bus has
        no outputs) cuts the sleep short when a command becomes due."""
        now = self._clock()
        wake_at = min((s.next_due for s in self._schedules.values()), default=math.inf)
        if self._side:  # a side read out of patience runs at the latest then
            wake_at = min(wake_at, self._side[0][2] + self.side_patience_s)
        if any(s.deferred_since is not None for s in self._schedules.values()):
            wake_at = min(wake_at, self._next_healthy_due())
        if wake is not None:
            command_due = self.interlock.next_due(self.bus_id, now)
            if command_due is not None:
                wake_at = min(wake_at, command_due)
        delay = wake_at - now
        if delay <= 0:
            await asyncio.sleep(0)  # let other tasks run between busy cycles
            return
        if math.isinf(delay):
            delay = 1.0  # no devices to poll: still look for commands now and then
        if wake is None:
            # one future and one timer: woken early only by a side read (side_read)
            loop = asyncio.get_running_loop()
            nap = self._nap = loop.create_future()
            timer = loop.call_later(delay, _wake_up, nap)
            try:
                await nap
            finally:
                timer.cancel()
                self._nap = None
            return
        wake.clear()
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            pass

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.open()
        except (DriverError, TimeoutError) as exc:
            # reads will keep failing (BAD samples) until the driver reconnects
            log.warning("bus %s: cannot connect yet: %s", self.bus_id, exc)

    async def _close(self) -> None:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.close()
        except (DriverError, TimeoutError) as exc:
            log.warning("bus %s: close failed: %s", self.bus_id, exc)

    # -- actuator commands -----------------------------------------------------------

    async def execute_commands(self) -> None:
        """Write every actuator command due on this bus now."""
        commands = self.interlock.take_commands(self.bus_id, self._clock())
        for i, command in enumerate(commands):
            try:
                await self._write(command)
            except BaseException:
                self.interlock.release_in_flight(commands[i:])
                raise

    async def _write(self, command: ActuatorCommand) -> None:
        target = self._outputs.get(command.actuator)
        if target is None:  # pragma: no cover - the interlock only hands out this bus's outputs
            self.interlock.write_failed(command, "unknown output", self._clock())
            return
        device, output = target
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self.driver.write(device, output, command.coil_value)
        except DriverError as exc:
            self.health.writes_failed += 1
            self.interlock.write_failed(command, f"{exc.reason}: {exc}", self._clock())
        except TimeoutError:
            self.health.writes_failed += 1
            self.interlock.write_failed(command, "timeout: driver did not return", self._clock())
        else:
            self.health.writes_ok += 1
            self.interlock.write_succeeded(command, self._clock())

    async def fail_safe(self) -> list[str]:
        """Connect, write every output of this bus to its active value (power cut, horn
        sounding), disconnect; returns the outputs written. For the gateway when the
        safety process that owned this bus died (``edge/safety_process.py``); never
        while this poller runs."""
        written: list[str] = []
        await self._open()
        try:
            for actuator, (device, output) in self._outputs.items():
                try:
                    async with asyncio.timeout(self.call_timeout_s):
                        await self.driver.write(device, output, self._active_values[actuator])
                except (DriverError, TimeoutError) as exc:
                    log.error(
                        "bus %s: fail-safe write of %s failed: %r", self.bus_id, actuator, exc
                    )
                else:
                    written.append(actuator)
        finally:
            await self._close()
        return written

    # -- reading ---------------------------------------------------------------------

    async def _poll(self, sched: _Schedule, timeout_s: float | None = None) -> None:
        health = sched.health
        began = self._clock()
        period = sched.period_s
        if not sched.dead:
            # keep the grid; periods that passed without a poll are skipped and counted
            late = max(0.0, began - sched.next_due)
            missed = int(late // period)
            if missed:
                health.skipped += missed
                self.health.skipped += missed
            self.health.lag_s = late
            self.health.lag_max_s = max(self.health.lag_max_s, late)
            self.health.lags.append(late)
            sched.next_due += (missed + 1) * period
            if sched.started_at is not None:
                interval = began - sched.started_at
                health.interval_avg_s = _ewma(health.interval_avg_s, interval)
                health.intervals.append(interval)
            sched.started_at = began
        health.polls += 1
        error: DriverError | None = None
        samples: Any = ()
        try:
            async with asyncio.timeout((timeout_s or self.timeout_s) + 1.0):
                samples = await self.driver.read(sched.plan, timeout_s=timeout_s)
        except DriverError as exc:
            error = exc
        except TimeoutError:
            error = DeviceTimeout(sched.device.id, "driver did not return")
        finished = self._clock()
        health.last_attempt_at = finished
        if error is not None:
            self._failed(sched, error, finished)
            return
        latency = finished - began
        health.ok += 1
        health.latency_s = latency
        health.latency_avg_s = _ewma(health.latency_avg_s, latency)
        health.latency_max_s = max(health.latency_max_s, latency)
        health.last_good_at = finished
        health.last_good_ns = time.time_ns()
        self.health.reads_ok += 1
        self.health.latency_avg_s = _ewma(self.health.latency_avg_s, latency)
        if self.block_sink is not None:
            self.block_sink(samples)  # the whole read at once (columnar fast path)
        else:
            sink = self.sink
            for sample in samples:
                sink(sample)
        health.consecutive_failures = 0
        if health.breaker != "closed":
            log.info(
                "device %s answers again; polling every %d ms",
                sched.device.id,
                sched.device.poll_ms,
            )
            health.breaker = "closed"
            sched.started_at = None
            sched.next_due = finished + period

    def _failed(self, sched: _Schedule, exc: DriverError, now: float) -> None:
        health = sched.health
        reason = exc.reason
        health.errors[reason] += 1
        health.last_error = f"{reason}: {exc.message}"
        health.consecutive_failures += 1
        self.health.reads_failed += 1
        if health.consecutive_failures == 1:
            log.warning("device %s: read failed (%s): %s", sched.device.id, reason, exc.message)
        ts = time.time_ns()
        device = sched.device.id
        for point in sched.spec.points:
            self.sink(Sample(point.name, device, None, Quality.BAD, ts, reason))
        silent = isinstance(exc, DeviceTimeout | DeviceUnavailable)
        period = sched.period_s
        if silent and health.consecutive_failures >= self.breaker_after:
            if health.breaker != "open":
                log.warning(
                    "device %s failed %d polls in a row; probing it every %.1f s",
                    device,
                    health.consecutive_failures,
                    self.breaker_retry_s,
                )
            health.breaker = "open"
            period = max(period, self.breaker_retry_s)
        elif silent:
            health.breaker = "probing"  # retried with a short timeout, outside the schedule
        if silent:
            sched.started_at = None
            sched.next_due = now + period
