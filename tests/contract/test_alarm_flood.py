"""Alarm flood: a burst beyond N raises a minute becomes one flood summary (forwarded and
notified once); every individual alarm is still recorded and forwarded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import wire
from edge.alarm_manager import AlarmStore, FloodDetector
from edge.alarm_notify import Notifier
from edge.alarms import AlarmManager
from edge.config import LoadedSite
from edge.config._models import NotificationRoute, SiteConfig
from edge.rules import Condition, Transition
from tests.contract.test_alarm_notify import Receiver, receiver  # noqa: F401 (fixture)
from tests.support import async_wait_until
from tests.unit.test_polling import PROFILES

S = 10**9
T0 = 1_800_000_000 * S


def burst_site(tags: int, flood_per_minute: int) -> LoadedSite:
    raw: dict[str, Any] = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            {
                "id": "gas",
                "bus": "net",
                "unit_id": 1,
                "tags": [
                    {"name": f"CO_{i}", "profile": "co", "address": 2 * i,
                     "location": {"area": "panel-3", "position": "face"}}
                    for i in range(tags)
                ],
            }
        ],
        "alarms": {"flood_per_minute": flood_per_minute, "flood_clear_s": 30},
    }  # fmt: skip
    return LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)


def raise_of(tag: str, ts_ns: int) -> Transition:
    return Transition(tag, Condition.NORMAL, Condition.ALARM, 40.0, 30.0, "above_alarm", ts_ns)


def test_detector_starts_once_per_flood_and_ends_after_the_calm() -> None:
    flood = FloodDetector(per_minute=10, clear_s=30)
    starts = [flood.note(T0 + i * S) for i in range(25)]  # 25 raises in 25 s
    assert starts.index(True) == 10 and starts.count(True) == 1, "the 11th raise starts it"
    first_id = flood.flood_id
    assert flood.during == 25 and flood.peak == 25
    assert not flood.check(T0 + 60 * S), "still 25 raises within the last minute"
    assert not flood.check(T0 + 86 * S), "back under the limit, calm for under 30 s"
    assert flood.check(T0 + 120 * S) and not flood.active
    assert not flood.check(T0 + 121 * S), "ended once"
    # ten raises a minute is not a flood; the next burst is a new flood with a new id
    assert not any(flood.note(T0 + 200 * S + i * 6 * S) for i in range(10))
    assert any(flood.note(T0 + 300 * S + i * S // 10) for i in range(11))
    assert flood.flood_id != first_id


async def test_a_burst_is_recorded_alarm_by_alarm_and_announced_once(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    site = burst_site(tags=30, flood_per_minute=10)
    store = AlarmStore(tmp_path / "alarms.sqlite")
    out: list[wire.AlarmEvent] = []
    manager = AlarmManager(site, out.append)
    manager.lifecycle = store
    manager.flood = FloodDetector(site.config.alarms.flood_per_minute, 30)
    route = NotificationRoute(
        name="control", urls=(receiver.url("control"),), min_priority="medium", max_per_minute=100
    )
    notifier = Notifier([route], store, in_flood=manager.flooded)
    sender = asyncio.create_task(notifier.run(check_s=0.05))
    try:
        for i in range(30):  # 30 different alarms within 30 s
            event = manager.on_transition(raise_of(f"CO_{i}", T0 + i * S))
            notifier.on_event(event)
            if out[-1].kind == "flood":
                notifier.on_event(out[-1])
        assert not manager.check_flood(T0 + 60 * S), "29 raises within the last minute"
        assert not manager.check_flood(T0 + 100 * S), "calm, but not for 30 s yet"
        assert manager.check_flood(T0 + 130 * S)
        notifier.on_event(out[-1])
        await async_wait_until(
            lambda: any("flood over" in str(m["title"]) for _, m in receiver.got),
            10,
            "the flood's end notified",
        )
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    for e in out:  # every event crosses the wire (the ingest dead-letters what does not)
        assert wire.decode(wire.encode(e)) == e
    # no alarms.consoles: the gateway is the one operator console, as before consoles
    assert {e.console for e in out} == {"gw1"}
    individual = [e for e in out if e.kind != "flood"]
    floods = [e for e in out if e.kind == "flood"]
    assert len(individual) == 30 and len({e.alarm_id for e in individual}) == 30
    assert [(e.level, e.reason) for e in floods] == [("alarm", "flood"), ("normal", "flood_end")]
    assert floods[0].alarm_id == floods[1].alarm_id, "one flood, one id from start to end"
    assert floods[0].value == 11 and floods[1].value == 30
    assert "30 alarms" in floods[1].message
    # every alarm is in the gateway's alarm database, unacknowledged
    assert sum(1 for c in store.history() if c.action == "raise") == 30
    assert len(store.alarms()) == 30
    # notified: the 10 raises before the flood, then the flood's start and end only
    titles = [str(m["title"]) for _, m in receiver.got]
    assert len(titles) == 12, titles
    assert sum("[flood]" in t for t in titles) == 2
    assert "20 notifications held" in str(receiver.got[-1][1]["message"])
    store.close()


async def test_a_critical_raise_is_still_notified_during_a_flood(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = AlarmStore(tmp_path / "alarms.sqlite")
    route = NotificationRoute(name="control", urls=(receiver.url("control"),), min_priority="low")
    notifier = Notifier([route], store, in_flood=lambda _console: True)
    sender = asyncio.create_task(notifier.run(check_s=0.05))
    try:
        from tests.contract.test_alarm_notify import raised

        notifier.on_event(raised(1, "panel-3", "medium"))
        notifier.on_event(raised(2, "panel-3", "critical"))
        await async_wait_until(lambda: len(receiver.got) >= 1, 10, "the critical raise")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    # FIFO delivery: had the medium raise been sent, it would have arrived first
    (title,) = [str(m["title"]) for _, m in receiver.got]
    assert title.startswith("[critical]") and "/T2 " in title
    assert notifier.flood_held == 1
    store.close()


def console_site() -> LoadedSite:
    """30 CO sensors at the face (console ``face``), 10 in the main roadway and 10 in the
    haulage roadway (both answered by console ``roads``); flood limit 10 a minute."""

    def tags(prefix: str, area: str, count: int, first: int) -> list[dict[str, Any]]:
        return [
            {"name": f"{prefix}_{i}", "profile": "co", "address": 2 * (first + i),
             "location": {"area": area, "position": "face"}}
            for i in range(count)
        ]  # fmt: skip

    raw: dict[str, Any] = {
        "site": {"id": "s1"},
        "gateway": {"id": "gw1"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            {"id": "gas", "bus": "net", "unit_id": 1,
             "tags": tags("F", "panel-3", 30, 0) + tags("M", "main", 10, 30)
             + tags("H", "haulage", 10, 40)},
        ],
        "alarms": {
            "flood_per_minute": 10,
            "flood_clear_s": 30,
            "consoles": [
                {"id": "face", "areas": ["panel-3"]},
                {"id": "roads", "areas": ["main", "haulage"]},
            ],
        },
    }  # fmt: skip
    return LoadedSite(source="test", config=SiteConfig.model_validate(raw), profiles=PROFILES)


async def test_a_flood_is_per_operator_console(
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    site = console_site()
    store = AlarmStore(tmp_path / "alarms.sqlite")
    out: list[wire.AlarmEvent] = []
    manager = AlarmManager(site, out.append)
    manager.lifecycle = store
    manager.flood = FloodDetector(site.config.alarms.flood_per_minute, 30)
    route = NotificationRoute(
        name="control", urls=(receiver.url("control"),), min_priority="medium", max_per_minute=100
    )
    notifier = Notifier([route], store, in_flood=manager.flooded)
    sender = asyncio.create_task(notifier.run(check_s=0.05))

    def raise_(tag: str, at_s: float) -> None:
        notifier.on_event(manager.on_transition(raise_of(tag, T0 + int(at_s * S))))
        if out[-1].kind == "flood":
            notifier.on_event(out[-1])

    try:
        # 8 at the face and 8 in the main roadway within a minute: 16 for the gateway, but
        # no operator gets more than 10 - no flood (one gateway-wide detector would flood)
        for i in range(8):
            raise_(f"F_{i}", i)
            raise_(f"M_{i}", i + 0.5)
        assert not manager.flooded() and not any(e.kind == "flood" for e in out)
        # 4 more in the haulage roadway: the roads console (main + haulage) has 12
        for i in range(4):
            raise_(f"H_{i}", 10 + i)
        floods = [e for e in out if e.kind == "flood"]
        assert [(e.console, e.area, e.level) for e in floods] == [("roads", "roads", "alarm")]
        assert "console roads (gateway gw1)" in floods[0].message
        assert manager.flooded("roads") and not manager.flooded("face")
        # during the roads flood a face alarm is still notified, a roads alarm is held
        raise_("F_8", 20)
        raise_("M_8", 21)
        assert notifier.flood_held == 3, "H_2 (the 11th: the flood), H_3 and M_8 held"
        assert {e.console for e in out if e.kind != "flood"} == {"face", "roads"}
        assert not manager.check_flood(T0 + 70 * S), (
            "roads: 5 raises in the last minute, calm < 30 s"
        )
        assert manager.check_flood(T0 + 110 * S)
        notifier.on_event(out[-1])
        assert (out[-1].console, out[-1].level) == ("roads", "normal")
        await async_wait_until(
            lambda: any("flood over" in str(m["title"]) for _, m in receiver.got),
            10,
            "the roads flood's end notified",
        )
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    titles = [str(m["title"]) for _, m in receiver.got]
    assert any("/T" not in t and "console roads alarm flood" in t for t in titles), titles
    assert any("F_8" in t for t in titles), "the face alarm during the roads flood was sent"
    assert not any("M_8" in t for t in titles), "the roads alarm was held"
    assert "3 notifications held" in str(receiver.got[-1][1]["message"])
    store.close()
