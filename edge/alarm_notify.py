"""Notifications that reach people: apprise URLs (webhooks, e-mail, SMS gateways, bots)
routed by area and priority, rate-limited, escalated when nobody acknowledges.

The gateway notifies by itself (it does not need the cloud). A raise (an alarm event
in state ``unacknowledged`` that was not so before) goes to every route whose areas
and lowest priority match; each route sends at most ``max_per_minute`` messages a
minute and sums up the rest in one message when the minute is over. An alarm still
``unacknowledged`` ``escalate_after_s`` after it was raised goes to the route's
``escalate_to`` URLs once; the escalation is recorded in the alarm database, so a
restarted gateway neither forgets nor repeats it. Sending happens in a worker thread:
a slow mail server never holds the safety loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import apprise

import wire
from edge.alarm_manager import UNACK, AlarmStore
from edge.config._models import NotificationRoute

__all__ = ["Notifier"]

log = logging.getLogger("safewatch.edge.notify")

_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def send(urls: Sequence[str], title: str, body: str) -> bool:
    """Deliver one message with apprise; False when any URL failed."""
    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            log.warning("notification URL not understood by apprise: %s", url.split(":", 1)[0])
    return bool(sender.notify(body=body, title=title))


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
    ) -> None:
        self.routes = list(routes)
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

    def on_event(self, event: wire.AlarmEvent) -> None:
        """Called for every alarm event the gateway emits (never blocks)."""
        if event.state != UNACK or event.kind == "alarm_state" or event.previous != "normal":
            return
        title = f"[{event.priority or 'alarm'}] {event.site}/{event.tag} {event.level}"
        for i, route in enumerate(self.routes):
            if not self._matches(route, event.area, event.priority):
                continue
            self._limited(i, route, title, event.message)

    def _matches(self, route: NotificationRoute, area: str, priority: str) -> bool:
        if route.areas and area not in route.areas:
            return False
        return _RANK.get(priority, 1) >= _RANK[route.min_priority]

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
        """Escalations due and rate-limit summaries whose minute is over."""
        now_ns = time.time_ns()
        for i, route in enumerate(self.routes):
            if self._clock() - self._windows[i].start >= 60.0 and self._windows[i].held:
                self._flush_held(i, route)
                self._windows[i].start, self._windows[i].sent = self._clock(), 0
            if route.escalate_after_s is None or not route.escalate_to:
                continue
            for rec in self.store.alarms():
                if rec.state != UNACK or now_ns - rec.since_ns < route.escalate_after_s * 1e9:
                    continue
                if not self._matches(route, self.areas.get(rec.tag, ""), rec.priority):
                    continue
                if self.store.escalated(rec.alarm_id, route.name):
                    continue
                self.store.record_escalation(rec, route.name)
                minutes = (now_ns - rec.since_ns) / 60e9
                self._enqueue(
                    list(route.escalate_to),
                    f"[escalation] {rec.tag} {rec.level} unacknowledged for {minutes:.0f} min",
                    f"alarm {rec.alarm_id} ({rec.key}, {rec.priority}) raised and not "
                    f"acknowledged; route {route.name}",
                )

    async def run(self, check_s: float = 5.0) -> None:
        """Deliver queued messages (worker thread) and check escalations, until cancelled."""

        async def checker() -> None:
            while True:
                self.check()
                await asyncio.sleep(check_s)

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
