"""GET /api/v1/alarms/kpi: the walls' alarm-rate figures from the stored alarm events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

import wire
from cloud import create_app
from cloud.auth import Role
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import SITE, alarm


async def test_kpi_route_counts_raises_floods_chatter_and_standing(tmp_path: Path) -> None:
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: a 10-minute window starts here
    seq = 0

    def add(
        tag: str, ts: int, level: wire.AlarmLevel, previous: wire.AlarmLevel, alarm_id: str
    ) -> None:
        nonlocal seq
        seq += 1
        store.record_alarm(
            alarm(seq, tag=tag, ts_ns=ts, level=level, previous=previous, alarm_id=alarm_id)
        )

    # a burst of 12 different alarms within a minute: one 10-minute window in flood
    for i in range(12):
        add(f"B{i}", t0 + i * 10**9, "alarm", "normal", f"b{i}")
        add(f"B{i}", t0 + (i + 30) * 10**9, "normal", "alarm", f"b{i}")
    # one flapping tag: 6 raises within a minute, half an hour later
    for i in range(6):
        add("FLAP", t0 + 1800 * 10**9 + i * 8 * 10**9, "alarm", "normal", f"f{i}")
        add("FLAP", t0 + 1800 * 10**9 + (i * 8 + 4) * 10**9, "normal", "alarm", f"f{i}")
    add("STAND", t0 + 2400 * 10**9, "cut", "normal", "s1")  # still active
    auth = make_authenticator(store.engine)
    app = create_app(store, dict, authenticator=auth, audit=auth.audit)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers=headers_for(auth, Role.VIEWER),
    ) as client:
        response = await client.get(
            "/api/v1/alarms/kpi", params={"site": SITE, "hours": 2, "until_ns": t0 + 3600 * 10**9}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (await client.get("/api/v1/alarms/kpi")).status_code == 422  # site required
    assert body["alarms"] == 12 + 6 + 1
    assert body["peak_per_10min_per_operator"] == 12
    assert body["flood_share"] == round(1 / 12, 4)
    assert body["top10"][0]["count"] == 6 and body["top10"][0]["alarm"].endswith("|FLAP|ch4")
    assert [k.split("|")[1] for k in body["chattering"]] == ["FLAP"]
    assert [k.split("|")[1] for k in body["standing"]] == ["STAND"]
    assert body["stale"] == []


def _stored(store: Store, events: list[wire.AlarmEvent]) -> None:
    for ev in events:
        assert store.record_alarm(ev)


async def test_a_restart_re_report_is_the_same_alarm_and_a_shelved_raise_is_not_annunciated(
    tmp_path: Path,
) -> None:
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9
    s = 10**9

    def ev(seq: int, tag: str, at: int, level: wire.AlarmLevel, previous: wire.AlarmLevel,
           alarm_id: str, **kw: str) -> wire.AlarmEvent:  # fmt: skip
        base = alarm(seq, tag=tag, ts_ns=t0 + at * s, level=level, previous=previous,
                     alarm_id=alarm_id)  # fmt: skip
        fields = {f: getattr(base, f) for f in base.__struct_fields__}
        return wire.AlarmEvent(**{**fields, **kw})

    _stored(store, [
        ev(1, "CUT", 10, "cut", "normal", "c1"),
        # the gateway restarted: its engine reports the standing cut from normal again,
        # under the same alarm id (twice: two restarts)
        ev(2, "CUT", 100, "cut", "normal", "c1"),
        ev(3, "CUT", 200, "cut", "normal", "c1"),
        # cleared unacknowledged, then active again before anyone acknowledged: a raise
        ev(4, "CUT", 300, "normal", "cut", "c1"),
        ev(5, "CUT", 310, "cut", "normal", "c1"),
        # an alarm shelved by an operator: its next activation is not annunciated
        ev(6, "SHELF", 20, "alarm", "normal", "s1"),
        ev(7, "SHELF", 30, "alarm", "alarm", "s1", kind="alarm_state",
           message="SHELF (rule SHELF) shelve by cloud:op: unacknowledged -> shelved"),
        ev(8, "SHELF", 40, "normal", "alarm", "s1"),
        ev(9, "SHELF", 50, "alarm", "normal", "s1"),
    ])  # fmt: skip
    auth = make_authenticator(store.engine)
    app = create_app(store, dict, authenticator=auth, audit=auth.audit)

    async def figures(until_s: int) -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers=headers_for(auth, Role.VIEWER),
        ) as client:
            got = await client.get(
                "/api/v1/alarms/kpi",
                params={"site": SITE, "hours": 1, "until_ns": t0 + until_s * s},
            )
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    before_clear = await figures(250)
    assert before_clear["alarms"] == 2, "the cut once and the shelf alarm once; no re-reports"
    assert [t["count"] for t in before_clear["top10"]] == [1, 1]
    assert sorted(k.split("|")[1] for k in before_clear["standing"]) == ["CUT", "SHELF"]
    after = await figures(400)
    assert after["alarms"] == 3, "the re-activation after the clear is a raise"


async def test_kpis_per_operator_console_add_up_gateways(tmp_path: Path) -> None:
    """One console answers for areas on two gateways; a gateway serves two consoles; an
    older gateway's events (no console) count for that gateway."""
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    t0 = (time.time_ns() // 10**9 - 3600) * 10**9
    seq = 0

    def add(gateway: str, tag: str, at_s: int, console: str, kind: str = "ch4") -> None:
        nonlocal seq
        seq += 1
        base = alarm(seq, tag=tag, ts_ns=t0 + at_s * 10**9, level="alarm", previous="normal",
                     gateway=gateway, alarm_id=f"{gateway}-{tag}-{seq}", kind=kind)  # fmt: skip
        fields = {f: getattr(base, f) for f in base.__struct_fields__}
        assert store.record_alarm(wire.AlarmEvent(**{**fields, "console": console}))

    for i in range(6):  # console "panel": 6 raises on gw-1 and 6 on gw-2 in one minute
        add("gw-1", f"P1-{i}", i, "panel")
        add("gw-2", f"P2-{i}", i, "panel")
    for i in range(3):  # gw-2 also serves console "roads"
        add("gw-2", f"R-{i}", 100 + i, "roads")
    add("gw-old", "OLD", 200, "")  # an older gateway: its own console
    add("gw-1", "gw-1", 5, "panel", kind="flood")  # gw-1's flood summary of its console
    auth = make_authenticator(store.engine)
    app = create_app(store, dict, authenticator=auth, audit=auth.audit)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers=headers_for(auth, Role.VIEWER),
    ) as client:
        got = await client.get(
            "/api/v1/alarms/kpi", params={"site": SITE, "hours": 1, "until_ns": t0 + 3600 * 10**9}
        )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["alarms"] == 16
    rows = {r["console"]: r for r in body["consoles"]}
    assert [r["console"] for r in body["consoles"]] == ["panel", "roads", "gw-old"]
    assert (rows["panel"]["alarms"], rows["panel"]["peak_per_10min"]) == (12, 12)
    assert rows["panel"]["flood_share"] == round(1 / 6, 4), "one 10-minute window over 10"
    assert rows["panel"]["flood_summaries"] == 1
    assert (rows["roads"]["alarms"], rows["roads"]["flood_share"]) == (3, 0.0)
    assert rows["gw-old"]["alarms"] == 1
