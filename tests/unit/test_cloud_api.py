"""The HTTP API over a SQLite store, through httpx ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from cloud import create_app
from cloud.api import iso_utc
from cloud.auth import Role
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import alarm, gateway_status, point, telemetry

T0 = 1_700_000_000_123_456_789  # has microseconds, unlike tests.factories.T0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(cloud_db_url(tmp_path, "api.db"))
    s.create_all()
    return s


@pytest.fixture
def health_state() -> dict[str, Any]:
    return {"db": True, "influx": True, "mqtt": True, "counters": {"ingest_received": 3}}


def asgi_client(store: Store, health_state: dict[str, Any]) -> httpx.AsyncClient:
    """A viewer's client (the read routes admit every role)."""
    auth = make_authenticator(store.engine)
    app = create_app(store, lambda: health_state, authenticator=auth, audit=auth.audit)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers=headers_for(auth, Role.VIEWER),
    )


@pytest.fixture
async def client(store: Store, health_state: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(store, health_state) as c:
        yield c


def test_iso_utc_keeps_microseconds() -> None:
    assert iso_utc(T0) == "2023-11-14T22:13:20.123456Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"


async def test_health_ok_then_degraded(
    client: httpx.AsyncClient, health_state: dict[str, Any]
) -> None:
    body = (await client.get("/health")).json()
    assert body == {
        "status": "ok",
        "db": True,
        "influx": True,
        "mqtt": True,
        "counters": {"ingest_received": 3},
    }
    health_state["influx"] = False
    body = (await client.get("/health")).json()
    assert (body["status"], body["influx"], body["db"]) == ("degraded", False, True)


async def test_alarms_newest_first_and_filtered(client: httpx.AsyncClient, store: Store) -> None:
    store.record_alarm(alarm(1, level="alarm", ts_ns=T0 + 1))
    store.record_alarm(alarm(2, level="cut", ts_ns=T0 + 2, reason="over_range"))
    store.record_alarm(alarm(3, level="alarm", ts_ns=T0 + 3, site="mine-b"))

    body = (await client.get("/api/v1/alarms")).json()
    assert [a["seq"] for a in body] == [3, 2, 1]
    assert [a["reason"] for a in body] == ["", "over_range", ""]
    assert body[0]["ts_ns"] == T0 + 3 and body[0]["ts"] == "2023-11-14T22:13:20.123456Z"
    assert [
        a["seq"] for a in (await client.get("/api/v1/alarms?site=mine-a&level=cut")).json()
    ] == [2]
    assert [a["seq"] for a in (await client.get("/api/v1/alarms", params={"limit": 1})).json()] == [
        3
    ]
    assert (await client.get("/api/v1/alarms?gateway=gw-x")).json() == []
    assert (await client.get("/api/v1/alarms?level=purple")).status_code == 422
    assert (await client.get("/api/v1/alarms?limit=0")).status_code == 422


async def test_latest_for_a_site_and_404_for_an_unknown_one(
    client: httpx.AsyncClient, store: Store
) -> None:
    o2 = point(
        "O2-1",
        None,
        T0,
        device="gas-3",
        kind="o2",
        unit="%vol",
        area="panel-3",
        position="return",
        quality="bad",
        reason="timeout",
    )
    store.upsert_latest(telemetry(1, o2, gateway="gw-1", site="mine-a", sent_ns=T0))
    assert (await client.get("/api/v1/latest", params={"site": "mine-a"})).json() == [
        {
            "tag": "O2-1",
            "device": "gas-3",
            "gateway": "gw-1",
            "kind": "o2",
            "unit": "%vol",
            "area": "panel-3",
            "position": "return",
            "value": None,
            "quality": "bad",
            "reason": "timeout",
            "condition": "normal",
            "ts": "2023-11-14T22:13:20.123456Z",
            "ts_ns": T0,
        }
    ]
    missing = await client.get("/api/v1/latest", params={"site": "nowhere"})
    assert missing.status_code == 404
    assert "unknown site 'nowhere'" in missing.json()["detail"]
    assert (await client.get("/api/v1/latest")).status_code == 422


async def test_latest_carries_the_condition_the_gateway_decided(
    client: httpx.AsyncClient, store: Store
) -> None:
    # 1.2 % after a cut: the gateway holds the cut (above restore); the API must say so
    store.upsert_latest(telemetry(1, point("CH4-101", 1.2, T0), point("CH4-102", 0.3, T0)))
    store.record_alarm(alarm(2, level="alarm", previous="normal", ts_ns=T0 + 1))
    store.record_alarm(alarm(3, level="cut", previous="alarm", ts_ns=T0 + 2))
    # a maintenance alarm on the same tag is not its process condition
    store.record_alarm(alarm(4, level="normal", previous="alarm", ts_ns=T0 + 3, kind="diagnosis"))
    rows = (await client.get("/api/v1/latest", params={"site": "mine-a"})).json()
    assert {r["tag"]: r["condition"] for r in rows} == {"CH4-101": "cut", "CH4-102": "normal"}


async def test_gateways_listed(client: httpx.AsyncClient, store: Store) -> None:
    store.record_status(
        gateway_status("offline", ts_ns=T0, version="1.2", gateway="gw-1", site="mine-a")
    )
    (gw,) = (await client.get("/api/v1/gateways")).json()
    assert (gw["gateway"], gw["site"], gw["state"], gw["version"]) == (
        "gw-1",
        "mine-a",
        "offline",
        "1.2",
    )


async def test_database_failure_is_a_503(tmp_path: Path, health_state: dict[str, Any]) -> None:
    store = Store(cloud_db_url(tmp_path, "never-created.db"))  # only the auth tables
    async with asgi_client(store, health_state) as client:
        response = await client.get("/api/v1/alarms")
    assert response.status_code == 503
    assert "database unavailable" in response.json()["detail"]


async def test_database_gone_is_a_503_on_every_read_route(
    store: Store, health_state: dict[str, Any]
) -> None:
    """One app-wide handler turns a StoreError into 503 on every router, auth included."""
    async with asgi_client(store, health_state) as client:
        cascade = " CASCADE" if store.dialect == "postgresql" else ""  # evidence -> hazards
        with store.engine.begin() as conn:
            for table in reversed(sorted(_table_names(store))):
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"{cascade}')
        for path in (
            "/api/v1/alarms",
            "/api/v1/latest?site=mine-a",
            "/api/v1/gateways",
            "/api/v1/alarms/kpi",
            "/api/v1/users",
            "/api/v1/auth/me",
        ):
            response = await client.get(path)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json()["detail"].startswith("database unavailable"), path
            assert len(response.content) < 2000, path


def _table_names(store: Store) -> list[str]:
    return list(sqlalchemy.inspect(store.engine).get_table_names())


async def test_errors_do_not_echo_input_unbounded(client: httpx.AsyncClient) -> None:
    huge = "x" * 60_000  # httpx refuses URLs over 64 KiB
    for response in (
        await client.get("/api/v1/latest", params={"site": huge}),
        await client.get("/api/v1/alarms", params={"limit": huge}),
        await client.get("/api/v1/alarms", params={"level": huge}),
        await client.get(f"/api/v1/{huge}"),
        await client.post("/api/v1/auth/token", data={"username": huge, "password": huge}),
    ):
        assert response.status_code in (404, 422), response.status_code
        assert len(response.content) < 2000, (response.status_code, response.content[:200])
        assert "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in (
            response.text
        )


async def test_unknown_site_detail_is_bounded(client: httpx.AsyncClient) -> None:
    site = "s" * 128  # the longest accepted id
    response = await client.get("/api/v1/latest", params={"site": site})
    assert response.status_code == 404
    assert len(response.json()["detail"]) <= 300
