"""Notifications that reach people: apprise URLs (webhooks, e-mail, SMS gateways, bots)
routed by area and priority, rate-limited, escalated when nobody acknowledges.

The gateway notifies by itself (it does not need the cloud). A raise (an alarm event
in state ``unacknowledged`` that was not so before) goes to every route whose areas
and lowest priority match; each route sends at most ``max_per_minute`` messages a
minute and sums up the rest in one message when the minute is over. A route with
``shifts`` only hears of alarms raised during those shifts of the site's shift calendar
(``alarms.shifts``).

Escalation walks the route's on-call list: an alarm still ``unacknowledged``
``escalate_after_s`` after it was raised goes to ``escalate_to[0]``, another
``escalate_after_s`` later to ``escalate_to[1]``, and so on. Each step is an APScheduler
job in a SQL job store (SQLite beside the alarm database), so a restarted gateway runs the
steps that fell due while it was down and keeps the later ones; each step done is recorded
in the alarm database, so it is never repeated. Sending happens in a worker thread: a slow
mail server never holds the safety loop.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import apprise
from apprise.manager_plugins import NotificationManager
from apprise.plugins.dingtalk import NotifyDingTalk
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

import wire
from edge.alarm_manager import UNACK, AlarmStore
from edge.config._models import NotificationRoute, Shift

__all__ = ["Notifier", "channel_name", "send", "shift_at"]

log = logging.getLogger("safewatch.edge.notify")

_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# the notifiers whose scheduled escalations run in this process, by job-store key:
# APScheduler stores a job as a function reference and its arguments, not the object
_RUNNING: dict[str, Notifier] = {}


def shift_at(shifts: Sequence[Shift], when: dt.datetime, tz: str = "UTC") -> str | None:
    """The name of the shift on duty at ``when`` (the first that matches), else None.

    A shift whose end is not after its start runs overnight: it belongs to the day it
    starts on.
    """
    local = when.astimezone(zoneinfo.ZoneInfo(tz))
    clock, today = local.time(), _DAYS[local.weekday()]
    yesterday = _DAYS[(local.weekday() - 1) % 7]
    for shift in shifts:
        if shift.start < shift.end:
            if today in shift.days and shift.start <= clock < shift.end:
                return shift.name
        elif (today in shift.days and clock >= shift.start) or (
            yesterday in shift.days and clock < shift.end
        ):
            return shift.name
    return None


async def _escalation_job(key: str, alarm_id: str, route: str, step: int) -> None:
    """An escalation step fell due (run by the scheduler, also after a restart)."""
    notifier = _RUNNING.get(key)
    if notifier is None:
        log.error("escalation %s/%s step %d: no notifier running for %s", alarm_id, route,
                  step, key)  # fmt: skip
        return
    notifier.escalate(alarm_id, route, step)


class _DingTalkSignedOnce(NotifyDingTalk):  # type: ignore[no-untyped-call]
    """apprise's DingTalk plugin (2.3) percent-encodes the signature of a signed bot
    (``dingtalk://<secret>@<token>/``) and ``requests`` encodes the query again: DingTalk
    decodes once, answers ``sign not match`` (errcode 310000, with HTTP 200, so apprise counts
    it delivered) and nobody hears of the alarm. Found by tests/contract/
    test_alarm_notify_channels.py, which checks the signature as DingTalk does. Here the
    signature goes out raw and ``requests`` encodes it once (``unquote`` leaves raw base64
    as it is, should apprise fix it)."""

    def get_signature(self) -> tuple[str, str]:
        timestamp, signature = super().get_signature()  # type: ignore[no-untyped-call]
        return timestamp, unquote(signature)


NotificationManager().add(_DingTalkSignedOnce, force=True)  # type: ignore[no-untyped-call]


def channel_name(url: str) -> str:
    """A channel as logs may name it: apprise's privacy form of the URL (secrets masked,
    e.g. ``dingtalk://****@t...6/``) without its options."""
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return f"{url.split('://', 1)[0]}:// (not understood by apprise)"
    return str(plugin.url(privacy=True)).split("?", 1)[0]  # type: ignore[no-untyped-call]


def send(urls: Sequence[str], title: str, body: str) -> bool:
    """Deliver one message to every channel (apprise URL) on its own, so that a channel that
    refuses, is down, is not understood or raises is logged by name and never keeps the
    others from theirs; True when every channel took it."""
    delivered = True
    for url in urls:
        name = channel_name(url)
        sender = apprise.Apprise()
        try:
            ok = bool(sender.add(url)) and bool(sender.notify(body=body, title=title))
        except Exception:  # a plugin's bug must not cost the other channels their message
            log.exception("notification channel %s raised; %r not delivered there", name, title)
            ok = False
        else:
            if not ok:
                log.error("notification channel %s failed; %r not delivered there", name, title)
        delivered = delivered and ok
    return delivered


@dataclass
class _Window:
    start: float = 0.0
    sent: int = 0
    held: list[str] = field(default_factory=list)


class Notifier:
    """Decides who hears of what; ``send`` is the delivery (apprise by default)."""

    def __init__(
        self,
        routes: Sequence[NotificationRoute],
        store: AlarmStore,
        *,
        areas: dict[str, str] | None = None,
        sender: Callable[[Sequence[str], str, str], bool] = send,
        clock: Callable[[], float] = time.monotonic,
        in_flood: Callable[[str], bool] = lambda _console: False,
        shifts: Sequence[Shift] = (),
        timezone: str = "UTC",
        jobs_path: Path | None = None,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.routes = list(routes)
        self.shifts = list(shifts)
        self.timezone = timezone
        self._now = wall_clock
        self._by_name = {route.name: route for route in self.routes}
        # escalation steps: APScheduler jobs, persisted in SQLite when jobs_path is given
        self.jobs_key = str(jobs_path) if jobs_path is not None else f"memory:{id(self)}"
        store_ = (
            SQLAlchemyJobStore(url=f"sqlite:///{jobs_path}")
            if jobs_path is not None
            else MemoryJobStore()
        )
        self.scheduler = AsyncIOScheduler(
            jobstores={"default": store_},
            job_defaults={"misfire_grace_time": 7 * 86400, "coalesce": True},
            timezone=dt.UTC,
        )
        self.escalations = 0
        self.store = store
        self.areas = areas or {}  # tag -> area, for escalations
        self._send = sender
        self._clock = clock
        self._windows = [_Window() for _ in self.routes]
        self._queue: asyncio.Queue[tuple[list[str], str, str]] = asyncio.Queue(maxsize=1000)
        self.sent = 0
        self.failed = 0
        self.limited = 0
        self.dropped = 0
        self.in_flood = in_flood  # whether an operator console (event.console) is flooded
        # raises summarised by a flood message instead of sent, per console
        self._flood_held: collections.Counter[str] = collections.Counter()

    @property
    def flood_held(self) -> int:
        return sum(self._flood_held.values())

    def _flood(self, event: wire.AlarmEvent) -> None:
        """A flood's start or end: one message to every route, outside the rate limit."""
        start = event.level != "normal"
        console = f" console {event.area}" if event.area != "site-wide" else ""
        title = f"[flood] {event.site}/{event.gateway}{console} " + (
            "alarm flood" if start else "flood over"
        )
        body = event.message
        if not start:
            held = self._flood_held.pop(event.console, 0)
            body += f"; {held} notifications held during the flood"
        for urls in dict.fromkeys(tuple(route.urls) for route in self.routes):
            self._enqueue(list(urls), title, body)

    def on_event(self, event: wire.AlarmEvent) -> None:
        """Called for every alarm event the gateway emits (never blocks).

        During an alarm flood (``in_flood``) only critical raises are sent one by one;
        the others are counted and every route gets the flood's start and end summary.
        """
        if event.kind == "flood":
            self._flood(event)
            return
        if event.state != UNACK or event.kind == "alarm_state" or event.previous != "normal":
            return
        title = f"[{event.priority or 'alarm'}] {event.site}/{event.tag} {event.level}"
        for i, route in enumerate(self.routes):
            if not self._matches(route, event.area, event.priority):
                continue
            self._schedule(event.alarm_id, route, 0, self._now())
            if self.in_flood(event.console) and event.priority != "critical":
                self._flood_held[event.console] += 1
                continue
            self._limited(i, route, title, event.message)

    def _matches(self, route: NotificationRoute, area: str, priority: str) -> bool:
        if route.areas and area not in route.areas:
            return False
        if route.shifts and shift_at(self.shifts, self._now(), self.timezone) not in route.shifts:
            return False
        return _RANK.get(priority, 1) >= _RANK[route.min_priority]

    # -- escalation along the on-call list ---------------------------------------------------

    def _job_id(self, alarm_id: str, route: str, step: int) -> str:
        return f"escalate|{alarm_id}|{route}|{step}"

    def _schedule(
        self, alarm_id: str, route: NotificationRoute, step: int, after: dt.datetime
    ) -> bool:
        """Schedule escalation ``step`` of ``route`` for the alarm ``escalate_after_s``
        after ``after``; False when the route does not escalate that far."""
        if route.escalate_after_s is None or step >= len(route.escalate_to):
            return False
        when = after + dt.timedelta(seconds=route.escalate_after_s)
        self.scheduler.add_job(
            _escalation_job,
            "date",
            run_date=when,
            args=[self.jobs_key, alarm_id, route.name, step],
            id=self._job_id(alarm_id, route.name, step),
            replace_existing=True,
        )
        return True

    def escalate(self, alarm_id: str, route_name: str, step: int) -> bool:
        """Run escalation ``step``: tell ``escalate_to[step]`` when the alarm is still
        unacknowledged and the step was not done before; schedule the next step."""
        route = self._by_name.get(route_name)
        rec = self.store.get(alarm_id)
        if route is None or rec is None or rec.state != UNACK or step >= len(route.escalate_to):
            return False
        done_as = f"{route.name}#{step}"
        if self.store.escalated(rec.alarm_id, done_as):
            return False
        self.store.record_escalation(rec, done_as)
        self.escalations += 1
        minutes = (time.time_ns() - rec.since_ns) / 60e9
        self._enqueue(
            [route.escalate_to[step]],
            f"[escalation {step + 1}/{len(route.escalate_to)}] {rec.tag} {rec.level} "
            f"unacknowledged for {minutes:.0f} min",
            f"alarm {rec.alarm_id} ({rec.key}, {rec.priority}) raised and not acknowledged; "
            f"route {route.name}, on-call step {step + 1}",
        )
        self._schedule(rec.alarm_id, route, step + 1, self._now())
        return True

    def pending_escalations(self) -> list[tuple[str, dt.datetime]]:
        """(job id, when) of the scheduled escalation steps."""
        return [(job.id, job.next_run_time or job.trigger.run_date)
                for job in self.scheduler.get_jobs()]  # fmt: skip

    def _limited(self, i: int, route: NotificationRoute, title: str, body: str) -> None:
        window = self._windows[i]
        now = self._clock()
        if now - window.start >= 60.0:
            self._flush_held(i, route)
            window.start, window.sent = now, 0
        if window.sent >= route.max_per_minute:
            self.limited += 1
            window.held.append(title)
            return
        window.sent += 1
        self._enqueue(list(route.urls), title, body)

    def _flush_held(self, i: int, route: NotificationRoute) -> None:
        window = self._windows[i]
        if window.held:
            shown = "\n".join(window.held[:20])
            more = f"\n... and {len(window.held) - 20} more" if len(window.held) > 20 else ""
            self._enqueue(
                list(route.urls),
                f"{len(window.held)} more alarms (rate limit)",
                f"{shown}{more}",
            )
            window.held.clear()

    def _enqueue(self, urls: list[str], title: str, body: str) -> None:
        try:
            self._queue.put_nowait((urls, title, body))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("notification queue full: %s not sent", title)

    def check(self) -> None:
        """Rate-limit summaries whose minute is over, and escalations for unacknowledged
        alarms that have none scheduled (raised before the route existed, unshelved...)."""
        for i, route in enumerate(self.routes):
            if self._clock() - self._windows[i].start >= 60.0 and self._windows[i].held:
                self._flush_held(i, route)
                self._windows[i].start, self._windows[i].sent = self._clock(), 0
            if route.escalate_after_s is None or not route.escalate_to:
                continue
            for rec in self.store.alarms():
                if rec.state != UNACK:
                    continue
                if not self._matches(route, self.areas.get(rec.tag, ""), rec.priority):
                    continue
                step = next(
                    (k for k in range(len(route.escalate_to))
                     if not self.store.escalated(rec.alarm_id, f"{route.name}#{k}")),
                    None,
                )  # fmt: skip
                if step is None or self.scheduler.get_job(
                    self._job_id(rec.alarm_id, route.name, step)
                ):
                    continue
                since = dt.datetime.fromtimestamp(rec.since_ns / 1e9, dt.UTC)
                base = since + dt.timedelta(seconds=route.escalate_after_s * step)
                self._schedule(rec.alarm_id, route, step, base)

    async def run(self, check_s: float = 5.0) -> None:
        """Deliver queued messages (worker thread) and check escalations, until cancelled."""

        async def checker() -> None:
            while True:
                self.check()
                await asyncio.sleep(check_s)

        _RUNNING[self.jobs_key] = self
        self.scheduler.start()
        task = asyncio.create_task(checker(), name="notify-check")
        try:
            while True:
                urls, title, body = await self._queue.get()
                try:
                    ok = await asyncio.to_thread(self._send, urls, title, body)
                except Exception:
                    log.exception("notification %r failed", title)
                    ok = False
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.scheduler.shutdown(wait=False)
            if _RUNNING.get(self.jobs_key) is self:
                del _RUNNING[self.jobs_key]
