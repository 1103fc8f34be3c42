"""The wall's snapshot: active alarms mirrored from the gateway's events, areas by live
grade after alarms come through the ingest, the snapshot route and the page's files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import wire
from cloud import create_app
from cloud.auth import Role
from cloud.ingest import Incoming, IngestService
from cloud.risk import RiskModel, RiskService
from cloud.storage import AlarmRecord, Store
from cloud.wall import STATIC_DIR, WallService, active_alarms, inline_page
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, point, telemetry
from tests.unit.test_cloud_ingest import ANY_TIME, RecordingWriter

RISK = {
    "site": "mine-a",
    "areas": [
        {
            "id": "panel-3",
            "name": "Panel 3 face / 3号工作面",
            "polygon": [[0, 0], [40, 0], [40, 10], [0, 10]],
            "units": [{"id": "gas", "lec": {"l": 3, "e": 6, "c": 7}}],  # D = 126: yellow
        },
        {
            "id": "haulage",
            "polygon": [[0, 10], [40, 10], [40, 14], [0, 14]],
            "units": [{"id": "belt", "matrix": {"l": 1, "s": 3}}],  # R = 3: blue
        },
    ],
}


def _records(*events: wire.AlarmEvent) -> list[AlarmRecord]:
    return [
        AlarmRecord(
            id=i,
            received_at=None,  # type: ignore[arg-type]
            **{f: getattr(e, f) for f in AlarmRecord.__slots__ if f not in ("id", "received_at")},
        )
        for i, e in enumerate(events, 1)
    ]


def _state_event(seq: int, alarm_id: str, action: str, before: str, after: str) -> wire.AlarmEvent:
    """What ``edge.alarm_manager.AlarmForwarder`` sends for an operator action."""
    return wire.AlarmEvent(
        **{
            **{f: getattr(alarm(seq), f) for f in alarm(seq).__struct_fields__},
            "alarm_id": alarm_id,
            "kind": "alarm_state",
            "value": None,
            "threshold": None,
            "actuators": [],
            "message": f"CH4-101 (rule ch4) {action} by cloud:ops: seen: {before} -> {after}",
            "state": after,
        }
    )


def test_an_alarm_stays_on_the_wall_until_cleared_and_acknowledged() -> None:
    raised = alarm(1, level="cut", previous="normal", alarm_id="A")
    assert [(a.level, a.state) for a in active_alarms(_records(raised))] == [
        ("cut", "unacknowledged")
    ]
    acked = _state_event(2, "A", "acknowledge", "unacknowledged", "acknowledged")
    [one] = active_alarms(_records(raised, acked))
    assert (one.level, one.state, one.since_ns) == ("cut", "acknowledged", T0 + 1)
    assert one.action.endswith("-> acknowledged")
    cleared = alarm(3, level="normal", previous="cut", alarm_id="A")
    assert active_alarms(_records(raised, acked, cleared)) == []
    # cleared before anyone acknowledged: returned-unacknowledged, still shown
    [back] = active_alarms(_records(raised, alarm(4, level="normal", alarm_id="A")))
    assert (back.level, back.state) == ("normal", "returned_unacknowledged")
    late_ack = _state_event(5, "A", "acknowledge", "returned_unacknowledged", "normal")
    assert active_alarms(_records(raised, alarm(4, level="normal", alarm_id="A"), late_ack)) == []


def test_levels_escalate_in_place_and_the_worst_comes_first() -> None:
    events = _records(
        alarm(1, level="alarm", previous="normal", alarm_id="A", tag="CH4-1"),
        alarm(2, level="alarm", previous="normal", alarm_id="B", tag="CH4-2"),
        alarm(3, level="cut", previous="alarm", alarm_id="B", tag="CH4-2", value=1.7),
        alarm(4, level="fault", previous="normal", alarm_id="C", tag="CO-1", kind="co"),
        _state_event(5, "A", "shelve", "unacknowledged", "shelved"),
    )
    shown = active_alarms(reversed(events))  # any order in, gateway time decides
    assert [(a.alarm_id, a.level, a.state) for a in shown] == [
        ("B", "cut", "unacknowledged"),
        ("C", "fault", "unacknowledged"),
        ("A", "alarm", "shelved"),
    ]
    assert shown[0].value == 1.7 and shown[0].since_ns == T0 + 2


def test_a_state_event_naming_no_known_state_changes_nothing() -> None:
    raised = alarm(1, level="alarm", previous="normal", alarm_id="A")
    odd = _state_event(2, "A", "acknowledge", "x", "bogus")
    [a] = active_alarms(_records(raised, odd))
    assert a.state == "unacknowledged"


@pytest.fixture
def wall_setup(tmp_path: Path) -> Iterator[tuple[IngestService, WallService, Store]]:
    store = Store(cloud_db_url(tmp_path, "wall.db"))
    store.create_all()
    risk = RiskService(store.engine, RiskModel.model_validate(RISK), store=store)
    risk.create_all()
    ingest = IngestService("127.0.0.1", 1, store, RecordingWriter(), ts_window=ANY_TIME)
    yield ingest, WallService(store, risk), store
    store.close()


async def _deliver(ingest: IngestService, *messages: wire.Message) -> None:
    await ingest.process(
        [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
    )


async def test_a_cut_through_the_ingest_turns_its_area_red_on_the_wall(
    wall_setup: tuple[IngestService, WallService, Store],
) -> None:
    ingest, wall, _ = wall_setup
    await _deliver(ingest, telemetry(1, point("CH4-101", 0.4)))
    quiet = wall.snapshot("mine-a")
    assert {a.id: a.grade for a in quiet.areas} == {"panel-3": "yellow", "haulage": "blue"}
    assert quiet.alarms == [] and quiet.risk_configured

    await _deliver(
        ingest,
        telemetry(2, point("CH4-101", 1.6, T0 + 5)),
        alarm(3, level="cut", previous="normal", alarm_id="CH4-A"),
    )
    hot = wall.snapshot("mine-a")
    face = next(a for a in hot.areas if a.id == "panel-3")
    assert (face.grade, face.static_grade, face.alarms) == ("red", "yellow", 1)
    assert [(c["factor"], c["detail"]) for c in face.contributions] == [("cut", "CH4-101")]
    assert [(a.tag, a.level, a.state) for a in hot.alarms] == [("CH4-101", "cut", "unacknowledged")]
    assert hot.version != quiet.version
    assert wall.snapshot("mine-a").version == hot.version, "same content, same version"


async def test_snapshots_are_shared_within_their_age(
    wall_setup: tuple[IngestService, WallService, Store],
) -> None:
    ingest, wall, _ = wall_setup
    first = wall.cached("mine-a", 60)
    await _deliver(ingest, alarm(1, level="cut", previous="normal"))
    assert wall.cached("mine-a", 60) is first, "within max age: the cached one"
    assert wall.cached("mine-a", 0).alarms, "older than max age: recomputed"


async def test_snapshot_route_needs_a_token_and_names_unknown_sites(
    wall_setup: tuple[IngestService, WallService, Store],
) -> None:
    ingest, wall, store = wall_setup
    await _deliver(
        ingest, telemetry(1, point()), alarm(2, level="cut", previous="normal", ts_ns=T0)
    )
    auth = make_authenticator(store.engine)
    app = create_app(
        store,
        lambda: {"db": True, "influx": True, "mqtt": True},
        authenticator=auth,
        audit=auth.audit,
        risk=wall.risk,
    )
    viewer = headers_for(auth, Role.VIEWER)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/api/v1/wall/snapshot")).status_code == 401
        body = (await client.get("/api/v1/wall/snapshot", headers=viewer)).json()
        assert body["site"] == "mine-a", "the risk model's site by default"
        assert [a["grade"] for a in body["areas"]] == ["red", "blue"]
        assert body["alarms"][0]["since"] == "2023-11-14T22:13:20.000Z"
        missing = await client.get("/api/v1/wall/snapshot?site=nowhere", headers=viewer)
        assert missing.status_code == 404 and "nowhere" in missing.json()["detail"]
        page = await client.get("/wall")
        assert page.status_code == 200 and page.text == inline_page()
        # one request: the style and the script come inlined, not linked
        assert "wall/static/" not in page.text
        assert (STATIC_DIR / "wall.js").read_text(encoding="utf-8") in page.text
        assert (STATIC_DIR / "wall.css").read_text(encoding="utf-8") in page.text
        for name in ("wall.js", "wall.css"):
            served = await client.get(f"/wall/static/{name}")
            assert served.status_code == 200
            assert served.content == (STATIC_DIR / name).read_bytes()
        assert (await client.get("/wall/static/../api.py")).status_code == 404


def test_the_page_loads_nothing_from_outside() -> None:
    """A mine's control room has no internet: no CDN, no absolute URL in the page's files."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        for needle in ("http://", "https://", "//cdn", "@import"):
            hits = [
                line
                for line in text.splitlines()
                if needle in line and "w3.org/2000/svg" not in line
            ]
            assert not hits, f"{path.name}: {hits[:2]}"


