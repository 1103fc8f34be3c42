"""GET /api/v1/alarms/kpi: the walls' alarm-rate figures from the stored alarm events."""

from __future__ import annotations

import time
from pathlib import Path

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
