"""The wall's server-sent-event stream over a real HTTP server (uvicorn), read as the
page reads it: a snapshot at once, another when an alarm arrives through the ingest,
keep-alive pings while nothing changes, an ``auth`` event when the token is revoked,
``bye`` at the end of its lifetime, and ``problem`` (not a dead stream) while the
database fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fastapi.routing
import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI

import wire
from cloud import create_app
from cloud.auth import Authenticator, Role
from cloud.ingest import Incoming, IngestService
from cloud.risk import RiskModel, RiskService
from cloud.storage import Store
from cloud.storage.db import AlarmEventRow
from cloud.wall import WallSettings
from tests.auth_support import make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, point, telemetry
from tests.support import async_wait_until, free_port
from tests.unit.test_cloud_ingest import ANY_TIME, RecordingWriter
from tests.unit.test_wall import RISK

pytestmark = pytest.mark.contract


@dataclass
class Event:
    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


def parse_event(block: str) -> Event:
    """One block of the text/event-stream format (the WHATWG parsing rules)."""
    ev = Event()
    for line in block.splitlines():
        if line.startswith(":"):
            ev.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            ev.data.append(value)
        elif name == "event":
            ev.event = value
        elif name == "id":
            ev.id = value
        elif name == "retry":
            ev.retry = int(value)
    return ev


class EventReader:
    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_text()
        self._buf = ""

    async def next(self, within_s: float = 10.0) -> Event:
        async with asyncio.timeout(within_s):
            while "\n\n" not in self._buf:
                self._buf += await anext(self._chunks)
        block, self._buf = self._buf.split("\n\n", 1)
        return parse_event(block)

    async def until(self, pred: Any, within_s: float, what: str) -> Event:
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {within_s}s")
            try:
                ev = await self.next(left)
            except TimeoutError:
                raise AssertionError(f"no {what} within {within_s}s") from None
            if pred(ev):
                return ev


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = _QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        await async_wait_until(lambda: server.started, 15, "uvicorn listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def wall_stream(
    app: FastAPI, headers: dict[str, str], site: str = "mine-a"
) -> AsyncIterator[EventReader]:
    """The app served, and its wall stream for ``site`` opened with ``headers``."""
    async with (
        served(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        http.stream("GET", f"/api/v1/wall/stream?site={site}", headers=headers) as response,
    ):
        assert response.status_code == 200, response.status_code
        yield EventReader(response)


@dataclass
class Rig:
    store: Store
    auth: Authenticator
    ingest: IngestService
    app: FastAPI

    async def deliver(self, *messages: wire.Message) -> None:
        await self.ingest.process(
            [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
        )

    def viewer(self) -> dict[str, str]:
        secret, _ = self.auth.create_token("wall-kiosk", Role.VIEWER, "test")
        return {"Authorization": f"Bearer {secret}"}


def _rig(tmp_path: Path, settings: WallSettings) -> Rig:
    store = Store(cloud_db_url(tmp_path, "stream.db"))
    store.create_all()
    risk = RiskService(store.engine, RiskModel.model_validate(RISK), store=store)
    risk.create_all()
    auth = make_authenticator(store.engine)
    app = create_app(
        store,
        lambda: {"db": True, "influx": True, "mqtt": True},
        authenticator=auth,
        audit=auth.audit,
        risk=risk,
        wall=settings,
    )
    ingest = IngestService("127.0.0.1", 1, store, RecordingWriter(), ts_window=ANY_TIME)
    return Rig(store, auth, ingest, app)


async def test_stream_sends_changes_pings_and_ends_when_the_token_is_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.3)
    rig = _rig(tmp_path, WallSettings(interval_s=0.1, reauth_s=0.3, stream_max_s=600))
    await rig.deliver(telemetry(1, point("CH4-101", 0.4)))
    headers = rig.viewer()
    async with served(rig.app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/api/v1/wall/stream?site=mine-a")).status_code == 401
        unknown = await http.get("/api/v1/wall/stream?site=nowhere", headers=headers)
        assert unknown.status_code == 404
        async with http.stream("GET", "/api/v1/wall/stream?site=mine-a", headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            events = EventReader(r)
            hello = await events.next()
            assert hello.retry == 3000 and hello.comments == ["safewatch wall mine-a"]
            first = await events.next()
            assert (first.event, first.id) == ("snapshot", "1")
            quiet = first.json()
            assert {a["id"]: a["grade"] for a in quiet["areas"]} == {
                "panel-3": "yellow",
                "haulage": "blue",
            }
            assert quiet["alarms"] == []

            # nothing changes: keep-alive pings, no repeated snapshot
            ping = await events.next(5)
            assert (ping.event, ping.comments) == ("message", ["ping"])

            await rig.deliver(
                telemetry(2, point("CH4-101", 1.6, T0 + 5)),
                alarm(3, level="cut", previous="normal", alarm_id="CH4-A"),
            )
            hot = (await events.until(lambda e: e.event == "snapshot", 10, "a new snapshot")).json()
            assert hot["version"] != quiet["version"]
            assert next(a for a in hot["areas"] if a["id"] == "panel-3")["grade"] == "red"
            assert [(a["alarm_id"], a["state"]) for a in hot["alarms"]] == [
                ("CH4-A", "unacknowledged")
            ]

            token_id = rig.auth.store.tokens()[-1].token_id
            rig.auth.revoke_token(token_id, "test")
            gone = await events.until(lambda e: e.event == "auth", 10, "the auth event")
            assert "revoked" in gone.json()["detail"]
            with pytest.raises(StopAsyncIteration):
                await events.next(5)  # the server ended the stream


async def test_stream_ends_after_its_lifetime_and_survives_a_failing_database(
    tmp_path: Path,
) -> None:
    rig = _rig(tmp_path, WallSettings(interval_s=0.1, reauth_s=600, stream_max_s=600))
    headers = rig.viewer()
    await rig.deliver(telemetry(1, point("CH4-101", 0.4)))
    table = cast(sa.Table, AlarmEventRow.__table__)
    async with wall_stream(rig.app, headers) as events:
        await events.until(lambda e: e.event == "snapshot", 10, "the first snapshot")
        table.drop(rig.store.engine)  # the database loses the alarm table under it
        problem = await events.until(lambda e: e.event == "problem", 10, "a problem event")
        assert "database unavailable" in problem.json()["detail"]
        table.create(rig.store.engine)
        await rig.deliver(alarm(2, level="alarm", previous="normal", alarm_id="CH4-B"))
        back = await events.until(lambda e: e.event == "snapshot", 10, "recovery")
        assert [a["alarm_id"] for a in back.json()["alarms"]] == ["CH4-B"]

    (tmp_path / "b").mkdir()
    short = _rig(tmp_path / "b", WallSettings(interval_s=0.1, stream_max_s=0.5))
    async with wall_stream(short.app, short.viewer()) as events:
        bye = await events.until(lambda e: e.event == "bye", 10, "the bye event")
        assert "lifetime" in bye.json()["detail"]
        with pytest.raises(StopAsyncIteration):
            await events.next(5)
