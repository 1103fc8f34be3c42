"""The live heatmap's inputs through the real ingest, and the snapshot it is served from:
recomputed when an input changes (at most every min_interval_s) or max_age_s passes,
served from memory with an ETag, never recomputed per request."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import wire
from cloud.api import create_app
from cloud.auth import Role
from cloud.hazards import HazardGrade, HazardIn, HazardService
from cloud.ingest import Incoming, IngestService
from cloud.risk import HeatmapSnapshot, RiskModel, RiskService
from cloud.risk._api import HeatmapOut
from cloud.storage import Store, StoreError
from cloud.storage.db import Base
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, point, telemetry
from tests.support import async_wait_until
from tests.unit.test_cloud_ingest import ANY_TIME, RecordingWriter

MODEL = {
    "site": "mine-a",
    "areas": [
        {"id": "panel-3", "units": [{"id": "p3", "matrix": {"l": 1, "s": 1}}]},
        {"id": "panel-4", "units": [{"id": "p4", "matrix": {"l": 1, "s": 1}}]},
    ],
}


@dataclass
class Env:
    store: Store
    hazards: HazardService
    risk: RiskService
    ingest: IngestService
    client: httpx.AsyncClient
    headers: dict[str, str]
    seq: int = 0

    async def deliver(self, *messages: wire.Message) -> None:
        await self.ingest.process(
            [Incoming(wire.topic_of(m), wire.encode(m), time.time_ns()) for m in messages]
        )

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def factors(self, area: str = "panel-3") -> list[tuple[str, str]]:
        (found,) = [a for a in self.risk.heatmap(record=False) if a.id == area]
        return [(c.factor, c.detail) for c in found.contributions]

    async def get(self, etag: str | None = None) -> httpx.Response:
        headers = dict(self.headers)
        if etag is not None:
            headers["If-None-Match"] = etag
        return await self.client.get("/api/v1/risk/heatmap", headers=headers)


@contextlib.asynccontextmanager
async def _env(
    tmp_path: Path, model: dict[str, Any] | None = None, **timing: float
) -> AsyncIterator[Env]:
    store = Store(cloud_db_url(tmp_path, "risk.db"))
    store.create_all()
    auth = make_authenticator(store.engine)
    hazards = HazardService(store.engine, auth.audit, tmp_path / "ev")
    hazards.create_all()
    risk = RiskService(
        store.engine,
        RiskModel.model_validate(model or MODEL),
        store=store,
        hazards=hazards,
        **timing,
    )
    risk.create_all()
    ingest = IngestService("127.0.0.1", 1, store, RecordingWriter(), ts_window=ANY_TIME)
    ingest.commit_listeners.append(risk.note_batch)
    app = create_app(
        store,
        lambda: {"db": True, "influx": True, "mqtt": True, "counters": {}},
        authenticator=auth,
        audit=auth.audit,
        hazards=hazards,
        risk=risk,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield Env(store, hazards, risk, ingest, client, headers_for(auth, Role.VIEWER))
    store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with _env(tmp_path, min_interval_s=0.05, max_age_s=60.0) as e:
        yield e


async def test_active_alarms_on_tags_without_latest_values_raise_their_area(env: Env) -> None:
    """A sensor that never sent a value but whose gateway reports it in cut, an actuator
    the gateway could not write: both count for their area; notices and operator
    actions are not conditions; a clear removes the factor."""
    await env.deliver(
        alarm(env.next_seq(), level="cut", tag="CH4-NEW", area="panel-3"),
        alarm(env.next_seq(), level="alarm", tag="power-9", kind="actuator", area="panel-3",
              reason="actuator_write_failed"),
        alarm(env.next_seq(), level="alarm", tag="LK-1", kind="notice", area="panel-3",
              reason="lockout_test_overdue"),
        alarm(env.next_seq(), level="alarm", tag="CH4-OLD", kind="alarm_state", area="panel-3"),
    )  # fmt: skip
    assert env.factors() == [("cut", "CH4-NEW"), ("alarm", "power-9")]
    (panel3,) = [a for a in env.risk.heatmap() if a.id == "panel-3"]
    assert panel3.points == 3.0 and panel3.grade.colour == "red"

    await env.deliver(alarm(env.next_seq(), level="normal", previous="cut", tag="CH4-NEW"))
    assert env.factors() == [("alarm", "power-9")]
    # the same tag in two kinds with no latest value: the worse counts, once
    await env.deliver(
        alarm(env.next_seq(), level="fault", tag="X-1", kind="feedback", area="panel-4"),
        alarm(env.next_seq(), level="alarm", tag="X-1", kind="rate", area="panel-4"),
    )
    assert env.factors("panel-4") == [("fault", "X-1")]


async def test_a_tag_with_a_latest_value_keeps_its_own_kind_condition(env: Env) -> None:
    await env.deliver(
        telemetry(env.next_seq(), point("CH4-101", 1.2)),
        alarm(env.next_seq(), level="alarm", tag="CH4-101"),
        alarm(env.next_seq(), level="alarm", tag="CH4-101", kind="diagnosis", reason="stuck"),
    )
    assert env.factors() == [("alarm", "CH4-101")]  # the maintenance alarm is not a second
    bad = point("CH4-101", None, T0 + 10, quality="bad")
    await env.deliver(telemetry(env.next_seq(), bad))
    await env.deliver(alarm(env.next_seq(), level="normal", previous="alarm", tag="CH4-101"))
    assert env.factors() == [("fault", "CH4-101")]  # cleared, but the value is bad


async def test_a_model_pre_alarm_counts_as_a_forecast(env: Env) -> None:
    tag = "CH4-101.ch4_10min"
    await env.deliver(
        telemetry(env.next_seq(), point(tag, 1.3, kind="forecast", unit="%")),
        alarm(env.next_seq(), level="alarm", tag=tag, kind="forecast", reason="forecast_over"),
    )
    assert env.factors() == [("forecast", tag)]
    (panel3,) = [a for a in env.risk.heatmap() if a.id == "panel-3"]
    assert panel3.points == 0.5 and panel3.grade.colour == "blue"  # advisory: half a step


async def test_the_heatmap_is_served_from_memory_with_an_etag(env: Env) -> None:
    first = await env.get()
    assert first.status_code == 200 and first.headers["etag"].startswith('W/"')
    body = HeatmapOut.model_validate_json(first.content)  # the documented schema
    assert body.configured and {a.id: a.grade for a in body.areas} == {
        "panel-3": "blue",
        "panel-4": "blue",
    }
    etag = first.headers["etag"]
    assert (await env.get(etag)).status_code == 304
    assert (await env.get(f'"other", {etag}')).status_code == 304
    assert (await env.get('W/"other"')).status_code == 200

    # a write the service is not told of (another process's): not recomputed per request
    with env.store.engine.begin() as conn:
        conn.execute(sa.insert(Base.metadata.tables["alarm_events"]), [_row("CH4-7", "cut")])
    assert (await env.get(etag)).status_code == 304
    # told (or max_age_s later): the next request has it
    env.risk.invalidate()
    changed = await async_wait_until(
        lambda: _status_not(env, etag, 304), 5, "the heatmap recomputed after invalidate()"
    )
    assert changed is not None
    areas = {a["id"]: a for a in changed.json()["areas"]}
    assert areas["panel-3"]["grade"] == "orange" and changed.headers["etag"] != etag


async def _status_not(env: Env, etag: str, status: int) -> httpx.Response | None:
    r = await env.get(etag)
    return r if r.status_code != status else None


def _row(tag: str, level: str) -> dict[str, object]:
    return {
        "gateway": "gw-other", "site": "mine-a", "seq": 1, "alarm_id": tag, "tag": tag,
        "device": "d", "kind": "ch4", "area": "panel-3", "position": "", "level": level,
        "previous": "normal", "value": 2.0, "threshold": 1.5, "ts_ns": time.time_ns(),
        "message": "", "actuators": [], "received_at": dt.datetime.now(dt.UTC), "reason": "",
    }  # fmt: skip


async def test_what_makes_the_snapshot_stale(env: Env) -> None:
    risk = env.risk
    await env.deliver(telemetry(env.next_seq(), point("CH4-101", 0.3)))
    risk.snapshot()
    assert not risk.due()
    await env.deliver(telemetry(env.next_seq(), point("CH4-101", 0.4, ts_ns=time.time_ns())))
    assert not risk.due(), "a new value of a known tag in the same quality changes nothing"
    await env.deliver(telemetry(env.next_seq(), point("CH4-102", 0.4)))
    await async_wait_until(risk.due, 2, "a new tag makes it due")
    risk.snapshot()
    await env.deliver(telemetry(env.next_seq(), point("CH4-101", None, T0 + 10, quality="bad")))
    await async_wait_until(risk.due, 2, "a quality change makes it due")
    risk.snapshot()
    await env.deliver(alarm(env.next_seq(), level="alarm", tag="CH4-101"))
    await async_wait_until(risk.due, 2, "an alarm makes it due")
    risk.snapshot()
    env.hazards.create(HazardIn(title="t", area="panel-3", grade=HazardGrade.GENERAL), "x")
    await async_wait_until(risk.due, 2, "a hazard makes it due")
    factors = {f for f, _ in [(c.factor, c.detail) for c in risk.snapshot().areas[0].contributions]}
    assert factors == {"alarm", "hazard_general"}


def _newer(risk: RiskService, than: HeatmapSnapshot, *, same: bool) -> HeatmapSnapshot | None:
    """The served snapshot once it is newer than ``than`` with the same (or another) ETag."""
    snap = risk.current()
    if snap is None or snap.at <= than.at or (snap.etag == than.etag) != same:
        return None
    return snap


async def test_keep_fresh_recomputes_on_any_change_and_only_then(tmp_path: Path) -> None:
    """The refresher confirms an unchanged snapshot with a few cheap queries, and
    recomputes for this process's changes, another process's writes and a deadline
    passing - never just because time went by."""
    async with _env(tmp_path, min_interval_s=0.05, max_age_s=30.0) as env:
        risk = env.risk
        task = asyncio.create_task(risk.keep_fresh(), name="test-keep-fresh")
        try:
            first = await async_wait_until(risk.current, 5, "a first snapshot")
            assert first is not None
            assert await asyncio.to_thread(risk.refresh) is False  # nothing changed
            assert risk.current() is first

            with env.store.engine.begin() as conn:  # another process's alarm
                conn.execute(sa.insert(Base.metadata.tables["alarm_events"]), [_row("X", "cut")])
            moved: HeatmapSnapshot | None = await async_wait_until(
                lambda: _newer(risk, first, same=False), 5, "a recompute after a foreign alarm"
            )
            assert moved is not None
            assert ("cut", "X") in _factors(moved, "panel-3")
            after_alarm = moved

            env.hazards.create(HazardIn(title="t", area="panel-4", grade=HazardGrade.MAJOR), "x")
            grown = await async_wait_until(
                lambda: _newer(risk, after_alarm, same=False), 5, "a recompute after a new hazard"
            )
            assert grown is not None
            assert {a.id: a.grade.colour for a in grown.areas}["panel-4"] == "yellow"

            soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
            env.hazards.create(
                HazardIn(title="d", area="panel-4", grade=HazardGrade.GENERAL, deadline=soon), "x"
            )
            overdue = await async_wait_until(
                lambda: (
                    (s := risk.current()) is not None
                    and ("hazard_overdue" in {f for f, _ in _factors(s, "panel-4")})
                    and s
                ),
                10,
                "a recompute once the deadline passed",
            )
            assert overdue is not None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _factors(snap: HeatmapSnapshot, area: str) -> list[tuple[str, str]]:
    (found,) = [a for a in snap.areas if a.id == area]
    return [(c.factor, c.detail) for c in found.contributions]


async def test_a_failed_recompute_keeps_the_refresher_alive_and_never_serves_stale_forever(
    tmp_path: Path,
) -> None:
    """The database goes away under the refresher: it logs and keeps trying; the old
    snapshot is served until stale_s, then a request answers 503 instead of an old picture;
    the database back, the next request recomputes."""
    async with _env(tmp_path, min_interval_s=0.05, max_age_s=0.2, stale_s=0.5) as env:
        risk = env.risk
        assert (await env.get()).status_code == 200
        store = risk.store
        assert store is not None
        real = (store.latest_states, store.change_marker)

        def broken(site: str) -> Any:
            raise StoreError("database down (test)")

        store.latest_states = store.change_marker = broken  # type: ignore[method-assign]
        task = asyncio.create_task(risk.keep_fresh(), name="test-keep-fresh")
        try:
            down = await async_wait_until(
                lambda: _status_not(env, "nothing", 200), 5, "503 once nothing confirms it"
            )
            assert down is not None and down.status_code == 503 and not task.done()
            store.latest_states, store.change_marker = real  # type: ignore[method-assign]
            back = await async_wait_until(
                lambda: _status_not(env, "nothing", 503), 5, "200 once the database is back"
            )
            assert back is not None and back.status_code == 200
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_heatmap_goes_gzipped_to_who_accepts_it(tmp_path: Path) -> None:
    areas = [{"id": f"a{i}", "units": [{"id": f"u{i}", "lec": {"l": 1, "e": 1, "c": 1}}]}
             for i in range(40)]  # fmt: skip
    async with _env(tmp_path, {"site": "mine-a", "areas": areas}) as env:
        await _gzip_or_not(env)


async def _gzip_or_not(env: Env) -> None:
    plain = await env.client.get(
        "/api/v1/risk/heatmap", headers={**env.headers, "Accept-Encoding": "identity"}
    )
    zipped = await env.client.get(
        "/api/v1/risk/heatmap", headers={**env.headers, "Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"  # httpx decoded it
    assert zipped.json() == plain.json() and zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) < len(plain.content)
