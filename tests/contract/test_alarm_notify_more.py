"""Notifications that reach people, part two: e-mail through a local SMTP server, routing
by the shift calendar, escalation along the on-call list as APScheduler jobs in a SQL job
store that survive a restart, and the local horn and beacon silenced by acknowledgement."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from edge.alarm_manager import AlarmStore
from edge.alarm_notify import Notifier, shift_at
from edge.config import LoadedSite
from edge.config._models import NotificationRoute, Shift, SiteConfig
from tests.contract.test_alarm_notify import Receiver, raised, receiver  # noqa: F401
from tests.support import async_wait_until, free_port
from tests.unit.test_polling import FakeBus, f32, make_site


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


async def _running(notifier: Notifier) -> asyncio.Task[None]:
    return asyncio.create_task(notifier.run(check_s=0.05), name="notifier")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_alarm_is_mailed_through_a_local_smtp_server(
    smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    url = f"mailto://127.0.0.1:{port}?to=shift@mine.example&from=gw1@mine.example&mode=insecure"
    route = NotificationRoute(name="mail", urls=(url,), min_priority="high")
    notifier = Notifier([route], AlarmStore(tmp_path / "a.sqlite"))
    task = await _running(notifier)
    try:
        notifier.on_event(raised(7, "panel-1", "critical"))
        await async_wait_until(lambda: notifier.sent == 1, 20, "the mail sent")
    finally:
        await _stop(task)
    ((sender, to, content),) = box.mails
    assert (sender, to) == ("gw1@mine.example", ["shift@mine.example"])
    assert b"Subject: [critical]" in content and b"/T7 alarm" in content


SHIFTS = (
    Shift(name="day", start=dt.time(6), end=dt.time(18), days=("mon", "tue", "wed", "thu", "fri")),
    Shift(name="night", start=dt.time(18), end=dt.time(6)),
)


def test_the_shift_calendar_knows_overnight_shifts_and_time_zones() -> None:
    monday = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    assert shift_at(SHIFTS, monday) == "day"
    assert shift_at(SHIFTS, monday.replace(hour=23)) == "night"
    assert shift_at(SHIFTS, monday.replace(day=24, hour=3)) == "night", "after midnight"
    saturday = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    assert shift_at(SHIFTS, saturday) is None, "no day shift at the weekend"
    # 02:00 UTC is 10:00 in Shanghai: the day shift there
    assert shift_at(SHIFTS, monday.replace(hour=2), "Asia/Shanghai") == "day"


async def test_routes_hear_only_of_alarms_in_their_shift(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    now = [dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)]  # a Monday morning
    routes = [
        NotificationRoute(name="day-crew", urls=(receiver.url("day"),), shifts=("day",)),
        NotificationRoute(name="night-crew", urls=(receiver.url("night"),), shifts=("night",)),
        NotificationRoute(name="manager", urls=(receiver.url("always"),), min_priority="critical"),
    ]
    notifier = Notifier(routes, AlarmStore(tmp_path / "a.sqlite"), shifts=SHIFTS,
                        wall_clock=lambda: now[0])  # fmt: skip
    task = await _running(notifier)
    try:
        notifier.on_event(raised(1, "panel-1", "critical"))
        await async_wait_until(lambda: notifier.sent == 2, 10, "day crew and manager")
        now[0] = now[0].replace(hour=22)
        notifier.on_event(raised(2, "panel-1", "high"))
        await async_wait_until(lambda: notifier.sent == 3, 10, "the night crew")
    finally:
        await _stop(task)
    assert sorted(receiver.paths()) == ["/always", "/day", "/night"]
    night = next(m for p, m in receiver.got if p == "/night")
    assert "/T2 " in str(night["title"])


async def test_escalation_walks_the_on_call_list_across_a_restart(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    db = tmp_path / "alarms.sqlite"
    jobs = tmp_path / "alarm-jobs.sqlite"
    store = AlarmStore(db)
    rec = store.on_condition("CH4-1", "CH4-1", "cut", kind="ch4", fail_safe=True,
                             reason="above_cut", ts_ns=time.time_ns())  # fmt: skip
    route = NotificationRoute(
        name="oncall",
        urls=(receiver.url("crew"),),
        min_priority="high",
        escalate_after_s=1.5,
        escalate_to=(receiver.url("deputy"), receiver.url("manager")),
    )
    event = raised(1, "panel-1", "critical")
    event = type(event)(**{**{f: getattr(event, f) for f in event.__struct_fields__},
                           "alarm_id": rec.alarm_id, "tag": "CH4-1"})  # fmt: skip
    first = Notifier([route], store, jobs_path=jobs)
    task = await _running(first)
    try:
        first.on_event(event)
        await async_wait_until(lambda: first.sent == 1, 10, "the crew told")
    finally:
        await _stop(task)  # the gateway stops before the escalation is due
    assert receiver.paths() == ["/crew"]
    with sqlite3.connect(jobs) as conn:  # the step waits in the SQL job store
        (stored,) = conn.execute("SELECT id FROM apscheduler_jobs").fetchall()
    assert stored == (f"escalate|{rec.alarm_id}|oncall|0",)

    second = Notifier([route], AlarmStore(db), jobs_path=jobs)  # the restarted gateway
    task = await _running(second)
    try:
        await async_wait_until(lambda: second.sent == 1, 15, "the deputy told after restart")
        assert receiver.paths()[-1] == "/deputy"
        await async_wait_until(lambda: second.sent == 2, 15, "then the manager")
        assert receiver.paths()[-1] == "/manager"
    finally:
        await _stop(task)
    assert second.pending_escalations() == [], "the on-call list is done"
    done = [c.actor for c in AlarmStore(db).history() if c.action == "escalate"]
    assert done == ["oncall#0", "oncall#1"], "each step once, recorded"

    third = Notifier([route], AlarmStore(db), jobs_path=jobs)
    third.check()
    assert third.pending_escalations() == [] and third._queue.empty(), "nothing repeats"


async def test_an_acknowledged_alarm_is_not_escalated(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = AlarmStore(tmp_path / "alarms.sqlite")
    rec = store.on_condition("CH4-1", "CH4-1", "cut", kind="ch4", fail_safe=True,
                             reason="above_cut", ts_ns=1)  # fmt: skip
    route = NotificationRoute(name="oncall", urls=(receiver.url("crew"),), escalate_after_s=0.5,
                              escalate_to=(receiver.url("deputy"),))  # fmt: skip
    store.act(rec.alarm_id, "acknowledge", actor="op")
    notifier = Notifier([route], store, jobs_path=tmp_path / "jobs.sqlite")
    notifier.check()  # an acknowledged alarm gets no job
    assert notifier.pending_escalations() == []
    assert notifier.escalate(rec.alarm_id, "oncall", 0) is False
    assert receiver.got == []


async def test_the_horn_sounds_until_acknowledged_the_beacon_until_cleared(
    tmp_path: Path,
) -> None:
    from device_drivers import DeviceDriver
    from edge.gateway import Gateway

    base = make_site(poll_ms=50)
    raw = base.config.model_dump(mode="json", exclude_none=True)
    raw["actuators"] += [
        {"id": "horn", "kind": "horn", "device": "breaker", "coil": 1, "protocol": "modbus"},
        {"id": "beacon", "kind": "light", "device": "breaker", "coil": 2, "protocol": "modbus"},
    ]
    raw["alarms"]["annunciators"] = [
        {"actuator": "horn", "min_priority": "critical"},
        {"actuator": "beacon", "min_priority": "critical", "until": "cleared"},
    ]
    site = LoadedSite(source="test", config=SiteConfig.model_validate(raw),
                      profiles=base.profiles)  # fmt: skip
    bus = FakeBus()
    bus.set(1, "holding", 0, f32(0.3))
    bus.set(2, "holding", 0, [30])
    bus.set(2, "input", 1, [2090])

    def factory(_: object) -> DeviceDriver:
        return bus

    gateway = Gateway(site, buffer_path=tmp_path / "buf.db", mqtt_host="127.0.0.1",
                      mqtt_port=1, driver_factory=factory, drain_s=0.3,
                      command_check_s=0.1)  # fmt: skip
    task = asyncio.create_task(gateway.run())
    horn, beacon = (10, 1), (10, 2)
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 10, "power released")
        # the start-up cut (no saved state) sounded the horn: acknowledge everything
        for rec in gateway.alarm_store.alarms():
            if rec.state in ("unacknowledged", "returned_unacknowledged"):
                gateway.alarm_store.act(rec.alarm_id, "acknowledge", actor="op")
        await async_wait_until(lambda: bus.coils.get(horn) is False, 10, "the horn quiet")
        await async_wait_until(lambda: bus.coils.get(beacon) is False, 10, "the beacon off")

        bus.set(1, "holding", 0, f32(1.8))  # a cut: critical
        await async_wait_until(
            lambda: bus.coils.get(horn) is True and bus.coils.get(beacon) is True,
            10,
            "the horn sounds and the beacon lights",
        )
        cut = next(r for r in gateway.alarm_store.alarms() if r.tag == "CH4_A")
        gateway.alarm_store.act(cut.alarm_id, "acknowledge", actor="op", why="crew out")
        await async_wait_until(lambda: bus.coils.get(horn) is False, 10, "ack silences the horn")
        assert bus.coils.get(beacon) is True, "the beacon stays on while the cut is active"
        bus.set(1, "holding", 0, f32(0.3))  # cleared (after the restore hold)
        await async_wait_until(lambda: bus.coils.get(beacon) is False, 15, "the beacon off")
        assert bus.coils.get(horn) is False
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("state_lost", [False, True])
async def test_a_restarted_gateway_keeps_the_alarm_and_does_not_announce_it_again(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
    state_lost: bool,
) -> None:
    """The cut comes back from the latched state; or, the latched state lost, the engine
    starts fail-safe and re-reports the cut, which the alarm database makes the same alarm.
    Either way it is not announced again."""
    value, level = 1.8, "cut"
    from device_drivers import DeviceDriver
    from edge.gateway import Gateway

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

    def gateway() -> Gateway:
        return Gateway(site, buffer_path=tmp_path / "buf.db", mqtt_host="127.0.0.1",
                       mqtt_port=1, driver_factory=factory, drain_s=0.3,
                       command_check_s=0.1)  # fmt: skip

    def titles(tag: str) -> list[str]:
        return [str(m["title"]) for _, m in receiver.got if f"/{tag} {level}" in str(m["title"])]

    def cut_at(tag: str, reading: str) -> bool:
        return any(f"/{tag} " in str(m["title"]) and f"{reading} %" in str(m["message"])
                   for _, m in receiver.got)  # fmt: skip

    first = gateway()
    task = asyncio.create_task(first.run())
    try:
        await async_wait_until(lambda: bus.coils.get((10, 0)) is False, 10, "power released")
        await async_wait_until(lambda: first.notifier is not None and first.notifier.sent >= 2,
                               10, "the start-up cuts notified")  # fmt: skip
        receiver.got.clear()
        bus.set(1, "holding", 0, f32(value))
        await async_wait_until(lambda: cut_at("CH4_A", f"{value:g}"), 10, "the alarm notified")
    finally:
        first.stop()
        await asyncio.wait_for(task, 15)
    store = AlarmStore(first.alarm_store.path)
    (cut,) = [r for r in store.alarms() if r.tag == "CH4_A"]
    store.close()

    if state_lost:
        for path in first.state_path.parent.glob(f"{first.state_path.name}*"):
            path.unlink()
    second = gateway()  # the cut is still there
    task = asyncio.create_task(second.run())
    try:
        await async_wait_until(
            lambda: second.counters()["samples"] > 40, 15, "the restarted gateway polling"
        )
        after = [c.action for c in second.alarm_store.history(cut.updated_ns + 1)
                 if c.alarm_id == cut.alarm_id]  # fmt: skip
        assert after == (["change"] if state_lost else []), after
        again = second.alarm_store.get(cut.alarm_id)
        assert again is not None and (again.state, again.alarm_id) == (cut.state, cut.alarm_id)
        # a new cut elsewhere is announced; the queue is FIFO, so a re-announced CH4_A
        # would have arrived before it
        bus.set(2, "holding", 0, [180])
        await async_wait_until(lambda: cut_at("CH4_B", "1.8"), 10, "the new cut notified")
    finally:
        second.stop()
        await asyncio.wait_for(task, 15)
    assert len(titles("CH4_A")) == 1, "the restart did not announce the same cut again"
    assert second.alarms.floods == 0
