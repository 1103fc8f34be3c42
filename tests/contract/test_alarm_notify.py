"""Notifications through apprise to a local HTTP receiver: routing, rate limit, escalation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import wire
from edge.alarm_manager import AlarmStore
from edge.alarm_notify import Notifier
from edge.config._models import NotificationRoute
from tests.factories import alarm
from tests.support import async_wait_until


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, object]]] = []
        received = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def paths(self) -> list[str]:
        return [p for p, _ in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def raised(i: int, area: str, priority: str) -> wire.AlarmEvent:
    ev = alarm(i, tag=f"T{i}", level="alarm", previous="normal", area=area)
    return wire.AlarmEvent(**{**{f: getattr(ev, f) for f in ev.__struct_fields__},
                              "state": "unacknowledged", "priority": priority})  # fmt: skip


async def test_routing_and_rate_limit(receiver: Receiver, tmp_path: Path) -> None:
    now = [1000.0]
    store = AlarmStore(tmp_path / "a.sqlite")
    routes = [
        NotificationRoute(name="panel", urls=(receiver.url("panel"),), areas=("panel-1",),
                          min_priority="high", max_per_minute=2),
        NotificationRoute(name="other", urls=(receiver.url("other"),), areas=("shaft",)),
    ]  # fmt: skip
    notifier = Notifier(routes, store, clock=lambda: now[0])
    task = asyncio.create_task(notifier.run(check_s=0.05))
    try:
        notifier.on_event(raised(1, "panel-1", "low"))  # below the route's priority
        for i in range(2, 7):
            notifier.on_event(raised(i, "panel-1", "critical"))
        await async_wait_until(lambda: len(receiver.got) >= 2, 10, "two messages")
        assert notifier.limited == 3
        now[0] += 61
        # sent counts after apprise returns, a moment after the receiver has the message
        await async_wait_until(lambda: notifier.sent >= 3, 10, "the rate-limit summary")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert receiver.paths() == ["/panel"] * 3
    summary = receiver.got[2][1]
    assert "3 more alarms" in str(summary["title"]) and "T6" in str(summary["message"])
    assert notifier.sent == 3 and notifier.failed == 0


async def test_escalation_once_and_not_again_after_a_restart(
    receiver: Receiver, tmp_path: Path
) -> None:
    store = AlarmStore(tmp_path / "a.sqlite")
    ten_min_ago = time.time_ns() - 600 * 10**9
    store.on_condition("CH4-1", "CH4-1", "cut", kind="ch4", fail_safe=True, reason="above_cut",
                       ts_ns=ten_min_ago)  # fmt: skip
    acked = store.on_condition("CH4-2", "CH4-2", "cut", kind="ch4", fail_safe=True,
                               reason="above_cut", ts_ns=ten_min_ago)  # fmt: skip
    store.act(acked.alarm_id, "acknowledge", actor="op")
    route = NotificationRoute(
        name="oncall",
        urls=(receiver.url("first"),),
        min_priority="high",
        escalate_after_s=300,
        escalate_to=(receiver.url("boss"),),
    )
    notifier = Notifier([route], store)
    task = asyncio.create_task(notifier.run(check_s=0.05))
    try:
        await async_wait_until(lambda: receiver.got, 10, "the escalation")
        notifier.check()
        await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert receiver.paths() == ["/boss"]
    assert "CH4-1" in str(receiver.got[0][1]["title"])
    store.close()
    reopened = AlarmStore(tmp_path / "a.sqlite")
    again = Notifier([route], reopened)
    again.check()
    assert again._queue.empty(), "a restarted gateway does not escalate the same alarm again"
    assert again.pending_escalations() == [], "nor schedules it: the on-call list is done"


async def test_the_gateway_notifies_a_cut_by_itself(receiver: Receiver, tmp_path: Path) -> None:
    """No broker at all: the gateway still tells the on-call route of the cut."""
    from device_drivers import DeviceDriver
    from edge.config import LoadedSite
    from edge.gateway import Gateway
    from tests.unit.test_polling import FakeBus, f32, make_site

    base = make_site(poll_ms=50)
    route = NotificationRoute(name="oncall", urls=(receiver.url("oncall"),), min_priority="high")
    config = base.config.model_copy(update={"notifications": (route,)})
    site = LoadedSite(source="test", config=config, profiles=base.profiles)
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])

    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(site, buffer_path=tmp_path / "buf.db", mqtt_host="127.0.0.1",
                      mqtt_port=1, driver_factory=factory, drain_s=0.3)  # fmt: skip
    task = asyncio.create_task(gateway.run())
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 10, "power released")
        receiver.got.clear()  # the start-up cut (no saved state) was notified too
        bus.set(1, "holding", 0, f32(1.8))
        await async_wait_until(
            lambda: any("CH4_A cut" in str(m["title"]) for _, m in receiver.got),
            10,
            "the cut notified",
        )
        counters = gateway.counters()
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)
    assert receiver.paths()[-1] == "/oncall"
    assert counters["notifications_failed"] == 0 and counters["notifications_sent"] >= 1
