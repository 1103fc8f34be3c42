"""The hazard and risk routes over HTTP: the closed loop, filters, pages, CSV, evidence, KPIs."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cloud import create_app
from cloud.audit import AuditAction
from cloud.auth import Authenticator, Role
from cloud.hazards import HazardService
from cloud.hazards._api import PAGE_CACHE_MAX_AGE_S
from cloud.risk import RiskModel, RiskService
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.support import async_wait_until


@pytest.fixture
async def env(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, Authenticator, HazardService]]:
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    auth = make_authenticator(store.engine)
    hazards = HazardService(store.engine, auth.audit, tmp_path / "evidence")
    hazards.create_all()
    model = RiskModel.model_validate(
        {
            "site": "mine-a",
            "areas": [
                {
                    "id": "face-1",
                    "polygon": [[0, 0], [1, 0], [1, 1]],
                    "units": [{"id": "g", "matrix": {"l": 2, "s": 2}}],
                },
                {"id": "face-2", "units": [{"id": "h", "matrix": {"l": 1, "s": 1}}]},
            ],
        }
    )
    risk = RiskService(store.engine, model, store=store, hazards=hazards)
    risk.create_all()
    health = {"db": True, "influx": True, "mqtt": True, "counters": {}}
    app = create_app(
        store, lambda: health, authenticator=auth, audit=auth.audit, hazards=hazards, risk=risk
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        yield c, auth, hazards
    store.close()


async def test_closed_loop_over_http(
    env: tuple[httpx.AsyncClient, Authenticator, HazardService],
) -> None:
    client, auth, hazards = env
    h = {role: headers_for(auth, role) for role in Role}
    made = await client.post(
        "/api/v1/hazards",
        json={"title": "damaged cable", "area": "face-1", "grade": "general"},
        headers=h[Role.REVIEWER],
    )
    assert made.status_code == 201, made.text
    hid = made.json()["id"]
    assert made.json()["status"] == "found" and made.json()["found_by"] == "reviewer-user"

    async def fire(event: str, role: Role, **extra: str) -> httpx.Response:
        return await client.post(
            f"/api/v1/hazards/{hid}/transitions", json={"event": event, **extra}, headers=h[role]
        )

    assert (await fire("register", Role.RECTIFIER)).status_code == 403
    assert (await fire("assign", Role.SAFETY_ENGINEER, assignee="t")).status_code == 409
    assert (await fire("register", Role.SAFETY_ENGINEER)).json()["status"] == "registered"
    assert (await fire("assign", Role.SAFETY_ENGINEER, assignee="team-3")).json()[
        "status"
    ] == "assigned"
    assert (await fire("rectify", Role.RECTIFIER)).status_code == 409  # no evidence yet
    photo = b"\x89PNG fake but bytes"
    upload = await client.post(
        f"/api/v1/hazards/{hid}/evidence",
        files={"file": ("after.png", photo, "image/png")},
        headers=h[Role.RECTIFIER],
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["sha256"] == hashlib.sha256(photo).hexdigest()
    assert hazards.evidence_path(upload.json()["sha256"]).read_bytes() == photo
    listed = await client.get(f"/api/v1/hazards/{hid}/evidence", headers=h[Role.VIEWER])
    assert [e["filename"] for e in listed.json()] == ["after.png"]
    assert (await fire("rectify", Role.RECTIFIER, note="replaced")).json()["status"] == "rectified"
    assert (await fire("reject", Role.REVIEWER, note="not insulated")).json()[
        "status"
    ] == "assigned"
    assert (await fire("rectify", Role.RECTIFIER)).json()["status"] == "rectified"
    assert (await fire("approve", Role.REVIEWER)).json()["status"] == "reviewed"
    assert (await fire("close", Role.REVIEWER)).status_code == 403
    closed = await fire("close", Role.SAFETY_ENGINEER)
    assert closed.json()["status"] == "closed" and closed.json()["rejections"] == 1
    assert (await fire("close", Role.ADMIN)).status_code == 409
    assert (await client.get("/api/v1/hazards/999", headers=h[Role.VIEWER])).status_code == 404

    audit = await client.get(
        "/api/v1/audit", params={"action": AuditAction.HAZARD_TRANSITION}, headers=h[Role.ADMIN]
    )
    assert audit.status_code == 200
    kpis = (await client.get("/api/v1/hazards/kpis", headers=h[Role.VIEWER])).json()
    assert kpis["closed"] == 1 and kpis["rectification_rate"] == 1.0 and kpis["on_time_rate"] == 1.0


async def test_list_filters_pages_csv_and_heatmap(
    env: tuple[httpx.AsyncClient, Authenticator, HazardService],
) -> None:
    client, auth, _ = env
    eng = headers_for(auth, Role.SAFETY_ENGINEER)
    for i in range(5):
        body = {
            "title": f"h{i}",
            "area": "face-1" if i % 2 else "face-2",
            "grade": "major" if i == 4 else "general",
        }
        assert (await client.post("/api/v1/hazards", json=body, headers=eng)).status_code == 201
    offset = {
        "title": "x",
        "area": "a",
        "grade": "general",
        "deadline": "2026-12-01T08:00:00+08:00",
    }
    made = await client.post("/api/v1/hazards", json=offset, headers=eng)
    assert made.json()["deadline"].startswith("2026-12-01T00:00:00")  # kept in UTC
    viewer = headers_for(auth, Role.VIEWER)
    page = (
        await client.get("/api/v1/hazards", params={"limit": 2, "offset": 1}, headers=viewer)
    ).json()
    assert page["total"] == 6 and [i["title"] for i in page["items"]] == ["h4", "h3"]
    face1 = (await client.get("/api/v1/hazards", params={"area": "face-1"}, headers=viewer)).json()
    assert {i["title"] for i in face1["items"]} == {"h1", "h3"}
    major = (await client.get("/api/v1/hazards", params={"grade": "major"}, headers=viewer)).json()
    assert [i["title"] for i in major["items"]] == ["h4"]
    overdue = (await client.get("/api/v1/hazards", params={"overdue": True}, headers=viewer)).json()
    assert overdue["total"] == 0
    bad = await client.get("/api/v1/hazards", params={"grade": "huge"}, headers=viewer)
    assert bad.status_code == 422

    exported = await client.get("/api/v1/hazards.csv", params={"area": "face-2"}, headers=viewer)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["title"] for r in rows) == ["h0", "h2", "h4"] and rows[0]["status"] == "found"

    heat = (await client.get("/api/v1/risk/heatmap", headers=viewer)).json()
    areas = {a["id"]: a for a in heat["areas"]}
    assert heat["configured"] and heat["site"] == "mine-a"
    # face-1: yellow (R=4) + two general hazards (1 point) = orange
    assert areas["face-1"]["static_grade"] == "yellow" and areas["face-1"]["grade"] == "orange"
    assert [c["factor"] for c in areas["face-1"]["contributions"]] == ["hazard_general"] * 2
    # face-2: blue (R=1) + 2 general (1) + 1 major (1) = 2 points: orange
    assert areas["face-2"]["points"] == 2.0 and areas["face-2"]["grade"] == "orange"
    history = (await client.get("/api/v1/risk/history", headers=viewer)).json()
    assert {(h["area"], h["grade"]) for h in history} == {
        ("face-1", "orange"),
        ("face-2", "orange"),
    }


async def test_keyset_pages_and_a_list_that_never_shows_an_old_page_after_a_change(
    env: tuple[httpx.AsyncClient, Authenticator, HazardService],
) -> None:
    """``before`` pages by id from ``next_before``; a change made through this process
    shows in the next list at once, one written by another process within a second."""
    client, auth, hazards = env
    viewer = headers_for(auth, Role.VIEWER)
    eng = headers_for(auth, Role.SAFETY_ENGINEER)
    for i in range(7):
        body = {"title": f"k{i}", "area": "face-1", "grade": "general"}
        assert (await client.post("/api/v1/hazards", json=body, headers=eng)).status_code == 201

    async def page(**params: int) -> dict[str, Any]:
        r = await client.get("/api/v1/hazards", params=params, headers=viewer)
        assert r.status_code == 200, r.text
        return dict(r.json())

    titles: list[str] = []
    first = await page(limit=3)
    cursor = first["next_before"]
    titles += [i["title"] for i in first["items"]]
    while cursor is not None:
        nxt = await page(limit=3, before=cursor)
        titles += [i["title"] for i in nxt["items"]]
        assert nxt["total"] == 7
        cursor = nxt["next_before"]
    assert titles == [f"k{i}" for i in reversed(range(7))]
    assert (
        await client.get("/api/v1/hazards", params={"before": 0}, headers=viewer)
    ).status_code == 422

    cached = await page(limit=3)
    assert cached == first  # served again (from the page cache)
    newest = (await client.post("/api/v1/hazards", json={"title": "new", "area": "face-2",
                                "grade": "major"}, headers=eng)).json()  # fmt: skip
    after = await page(limit=3)
    assert after["total"] == 8 and after["items"][0]["id"] == newest["id"]
    moved = await client.post(
        f"/api/v1/hazards/{newest['id']}/transitions", json={"event": "register"}, headers=eng
    )
    assert moved.status_code == 200
    assert (await page(limit=3))["items"][0]["status"] == "registered"

    # another process (the CLI, a second cloud process) writes the database directly
    with hazards.engine.begin() as conn:
        conn.execute(
            sa.update(sa.table("hazards", sa.column("id"), sa.column("title")))
            .where(sa.column("id") == newest["id"])
            .values(title="renamed elsewhere")
        )
    seen = await async_wait_until(
        lambda: _first_title(client, viewer, "renamed elsewhere"),
        PAGE_CACHE_MAX_AGE_S + 5,
        "another process's change in the list",
    )
    assert seen


async def _first_title(client: httpx.AsyncClient, headers: dict[str, str], title: str) -> bool:
    r = await client.get("/api/v1/hazards", params={"limit": 3}, headers=headers)
    return bool(r.json()["items"][0]["title"] == title)