def test_shelve_expiry_and_reasons_travel_from_the_gateway_to_the_wall(tmp_path: Path) -> None:
    """The gateway's own forwarder writes the messages the wall reads (one format, two ends)."""
    from edge.alarm_manager import AlarmForwarder, AlarmStore
    from tests.unit.test_polling import make_site

    now = [1_790_000_000 * 10**9]
    store = AlarmStore(tmp_path / "gw-alarms.sqlite", clock=lambda: now[0])
    sent: list[wire.AlarmEvent] = []
    forwarder = AlarmForwarder(make_site(), store, sent.append)
    rec = store.on_condition(
        "CH4_A", "CH4_A", "cut", kind="ch4", fail_safe=True, reason="above_cut", ts_ns=now[0]
    )
    raised = alarm(1, level="cut", previous="normal", alarm_id=rec.alarm_id, tag="CH4_A",
                   ts_ns=now[0])  # fmt: skip

    def shown() -> list[tuple[str, int | None, str]]:
        forwarder.forward()
        events = [raised] + [
            wire.AlarmEvent(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "seq": i})
            for i, e in enumerate(sent, 2)
        ]
        return [(a.state, a.shelved_until_ns, a.note) for a in active_alarms(_records(*events))]

    now[0] += 10**9
    store.act(rec.alarm_id, "shelve", actor="cloud:ops", why="known leak: 1201", shelve_s=900)
    assert shown() == [("shelved", now[0] + 900 * 10**9, "known leak: 1201")]
    now[0] += 10**9
    store.act(rec.alarm_id, "out_of_service", actor="wang", why="sensor replaced")
    assert shown() == [("out_of_service", None, "sensor replaced")]
    now[0] += 10**9
    store.act(rec.alarm_id, "return_to_service", actor="wang")
    assert shown() == [("unacknowledged", None, "")]
